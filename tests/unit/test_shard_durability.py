"""Shard recovery from snapshot + log, on in-memory stores and on real Redis + S3."""

import numpy as np
import pytest

from services.common.errors import InvalidArgumentError
from services.common.index_types import IndexOverrides, ItemMeta, SearchFilter
from services.indexer.core import Shard
from services.indexer.durability import InMemorySnapshotStore, InMemoryWriteAheadLog


def unit(rng, n, dims=16):
    x = rng.normal(size=(n, dims)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def run_workload(shard: Shard, rng, rounds=30, snapshot_at=(10, 20)):
    """Upserts, re-upserts and deletes in two collections, snapshotting part way."""
    alive: dict[str, dict[str, np.ndarray]] = {"a": {}, "b": {}}
    for step in range(rounds):
        for collection in ("a", "b"):
            ids = [f"{collection}{step}-{i}" for i in range(5)]
            vectors = unit(rng, 5)
            shard.upsert(collection, ids, vectors)
            alive[collection].update(zip(ids, vectors, strict=True))
            if step > 2:
                gone = [f"{collection}{step - 3}-0", f"{collection}{step - 3}-1"]
                shard.delete(collection, gone)
                for g in gone:
                    alive[collection].pop(g, None)
                again = f"{collection}{step - 2}-2"
                vector = unit(rng, 1)
                shard.upsert(collection, [again], vector)
                alive[collection][again] = vector[0]
        if step in snapshot_at:
            shard.snapshot_all()
    return alive


def assert_same_answers(restarted: Shard, original: Shard, alive, rng):
    for collection, entries in alive.items():
        assert restarted.stats(collection)[0].size == len(entries)
        queries = unit(rng, 10)
        got, _ = restarted.search(collection, queries, 5)
        want, _ = original.search(collection, queries, 5)
        for g, w in zip(got, want, strict=True):
            assert np.allclose([n.score for n in g], [n.score for n in w], atol=1e-6)
        ids = {n.id for result in restarted.search(collection, queries, 50)[0] for n in result}
        assert ids <= set(entries)


def test_recovery_from_snapshot_and_log_matches_the_live_shard():
    rng = np.random.default_rng(0)
    wal, snaps = InMemoryWriteAheadLog(), InMemorySnapshotStore()
    original = Shard(0, 1000, wal, snaps)
    alive = run_workload(original, rng)
    assert wal.length("a") < 30 * 3  # trimmed behind the last snapshot
    restarted = Shard(0, 1000, wal, snaps)
    report = restarted.recover()
    assert report.collections == 2 and report.from_snapshots == 2 and report.replayed_entries > 0
    assert_same_answers(restarted, original, alive, rng)


def test_deleted_ids_do_not_come_back_from_an_older_snapshot():
    rng = np.random.default_rng(1)
    wal, snaps = InMemoryWriteAheadLog(), InMemorySnapshotStore()
    shard = Shard(0, 1000, wal, snaps)
    shard.upsert("c", ["x", "y"], unit(rng, 2))
    shard.snapshot("c")
    shard.delete("c", ["x"])
    shard.upsert("c", ["y"], unit(rng, 1))  # same id twice: one entry
    restarted = Shard(0, 1000, wal, snaps)
    restarted.recover()
    results, _ = restarted.search("c", unit(rng, 1), 10)
    assert [n.id for n in results[0]] == ["y"]


def test_rejected_upserts_are_not_logged():
    wal = InMemoryWriteAheadLog()
    shard = Shard(0, 1000, wal, InMemorySnapshotStore())
    shard.upsert("c", ["x"], np.eye(4, dtype=np.float32)[:1])
    with pytest.raises(InvalidArgumentError):
        shard.upsert("c", ["y"], np.eye(5, dtype=np.float32)[:1])
    assert wal.length("c") == 1


def test_metadata_survives_snapshot_and_replay():
    rng = np.random.default_rng(3)
    wal, snaps = InMemoryWriteAheadLog(), InMemorySnapshotStore()
    shard = Shard(0, 1000, wal, snaps)
    shard.upsert(
        "c",
        ["x", "y"],
        unit(rng, 2),
        [ItemMeta("red"), ItemMeta("blue", {"k": "v"})],
        IndexOverrides(exact_threshold=7),
    )
    shard.snapshot("c")
    shard.upsert("c", ["z"], unit(rng, 1), [ItemMeta("red")])
    restarted = Shard(0, 1000, wal, snaps)
    restarted.recover()
    red, _ = restarted.search("c", unit(rng, 1), 10, SearchFilter("red"))
    assert sorted(n.id for n in red[0]) == ["x", "z"]
    tagged, _ = restarted.search("c", unit(rng, 1), 10, SearchFilter("", {"k": "v"}))
    assert [n.id for n in tagged[0]] == ["y"]
    assert restarted._collections["c"].index.exact_threshold == 7


def test_a_durable_shard_refuses_data_rpcs_until_it_has_recovered():
    """A restarted shard must not answer from a half-loaded index (issue 12): its servicer says
    UNAVAILABLE, which the gateway counts as a missing shard, until recover() finished."""
    from services.common.errors import UnavailableError
    from services.common.metrics import ServiceMetrics
    from services.common.proto_convert import vectors_to_proto
    from services.indexer.servicer import IndexerServicer
    from visearch.v1 import indexer_pb2

    wal, snapshots = InMemoryWriteAheadLog(), InMemorySnapshotStore()
    first = Shard(0, 100, wal, snapshots)
    first.recover()
    first.upsert("c", ["a", "b"], unit(np.random.default_rng(0), 2))
    restarted = Shard(0, 100, wal, snapshots)
    servicer = IndexerServicer(restarted, ServiceMetrics("indexer-loading-test"))
    request = indexer_pb2.IndexSearchRequest(
        collection="c", queries=vectors_to_proto(unit(np.random.default_rng(1), 1)), k=5
    )
    for call, message in (
        (servicer.Search, request),
        (servicer.Stats, indexer_pb2.IndexStatsRequest(collection="c")),
        (servicer.Fetch, indexer_pb2.FetchRequest(collection="c", limit=10)),
    ):
        with pytest.raises(UnavailableError, match="still loading"):
            call(message, None)
    restarted.recover()
    (result,) = servicer.Search(request, None).results
    assert len(result.neighbors) == 2
    assert Shard(1, 100).loaded  # nothing to recover without a log
