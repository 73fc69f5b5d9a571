"""Resharding with in-memory stores and in-process shards: the shard's conditional writes
and scans, the layout routing, and the job under concurrent writes, deletes and searches."""

import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest

from services.common.errors import AbortedError, FailedPreconditionError, InvalidArgumentError
from services.common.index_types import NO_FILTER, NO_OVERRIDES, ItemMeta
from services.common.metadata import CollectionConfig, InMemoryMetadataStore
from services.common.objectstore import InMemoryObjectStore
from services.common.sharding import shard_of
from services.gateway.core import GatewayCore, GatewaySettings, Services
from services.gateway.layout import Layout
from services.gateway.ports import IngestItem, SearchQuery, ShardHit, ShardInfo
from services.gateway.reshard import Resharder, ReshardSettings, ShardPage
from services.gateway.reshard_store import InMemoryReshardStore
from services.gateway.routing import delete_routed, upsert_routed
from services.indexer.core import Shard
from services.indexer.durability import InMemorySnapshotStore, InMemoryWriteAheadLog
from tests.unit.test_gateway_core import PixelEmbedder, ReverseVerifier, jpeg

DIMS = 8


def unit(rng, n):
    v = rng.standard_normal((n, DIMS)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class InProcessShard:
    """Both gateway ports over a real shard core with an in-memory log and snapshots."""

    def __init__(self, shard: int):
        self.shard = shard
        self.wal, self.snapshots = InMemoryWriteAheadLog(), InMemorySnapshotStore()
        self.core = Shard(shard, 1000, self.wal, self.snapshots)

    def upsert(self, collection, ids, vectors, metadata, overrides, timeout):
        self.core.upsert(collection, ids, vectors, metadata, overrides)

    def copy_if_absent(self, collection, ids, vectors, metadata, overrides, fence, timeout):
        return self.core.upsert_if_absent(
            collection, ids, vectors, metadata, overrides, fence=fence
        )[0]

    def set_copy_fence(self, collection, run_id, timeout):
        return self.core.set_copy_fence(collection, run_id)

    def delete(self, collection, ids, timeout, tombstone=False):
        return self.core.delete(collection, ids, tombstone)[0]

    def search(self, collection, queries, k, search_filter, timeout, vectors_for_top=0):
        results, _ = self.core.search(collection, queries, k, search_filter)
        return [[ShardHit(n.id, n.score) for n in r] for r in results]

    def fetch(self, collection, page_token, limit, moved_under_shards, ids_only, timeout):
        p = self.core.fetch(collection, page_token, limit, moved_under_shards, ids_only)
        return ShardPage(p.ids, p.vectors, p.metadata, p.next_page_token, p.scanned, p.size)

    def clear_tombstones(self, collection, timeout):
        return self.core.clear_tombstones(collection)

    def stats(self, collection, timeout):
        stats = self.core.stats()
        size = next((s.size for s in stats if s.collection == collection), 0)
        return ShardInfo(self.shard, size, "exact")

    def ids(self, collection):
        return self.core.fetch(collection, limit=5000, ids_only=True).ids

    def restart(self):
        """A new process: recovers from this shard's log and snapshots."""
        self.core = Shard(self.shard, 1000, self.wal, self.snapshots)
        self.core.recover()


def config(shards, target=0):
    return CollectionConfig("c", "m1", shards, "none", "rootsift", 50, 0.0, target_shards=target)


# The shard ------------------------------------------------------------------


def test_upsert_if_absent_skips_present_and_tombstoned_ids():
    rng = np.random.default_rng(0)
    shard = Shard(0, 1000, InMemoryWriteAheadLog(), InMemorySnapshotStore())
    newer, old = unit(rng, 1), unit(rng, 3)
    shard.upsert("c", ["a"], newer)
    shard.delete("c", ["b"], tombstone=True)
    shard.set_copy_fence("c", "job")
    written, size = shard.upsert_if_absent("c", ["a", "b", "x"], old, fence="job")
    assert (written, size) == (1, 2)
    ids, vectors, _ = shard._collections["c"].index.export()
    assert sorted(ids) == ["a", "x"]
    assert np.allclose(vectors[ids.index("a")], newer[0])  # the newer write won
    # An ordinary upsert forgets the tombstone; clear_tombstones forgets them all.
    shard.upsert("c", ["b"], old[1:2])
    assert shard.tombstones("c") == 0
    shard.delete("c", ["b"], tombstone=True)
    assert shard.clear_tombstones("c") == 1
    assert shard.upsert_if_absent("c", ["b"], old[1:2], fence="job")[0] == 1


def test_tombstone_on_a_shard_without_the_collection_yet():
    rng = np.random.default_rng(1)
    shard = Shard(3, 1000)
    assert shard.delete("c", ["gone"], tombstone=True) == (0, 0)
    shard.set_copy_fence("c", "job")
    assert shard.upsert_if_absent("c", ["gone", "kept"], unit(rng, 2), fence="job")[0] == 1
    assert shard.fetch("c", ids_only=True).ids == ["kept"]


def test_tombstones_survive_log_replay_and_snapshots():
    rng = np.random.default_rng(2)
    wal, snapshots = InMemoryWriteAheadLog(), InMemorySnapshotStore()
    shard = Shard(0, 1000, wal, snapshots)
    shard.delete("c", ["early"], tombstone=True)  # before the collection exists here
    shard.upsert("c", ["a"], unit(rng, 1))
    shard.delete("c", ["t1"], tombstone=True)
    shard.snapshot("c")
    shard.delete("c", ["t2"], tombstone=True)
    restarted = Shard(0, 1000, wal, snapshots)
    restarted.recover()
    assert restarted.tombstones("c") == 3
    restarted.set_copy_fence("c", "job")
    copies = unit(rng, 4)
    assert (
        restarted.upsert_if_absent("c", ["early", "t1", "t2", "new"], copies, fence="job")[0] == 1
    )
    restarted.clear_tombstones("c")
    again = Shard(0, 1000, wal, snapshots)
    again.recover()
    assert again.tombstones("c") == 0


def test_the_copy_fence_admits_one_run_never_an_ended_one_and_a_restart_forgets_it():
    rng = np.random.default_rng(6)
    wal, snapshots = InMemoryWriteAheadLog(), InMemorySnapshotStore()
    shard = Shard(2, 1000, wal, snapshots)
    with pytest.raises(AbortedError, match="accepts copies from no run"):
        shard.upsert_if_absent("c", ["a"], unit(rng, 1), fence="job-1")
    assert shard.stats() == []  # a refused copy does not create the collection
    with pytest.raises(InvalidArgumentError, match="needs its run's id"):
        shard.upsert_if_absent("c", ["a"], unit(rng, 1), fence="")
    assert shard.set_copy_fence("c", "job-1") == ""
    assert shard.upsert_if_absent("c", ["a"], unit(rng, 1), fence="job-1")[0] == 1
    assert shard.set_copy_fence("c", "job-2") == "job-1"
    with pytest.raises(AbortedError, match="from run 'job-1': it accepts copies from run 'job-2'"):
        shard.upsert_if_absent("c", ["b"], unit(rng, 1), fence="job-1")
    with pytest.raises(AbortedError, match="run 'job-1' of 'c' has ended"):
        shard.set_copy_fence("c", "job-1")  # a stalled replica cannot take the fence back
    assert shard.set_copy_fence("c", "job-2") == "job-2"  # the current run may repeat it
    assert shard.set_copy_fence("c", "") == "job-2"
    with pytest.raises(AbortedError):
        shard.upsert_if_absent("c", ["b"], unit(rng, 1), fence="job-2")
    with pytest.raises(AbortedError, match="has ended"):
        shard.set_copy_fence("c", "job-2")
    shard.set_copy_fence("c", "job-3")
    restarted = Shard(2, 1000, wal, snapshots)
    restarted.recover()
    with pytest.raises(AbortedError):
        restarted.upsert_if_absent("c", ["b"], unit(rng, 1), fence="job-3")
    assert restarted.fetch("c", ids_only=True).ids == ["a"]


def test_fetch_pages_moved_ids_once_and_refuses_tokens_of_another_run():
    rng = np.random.default_rng(3)
    shard = Shard(1, 1000)
    ids = [f"id-{i}" for i in range(300)]
    mine = [i for i in ids if shard_of(i, 2) == 1]
    shard.upsert("c", mine, unit(rng, len(mine)), [ItemMeta(f"L{i}") for i in mine])
    seen, token, pages = [], "", 0
    while True:
        page = shard.fetch("c", token, limit=7, moved_under_shards=3)
        assert page.vectors.shape == (len(page.ids), DIMS)
        assert [m.label for m in page.metadata] == [f"L{i}" for i in page.ids]
        seen += page.ids
        token, pages = page.next_page_token, pages + 1
        if not token:
            break
    assert sorted(seen) == sorted(i for i in mine if shard_of(i, 3) != 1)
    assert len(seen) > 7 and page.scanned == len(mine)
    first = shard.fetch("c", "", limit=5)
    with pytest.raises(FailedPreconditionError):
        Shard(1, 1000).fetch("c", first.next_page_token)


# Routing --------------------------------------------------------------------


def test_layout_routes_writes_to_the_new_shards_and_searches_to_both():
    layout = Layout(2, 3)
    moved = next(i for i in (f"x{n}" for n in range(100)) if shard_of(i, 3) == 2)
    assert layout.write_shard(moved) == 2
    assert layout.stale_shard(moved) == shard_of(moved, 2)
    assert layout.delete_shards(moved) == [(2, True), (shard_of(moved, 2), False)]
    assert list(layout.search_shards) == [0, 1, 2]
    assert list(Layout(4, 2).search_shards) == [0, 1, 2, 3]
    assert Layout(2).delete_shards(moved) == [(shard_of(moved, 2), False)]


def test_a_write_that_straddles_the_window_opening_is_redone_under_the_new_layout():
    rng = np.random.default_rng(4)
    shards = [InProcessShard(i) for i in range(3)]
    metadata = InMemoryMetadataStore()
    metadata.create_collection(config(2))
    stale = config(2)  # read before the reshard opened its window
    metadata.update_collection(stale, config(2, target=3))
    moved = next(i for i in (f"y{n}" for n in range(100)) if shard_of(i, 3) == 2)
    with ThreadPoolExecutor(4) as pool:
        layout = upsert_routed(
            pool, shards, metadata, stale, [moved], unit(rng, 1), [ItemMeta()], NO_OVERRIDES,
            lambda: 5.0,
        )  # fmt: skip
    assert layout == Layout(2, 3)
    assert shards[2].ids("c") == [moved]
    assert moved not in shards[shard_of(moved, 2)].ids("c")


# The job --------------------------------------------------------------------


class Cluster:
    def __init__(self, indexers: int, shards: int):
        self.shards = [InProcessShard(i) for i in range(indexers)]
        self.metadata = InMemoryMetadataStore()
        self.metadata.create_collection(config(shards))
        self.store = InMemoryReshardStore()
        self.pool = ThreadPoolExecutor(8)
        self.settings = ReshardSettings(page_size=16, flip_grace_s=0.0, retry_for_s=1.0)
        self.resharder = self.make_resharder()
        self.rng = np.random.default_rng(5)
        self.vectors: dict[str, np.ndarray] = {}

    def make_resharder(self):
        return Resharder(
            self.shards, self.metadata, self.store, lambda c: NO_OVERRIDES, self.settings
        )

    def upsert(self, ids):
        vectors = unit(self.rng, len(ids))
        upsert_routed(
            self.pool, self.shards, self.metadata, self.metadata.get_collection("c"), ids,
            vectors, [ItemMeta()] * len(ids), NO_OVERRIDES, lambda: 5.0,
        )  # fmt: skip
        self.vectors.update(zip(ids, vectors, strict=True))

    def delete(self, ids):
        delete_routed(
            self.pool, self.shards, self.metadata, self.metadata.get_collection("c"), ids,
            lambda: 5.0,
        )  # fmt: skip
        for i in ids:
            self.vectors.pop(i, None)

    def search_all(self):
        """Every id the union of the layout's shards holds, deduplicated like the gateway."""
        layout = Layout.of(self.metadata.get_collection("c"))
        query = unit(self.rng, 1)
        found = []
        for shard in layout.search_shards:
            found += [h.id for h in self.shards[shard].search("c", query, 1000, NO_FILTER, 5)[0]]
        return set(found)

    def placement(self):
        return Counter(i for shard in self.shards for i in shard.ids("c"))

    def check_exactly_once(self, shards):
        placement = self.placement()
        assert set(placement) == set(self.vectors)
        assert all(count == 1 for count in placement.values())
        for shard in self.shards:
            for i in shard.ids("c"):
                assert shard_of(i, shards) == shard.shard
        for shard in self.shards:
            page = shard.core.fetch("c", limit=5000)
            for i, v in zip(page.ids, page.vectors, strict=True):
                assert np.allclose(v, self.vectors[i]), i  # the latest write of every id


@pytest.mark.parametrize(("start", "target"), [(2, 3), (2, 4), (4, 2), (3, 1)])
def test_reshard_moves_only_changed_ids_and_keeps_each_exactly_once(start, target):
    cluster = Cluster(4, start)
    cluster.upsert([f"id-{i}" for i in range(400)])
    before = {i: shard for shard in range(4) for i in cluster.shards[shard].ids("c")}
    status = cluster.resharder.start("c", target)
    assert status.to_shards == target
    cluster.resharder.wait("c", 30)
    status = cluster.resharder.status("c")
    assert (status.phase, status.error, status.running) == ("done", "", False)
    moving = [i for i, shard in before.items() if shard_of(i, target) != shard]
    assert status.copied == len(moving) and status.removed == len(moving)
    assert cluster.metadata.get_collection("c") == config(target)
    cluster.check_exactly_once(target)
    assert all(shard.core.tombstones("c") == 0 for shard in cluster.shards)


def test_reshard_under_concurrent_writes_deletes_and_searches():
    cluster = Cluster(4, 2)
    cluster.upsert([f"id-{i}" for i in range(600)])
    cluster.settings = ReshardSettings(page_size=8, flip_grace_s=0.0, retry_for_s=1.0)
    cluster.resharder = cluster.make_resharder()
    stop = threading.Event()
    errors: list[str] = []
    stable = {f"id-{i}" for i in range(0, 600, 3)}  # never written or deleted below

    def searcher():
        while not stop.is_set():
            missing = stable - cluster.search_all()
            if missing:
                errors.append(f"search missed {sorted(missing)[:3]}")

    def writer(seed):
        # Each writer owns its ids: two threads writing one id could record their writes in
        # self.vectors in the other order than the shard applied them.
        rnd = random.Random(seed)
        own = [f"id-{i}" for i in range(600) if i % 3 == seed + 1]
        while not stop.is_set():
            image_id = rnd.choice(own)
            if rnd.random() < 0.2:
                image_id = f"new-{seed}-{rnd.randrange(50)}"
            if rnd.random() < 0.5:
                cluster.delete([image_id])
            else:
                cluster.upsert([image_id])

    threads = [threading.Thread(target=searcher)]
    threads += [threading.Thread(target=writer, args=(s,)) for s in range(2)]
    for thread in threads:
        thread.start()
    cluster.resharder.start("c", 3)
    cluster.resharder.wait("c", 60)
    first = cluster.resharder.status("c")
    cluster.resharder.start("c", 2)
    cluster.resharder.wait("c", 60)
    stop.set()
    for thread in threads:
        thread.join()
    assert first.phase == "done" and first.error == ""
    assert cluster.resharder.status("c").phase == "done"
    assert not errors, errors[:3]
    cluster.check_exactly_once(2)


def test_a_delete_or_write_between_the_copiers_read_and_its_copy_wins():
    cluster = Cluster(4, 2)
    cluster.upsert([f"id-{i}" for i in range(200)])
    target = cluster.shards[2]
    original = target.copy_if_absent
    raced: dict[str, str] = {}

    def race_then_copy(collection, ids, vectors, metadata, overrides, fence, timeout):
        if not raced and len(ids) >= 2:
            # The copier holds these ids' old versions; a delete and a newer write land now.
            raced["deleted"], raced["written"] = ids[0], ids[1]
            cluster.delete([ids[0]])
            cluster.upsert([ids[1]])
        return original(collection, ids, vectors, metadata, overrides, fence, timeout)

    target.copy_if_absent = race_then_copy
    cluster.resharder.start("c", 3)
    cluster.resharder.wait("c", 30)
    assert cluster.resharder.status("c").phase == "done" and raced
    assert raced["deleted"] not in cluster.placement()
    cluster.check_exactly_once(3)  # including the newer vector of raced["written"]


def test_a_copier_that_stalls_past_its_jobs_end_cannot_resurrect_a_delete():
    cluster = Cluster(4, 2)
    cluster.upsert([f"id-{i}" for i in range(200)])
    target = cluster.shards[2]  # growing 2 -> 3 copies onto shard 2 only
    original = target.copy_if_absent
    stalled, resume, outcome = threading.Event(), threading.Event(), {}

    def stall_first_copy(collection, ids, *args):
        if stalled.is_set():
            return original(collection, ids, *args)
        outcome["ids"] = ids
        stalled.set()
        resume.wait(30)  # a GC pause or a partitioned gateway; its lock expires meanwhile
        try:
            outcome["written"] = original(collection, ids, *args)
        except AbortedError as exc:
            outcome["refused"] = exc.message
            raise

    target.copy_if_absent = stall_first_copy
    short_lock = replace(cluster.settings, lock_ttl_s=1.0)
    stale = Resharder(cluster.shards, cluster.metadata, cluster.store, lambda c: NO_OVERRIDES,
                      short_lock)  # fmt: skip
    stale.start("c", 3)
    assert stalled.wait(30)
    deleted = outcome["ids"][0]
    cluster.delete([deleted])  # in the window: a tombstone on shard 2
    expires = time.monotonic() + 10
    while cluster.store.lease.holder("c") is not None:
        assert time.monotonic() < expires
        time.sleep(0.05)
    cluster.resharder.start("c", 3)  # another replica takes the job over and finishes it
    cluster.resharder.wait("c", 30)
    assert cluster.resharder.status("c").phase == "done"
    assert target.core.tombstones("c") == 0
    resume.set()  # the stalled copy of `deleted` (and its page) lands now
    stale.wait("c", 30)
    assert "written" not in outcome and "accepts copies from no run" in outcome["refused"]
    assert deleted not in cluster.placement()
    cluster.check_exactly_once(3)


def test_a_restarted_target_shard_is_fenced_again_and_the_copy_goes_on():
    cluster = Cluster(4, 2)
    cluster.upsert([f"id-{i}" for i in range(300)])
    target = cluster.shards[2]
    original = target.copy_if_absent
    calls = {"n": 0}

    def restart_before_second_copy(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            target.restart()  # forgets the copy fence
        return original(*args)

    target.copy_if_absent = restart_before_second_copy
    cluster.resharder.start("c", 3)
    cluster.resharder.wait("c", 30)
    status = cluster.resharder.status("c")
    assert (status.phase, status.error) == ("done", "")
    assert calls["n"] > 3
    cluster.check_exactly_once(3)


def test_a_job_stopped_mid_copy_resumes_and_refuses_another_target():
    cluster = Cluster(4, 2)
    cluster.upsert([f"id-{i}" for i in range(300)])
    # Growing 2 -> 3 copies onto shard 2 only: the gateway running the job dies there.
    original_new = cluster.shards[2].copy_if_absent
    count = {"n": 0}

    def crash_new(*args, **kwargs):
        count["n"] += 1
        if count["n"] == 3:
            raise RuntimeError("gateway died")
        return original_new(*args, **kwargs)

    cluster.shards[2].copy_if_absent = crash_new
    cluster.resharder.start("c", 3)
    cluster.resharder.wait("c", 30)
    status = cluster.resharder.status("c")
    assert status.phase == "failed" and "gateway died" in status.error
    assert cluster.metadata.get_collection("c").target_shards == 3
    with pytest.raises(FailedPreconditionError, match="finish that first"):
        cluster.resharder.start("c", 4)
    cluster.delete(["id-7"])  # during the stopped window
    cluster.resharder = cluster.make_resharder()  # another gateway replica
    cluster.resharder.start("c", 3)
    cluster.resharder.wait("c", 30)
    assert cluster.resharder.status("c").phase == "done"
    cluster.check_exactly_once(3)


def test_a_job_stopped_in_clean_up_resumes_after_the_flip():
    cluster = Cluster(4, 2)
    cluster.upsert([f"id-{i}" for i in range(200)])
    original = cluster.shards[0].delete
    calls = {"n": 0}

    def fail_once(collection, ids, timeout, tombstone=False):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("gateway died")
        return original(collection, ids, timeout, tombstone)

    cluster.shards[0].delete = fail_once
    cluster.resharder.start("c", 3)
    cluster.resharder.wait("c", 30)
    status = cluster.resharder.status("c")
    assert status.phase == "failed" and status.removed > 0
    assert cluster.metadata.get_collection("c") == config(3)  # flipped before it stopped
    assert max(cluster.placement().values()) == 2  # moved ids not yet removed everywhere
    cluster.resharder = cluster.make_resharder()
    assert cluster.resharder.start("c", 3).phase == "cleaning"
    cluster.resharder.wait("c", 30)
    assert cluster.resharder.status("c").phase == "done"
    cluster.check_exactly_once(3)


def test_a_shard_restart_mid_copy_rescans_it():
    cluster = Cluster(4, 2)
    cluster.upsert([f"id-{i}" for i in range(300)])
    original = cluster.shards[0].fetch
    pages = {"n": 0}

    def restart_after_first_page(collection, page_token, *args):
        pages["n"] += 1
        if pages["n"] == 2:
            cluster.shards[0].restart()
        try:
            return cluster.shards[0].core_fetch(collection, page_token, *args)
        except FailedPreconditionError:
            pages["refused"] = pages.get("refused", 0) + 1
            raise

    cluster.shards[0].core_fetch = original
    cluster.shards[0].fetch = restart_after_first_page
    cluster.resharder.start("c", 3)
    cluster.resharder.wait("c", 30)
    assert cluster.resharder.status("c").phase == "done"
    assert pages["refused"] == 1  # the token from before the restart
    cluster.check_exactly_once(3)


def test_reshard_needs_enough_indexers():
    cluster = Cluster(3, 2)
    with pytest.raises(FailedPreconditionError, match="needs 4 indexers; the cluster has 3"):
        cluster.resharder.start("c", 4)
    assert cluster.resharder.start("c", 2).phase == "none"


# The gateway ----------------------------------------------------------------


def test_gateway_searches_both_layouts_once_and_writes_to_the_new_one():
    shards = [InProcessShard(i) for i in range(3)]
    metadata = InMemoryMetadataStore()
    core = GatewayCore(
        Services(PixelEmbedder(), shards, ReverseVerifier(), InMemoryObjectStore(), metadata),
        GatewaySettings("images", "features", 1_000_000, "pixels-v1", default_shards=2),
    )
    try:
        items = [IngestItem(f"g-{i}", image=jpeg(i)) for i in range(12)]
        core.ingest("c", items, create=True, timeout_s=None)
        stable = metadata.get_collection("c")
        assert stable.shards == 2
        metadata.update_collection(stable, replace(stable, target_shards=3))
        # The copier's work, done by hand: every moved id is on its new shard too.
        shards[2].core.set_copy_fence("c", "by-hand")
        for source in range(2):
            page = shards[source].core.fetch("c", limit=100, moved_under_shards=3)
            for i, v, m in zip(page.ids, page.vectors, page.metadata, strict=True):
                shards[shard_of(i, 3)].core.upsert_if_absent(
                    "c", [i], v[None], [m], fence="by-hand"
                )
        assert sum(len(s.ids("c")) for s in shards) > 12  # moved ids are on two shards
        hits = core.search(SearchQuery("c", image=jpeg(0), k=50, rerank="none"), None).hits
        assert sorted(h.id for h in hits) == sorted(i.id for i in items)  # each exactly once
        late = next(f"late-{n}" for n in range(100) if shard_of(f"late-{n}", 3) == 2)
        outcome = core.ingest("c", [IngestItem(late, image=jpeg(99))], create=False, timeout_s=None)
        assert outcome[0].shard == 2 and late in shards[2].ids("c")
        core.delete("c", [late], None)
        assert shards[2].core.tombstones("c") == 1
        # A gateway that lists fewer indexers than the layout needs refuses clearly.
        small = GatewayCore(
            Services(
                PixelEmbedder(), shards[:2], ReverseVerifier(), InMemoryObjectStore(), metadata
            ),
            GatewaySettings("images", "features", 1_000_000, "pixels-v1"),
        )
        with pytest.raises(FailedPreconditionError, match="uses 3 shards but this gateway knows 2"):
            small.collection("c")
        small.close()
    finally:
        core.close()
