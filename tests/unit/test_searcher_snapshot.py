"""A snapshot carries the serving ScaNN searcher; recovery serves it without training."""

import dataclasses

import numpy as np
import pytest

from services.indexer.core import Shard
from services.indexer.durability import InMemorySnapshotStore, InMemoryWriteAheadLog
from services.indexer.searcher_files import digests
from services.indexer.vector_index import MIN_SCANN_VECTORS
from tests.unit.test_shard_durability import unit

DIMS = 16


def scann_shard(wal, snaps, rng) -> Shard:
    """A shard serving ScaNN for "c", with rows written since the build and after the
    snapshot (replayed from the log on recovery)."""
    shard = Shard(0, MIN_SCANN_VECTORS, wal, snaps)
    n = MIN_SCANN_VECTORS + 200
    shard.upsert("c", [f"v{i}" for i in range(n)], unit(rng, n, DIMS))
    index = shard._collections["c"].index
    index.wait_for_build()
    assert index.method == "scann" and index.rebuilds == 1
    shard.upsert("c", [f"fresh{i}" for i in range(30)], unit(rng, 30, DIMS))
    shard.delete("c", [f"v{i}" for i in range(10)])
    shard.upsert("c", ["v20"], unit(rng, 1, DIMS))
    shard.snapshot("c")
    shard.upsert("c", [f"late{i}" for i in range(20)], unit(rng, 20, DIMS))
    shard.delete("c", ["v30", "fresh3"])
    return shard


def vectors_of(shard: Shard, ids: list[str]) -> np.ndarray:
    """float32 [len(ids), DIMS]: the stored vectors of ids."""
    exported_ids, vectors, _ = shard._collections["c"].index.export()
    row_of = {image_id: row for row, image_id in enumerate(exported_ids)}
    return vectors[[row_of[image_id] for image_id in ids]]


def assert_same_results(restarted: Shard, original: Shard, queries: np.ndarray) -> None:
    got, got_method = restarted.search("c", queries, 10)
    want, want_method = original.search("c", queries, 10)
    assert got_method == want_method == "scann"
    for g, w in zip(got, want, strict=True):
        assert [n.id for n in g] == [n.id for n in w]
        assert np.allclose([n.score for n in g], [n.score for n in w], atol=1e-5)


def test_recovered_shard_serves_the_snapshot_searcher_without_training():
    rng = np.random.default_rng(0)
    wal, snaps = InMemoryWriteAheadLog(), InMemorySnapshotStore()
    original = scann_shard(wal, snaps, rng)
    saved = snaps.latest("c")
    assert saved is not None and saved.searcher is not None
    assert "scann_assets.pbtxt" in saved.searcher.files
    assert sorted(saved.searcher.docids) == sorted(saved.ids)
    assert len(saved.searcher.fresh_ids) == 31  # 30 new rows + the re-upserted v20

    restarted = Shard(0, MIN_SCANN_VECTORS, wal, snaps)
    restarted.recover()
    index = restarted._collections["c"].index
    assert index.method == "scann"
    assert index.rebuilds == 0 and not index.rebuilding  # no training run started
    assert index.size == original._collections["c"].index.size
    assert index._scann_params == original._collections["c"].index._scann_params
    assert_same_results(restarted, original, unit(rng, 20, DIMS))
    # Rows written after the snapshot, and the fresh ones, are found (scored exactly).
    for image_id in ("late5", "fresh7"):
        vector = vectors_of(original, [image_id])
        assert restarted.search("c", vector, 1)[0][0][0].id == image_id


# The re-ordering dataset among the searcher's files (int8 codes: REORDER_TYPE).
DATASET = "int8_dataset.npy"


@pytest.mark.parametrize(
    "damage", ["garbage", "truncated", "wrong-vectors", "missing-file", "extra-file"]
)
def test_damaged_serialized_searcher_falls_back_to_a_rebuild(damage):
    rng = np.random.default_rng(1)
    wal, snaps = InMemoryWriteAheadLog(), InMemorySnapshotStore()
    original = scann_shard(wal, snaps, rng)
    saved = snaps.latest("c")
    assert saved is not None and saved.searcher is not None
    files = dict(saved.searcher.files)
    sha256 = dict(saved.searcher.sha256)
    if damage == "garbage":  # caught by the digest
        files[DATASET] = b"damaged"
    elif damage == "truncated":  # digest matches (rewritten): caught by the .npy check
        files[DATASET] = files[DATASET][:-64]
        sha256 = digests(files)
    elif damage == "wrong-vectors":  # well-formed: caught by the self-search check
        header_end = files[DATASET].index(b"\n") + 1
        body = np.frombuffer(files[DATASET][header_end:], dtype=np.int8)
        files[DATASET] = files[DATASET][:header_end] + (-body).tobytes()
        sha256 = digests(files)
    elif damage == "missing-file":
        del files["scann_assets.pbtxt"]
    else:
        files["../escape"] = b""
        sha256 = digests(files)
    searcher = dataclasses.replace(saved.searcher, files=files, sha256=sha256)
    snaps.save("c", dataclasses.replace(saved, searcher=searcher))

    restarted = Shard(0, MIN_SCANN_VECTORS, wal, snaps)
    restarted.recover()
    index = restarted._collections["c"].index
    index.wait_for_build()
    assert index.rebuilds == 1 and index.method == "scann"
    stored_ids = ["v100", "v500", "fresh9", "late2"]
    vectors = vectors_of(original, stored_ids)
    found, _ = restarted.search("c", vectors, 1)
    assert [r[0].id for r in found] == stored_ids


def test_exact_shard_snapshots_no_searcher():
    rng = np.random.default_rng(2)
    wal, snaps = InMemoryWriteAheadLog(), InMemorySnapshotStore()
    shard = Shard(0, MIN_SCANN_VECTORS, wal, snaps)
    shard.upsert("c", [f"v{i}" for i in range(50)], unit(rng, 50, DIMS))
    shard.snapshot("c")
    saved = snaps.latest("c")
    assert saved is not None and saved.searcher is None
