"""All-or-nothing ingest across shards, object keys scoped to a collection, erasure of
deleted images and the orphan sweep (services/gateway/core.py, services/gateway/janitor.py)."""

import numpy as np
import pytest

from services.common.errors import InvalidArgumentError, NotFoundError, UnavailableError
from services.common.lease import InMemoryLease
from services.common.metadata import ImageMeta
from services.gateway.janitor import Janitor, JanitorSettings
from services.gateway.ports import IngestItem, SearchQuery
from services.gateway.reshard import ShardPage
from tests.unit.test_gateway_core import InProcessShard, jpeg
from tests.unit.test_gateway_core import gateway as gateway_fixture

gateway = gateway_fixture


class FetchingShard(InProcessShard):
    """An in-process shard that can also be scanned and made to refuse writes."""

    def __init__(self, shard: int, refuse_writes: bool = False):
        super().__init__(shard)
        self.refuse_writes = refuse_writes

    def upsert(self, collection, ids, vectors, metadata, overrides, timeout):
        if self.refuse_writes:
            raise UnavailableError(f"shard {self.shard}: connection refused")
        super().upsert(collection, ids, vectors, metadata, overrides, timeout)

    def delete(self, collection, ids, timeout, tombstone=False):
        return self.core.delete(collection, ids, tombstone)[0]

    def fetch(self, collection, page_token, limit, moved_under_shards, ids_only, timeout):
        page = self.core.fetch(collection, page_token, limit, moved_under_shards, ids_only)
        return ShardPage(
            page.ids, page.vectors, page.metadata, page.next_page_token, page.scanned, page.size
        )

    def ids(self, collection):
        return sorted(self.core.fetch(collection, "", 5000, 0, True).ids)


def items(n, prefix="id"):
    return [IngestItem(f"{prefix}-{i}", image=jpeg(i), label=f"L{i}") for i in range(n)]


def use_shards(core, shards):
    core.services.shards[:] = shards


def janitor(core, clock, erase_after_s=60.0, orphan_grace_s=600.0):
    settings = JanitorSettings(erase_after_s=erase_after_s, orphan_grace_s=orphan_grace_s)
    return Janitor(
        core.services.shards,
        core.services.metadata,
        core.ledger,
        core.services.store,
        InMemoryLease(),
        settings,
        clock=clock,
    )


def test_a_batch_failing_on_one_shard_leaves_no_vectors_on_the_other(gateway):
    healthy, down = FetchingShard(0), FetchingShard(1, refuse_writes=True)
    use_shards(gateway, [healthy, down])
    with pytest.raises(UnavailableError):
        gateway.ingest("c", items(12), create=True, timeout_s=None)
    assert healthy.ids("c") == []
    assert gateway.services.metadata.count_images("c") == 0
    down.refuse_writes = False  # the retry succeeds and is complete
    gateway.ingest("c", items(12), create=True, timeout_s=None)
    assert len(healthy.ids("c") + down.ids("c")) == 12
    outcome = gateway.search(SearchQuery("c", image=jpeg(3), k=12, rerank="none"), None)
    assert len(outcome.hits) == 12 and not outcome.partial


def test_a_failed_reingest_keeps_the_committed_vector(gateway):
    shards = [FetchingShard(0), FetchingShard(1)]
    use_shards(gateway, shards)
    gateway.ingest("c", items(6), create=True, timeout_s=None)
    for shard in shards:
        shard.refuse_writes = True
    with pytest.raises(UnavailableError):
        gateway.ingest("c", items(6) + items(2, "new"), create=False, timeout_s=None)
    assert sorted(shards[0].ids("c") + shards[1].ids("c")) == sorted(i.id for i in items(6))
    assert gateway.services.metadata.count_images("c") == 6


def test_object_keys_are_scoped_to_the_callers_collection(gateway):
    gateway.services.store.put("uploads/a/photo.png", jpeg(7))
    gateway.services.store.put("uploads/b/photo.png", jpeg(8))
    (outcome,) = gateway.ingest(
        "a", [IngestItem("x", object_key="uploads/a/photo.png")], create=True, timeout_s=None
    )
    own_image = f"images/{outcome.sha256}"
    gateway.ingest("a", [IngestItem("y", object_key=own_image)], create=False, timeout_s=None)
    gateway.ingest("b", [IngestItem("z", image=jpeg(9))], create=True, timeout_s=None)
    with pytest.raises(NotFoundError, match="no image"):
        gateway.ingest("b", [IngestItem("w", object_key=own_image)], create=False, timeout_s=None)
    with pytest.raises(NotFoundError, match="no image"):
        gateway.search(SearchQuery("b", object_key=own_image), None)
    with pytest.raises(InvalidArgumentError, match="outside this collection's scope"):
        gateway.search(SearchQuery("b", object_key="uploads/a/photo.png"), None)
    with pytest.raises(InvalidArgumentError, match="outside this collection's scope"):
        gateway.search(SearchQuery("b", object_key="features/rootsift/x.npz"), None)
    assert gateway.search(SearchQuery("b", object_key="uploads/b/photo.png"), None).hits


def stored_keys(core):
    return sorted(core.services.store.list(""))


def test_deleting_the_last_reference_erases_bytes_and_features_after_the_delay(gateway):
    now = [1000.0]
    sweeper = janitor(gateway, lambda: now[0], erase_after_s=60.0)
    shared = jpeg(1)
    gateway.ingest("a", [IngestItem("one", image=shared)], create=True, timeout_s=None)
    gateway.ingest("b", [IngestItem("two", image=shared)], create=True, timeout_s=None)
    gateway.ingest("a", [IngestItem("other", image=jpeg(2))], create=False, timeout_s=None)
    (meta,) = gateway.services.metadata.get_images("a", ["one"])
    image_key = f"images/{meta.sha256}"
    gateway.delete("a", ["one"], None)
    now[0] = 1e10
    assert sweeper.erase_due() == 0  # collection b still has the bytes
    assert gateway.get_image("b", "two")[1] == shared
    gateway.delete("b", ["two"], None)
    now[0] = 1e10 + 59
    # The queue uses wall-clock time of the delete; the fake clock is far past it.
    assert sweeper.erase_due() == 1
    assert not [k for k in stored_keys(gateway) if meta.sha256 in k]
    assert any(k.startswith("images/") for k in stored_keys(gateway))  # "other" is kept
    with pytest.raises(NotFoundError):
        gateway.services.store.get(image_key)
    # The same bytes ingested again are stored again.
    gateway.ingest("a", [IngestItem("again", image=shared)], create=False, timeout_s=None)
    assert gateway.get_image("a", "again")[1] == shared


def test_erasure_waits_for_its_delay(gateway):
    now = [0.0]
    sweeper = janitor(gateway, lambda: now[0], erase_after_s=60.0)
    gateway.ingest("a", [IngestItem("one", image=jpeg(1))], create=True, timeout_s=None)
    gateway.delete("a", ["one"], None)
    (deleted_at,) = gateway.services.metadata.blob_ledger()._queue.values()
    now[0] = deleted_at + 30
    assert sweeper.erase_due() == 0
    now[0] = deleted_at + 61
    assert sweeper.erase_due() == 1


def test_a_replaced_image_is_erased_and_a_failed_ingest_leaves_no_bytes(gateway):
    sweeper = janitor(gateway, lambda: 1e10, erase_after_s=0.0)
    gateway.ingest("a", [IngestItem("one", image=jpeg(1))], create=True, timeout_s=None)
    gateway.ingest("a", [IngestItem("one", image=jpeg(2))], create=False, timeout_s=None)
    use_shards(gateway, [FetchingShard(0, refuse_writes=True), FetchingShard(1, True)])
    with pytest.raises(UnavailableError):
        gateway.ingest("a", [IngestItem("two", image=jpeg(3))], create=False, timeout_s=None)
    sweeper.erase_due()
    (meta,) = gateway.services.metadata.get_images("a", ["one"])
    images = [k for k in stored_keys(gateway) if k.startswith("images/")]
    assert images == [f"images/{meta.sha256}"]


def test_a_pinned_image_is_not_erased(gateway):
    sweeper = janitor(gateway, lambda: 1e10, erase_after_s=0.0)
    gateway.ledger.pin({"ab" * 32: ["images/" + "ab" * 32]}, ttl_s=60)
    gateway.services.store.put("images/" + "ab" * 32, b"bytes")
    assert sweeper.erase_due() == 0
    assert gateway.services.store.exists("images/" + "ab" * 32)


def test_the_sweep_removes_orphans_only_after_their_grace(gateway):
    shards = [FetchingShard(0), FetchingShard(1)]
    use_shards(gateway, shards)
    gateway.ingest("c", items(4), create=True, timeout_s=None)
    vector = shards[0].core.vectors("c", shards[0].ids("c")[:1])[0][None, :]
    for shard in shards:  # as if an ingest wrote a vector and its gateway died
        shard.core.upsert("c", [f"orphan-{shard.shard}"], vector)
    now = [0.0]
    sweeper = janitor(gateway, lambda: now[0], orphan_grace_s=600.0)
    first = sweeper.sweep_orphans()
    assert (first.orphans_seen, first.orphans_deleted) == (2, 0)
    now[0] = 599.0
    assert sweeper.sweep_orphans().orphans_deleted == 0
    # An orphan committed meanwhile (its metadata arrived) is no longer one.
    gateway.services.metadata.put_image(
        "c", ImageMeta("orphan-1", "0" * 64, "", "pixels-v1", 1, 0.0)
    )
    now[0] = 600.0
    assert sweeper.sweep_orphans().orphans_deleted == 1
    ids = sorted(shards[0].ids("c") + shards[1].ids("c"))
    assert ids == sorted([i.id for i in items(4)] + ["orphan-1"])


def test_index_entries_without_metadata_never_shorten_an_answer(gateway):
    """A delete whose shard was down leaves the vector behind until the sweep; an ingest in
    flight has vectors before metadata. Neither may take a result slot."""
    shards = [FetchingShard(0), FetchingShard(1)]
    use_shards(gateway, shards)
    gateway.ingest("c", items(6), create=True, timeout_s=None)
    query = jpeg(2)
    top = gateway.search(SearchQuery("c", image=query, k=1, rerank="none"), None).hits[0]
    vector = None
    for shard in shards:
        vector = vector if vector is not None else shard.core.vectors("c", [top.id])[0]
    stale = [f"stale-{i}" for i in range(10)]  # as close to the query as its best match
    shards[0].core.upsert("c", stale, np.repeat(vector[None, :], len(stale), axis=0))
    for k in (1, 3, 6):
        outcome = gateway.search(SearchQuery("c", image=query, k=k, rerank="none"), None)
        assert len(outcome.hits) == k and not outcome.partial
        assert not {h.id for h in outcome.hits} & set(stale)


class FailingStore:
    """An object store whose writes fail (the S3 server is down)."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def put(self, key, data, content_type="application/octet-stream"):
        raise UnavailableError("object store unreachable")


def test_a_failed_blob_write_releases_its_pins(gateway):
    object.__setattr__(gateway.services, "store", FailingStore(gateway.services.store))
    with pytest.raises(UnavailableError):
        gateway.ingest("c", items(2), create=True, timeout_s=None)
    assert gateway.ledger._pins == {}
