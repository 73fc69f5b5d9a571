import numpy as np
import pytest

from services.common.errors import InvalidArgumentError
from services.indexer.core import Shard
from services.indexer.vector_index import VectorIndex


def clustered_unit_vectors(n: int, dims: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dims))
    points = centres[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, dims))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points.astype(np.float32)


def brute_force(data: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ data.T), axis=1, kind="stable")[:, :k]


def test_exact_search_matches_brute_force():
    data = clustered_unit_vectors(500, 32, 10, seed=1)
    index = VectorIndex(32, exact_threshold=10_000)
    index.upsert([f"id{i}" for i in range(500)], data)
    queries = clustered_unit_vectors(20, 32, 10, seed=2)
    results = index.search(queries, 10)
    expected = brute_force(data, queries, 10)
    assert index.method == "exact"
    for got, want in zip(results, expected, strict=True):
        assert [n.id for n in got] == [f"id{i}" for i in want]
        assert got[0].score >= got[-1].score


def test_scann_recall_against_brute_force_and_updates():
    data = clustered_unit_vectors(6000, 64, 50, seed=3)
    ids = [f"id{i}" for i in range(len(data))]
    index = VectorIndex(64, exact_threshold=5000)
    index.upsert(ids[:4000], data[:4000])
    assert index.method == "exact"
    index.upsert(ids[4000:], data[4000:])
    assert index.method == "scann"
    queries = clustered_unit_vectors(100, 64, 50, seed=4)
    expected = brute_force(data, queries, 10)
    results = index.search(queries, 10)
    recall = np.mean(
        [
            len({n.id for n in got} & {f"id{i}" for i in want}) / 10
            for got, want in zip(results, expected, strict=True)
        ]
    )
    assert recall >= 0.9
    # Upserts and deletes after the build are visible to the ScaNN searcher.
    index.upsert(["fresh"], queries[:1])
    assert index.search(queries[:1], 1)[0][0].id == "fresh"
    index.delete(["fresh"])
    assert "fresh" not in {n.id for n in index.search(queries[:1], 10)[0]}


def test_upsert_replaces_and_delete_removes():
    index = VectorIndex(4, exact_threshold=100)
    a = np.array([[1, 0, 0, 0]], np.float32)
    b = np.array([[0, 1, 0, 0]], np.float32)
    index.upsert(["x"], a)
    index.upsert(["x"], b)
    assert index.size == 1
    assert index.search(b, 1)[0][0].score == pytest.approx(1.0)
    assert index.delete(["x", "missing"]) == 1
    assert index.search(b, 5) == [[]]


def test_rows_are_reused_and_capacity_grows():
    index = VectorIndex(8, exact_threshold=10**6)
    data = clustered_unit_vectors(3000, 8, 5, seed=5)
    index.upsert([str(i) for i in range(3000)], data)
    index.delete([str(i) for i in range(0, 3000, 2)])
    index.upsert([f"n{i}" for i in range(1500)], data[:1500])
    assert index.size == 3000
    top = index.search(data[1:2], 1)[0][0]
    assert top.id in {"1", "n1"}


def test_bad_input_is_rejected():
    index = VectorIndex(4, exact_threshold=100)
    with pytest.raises(InvalidArgumentError, match="shape"):
        index.upsert(["a"], np.zeros((1, 5), np.float32))
    with pytest.raises(InvalidArgumentError, match="NaN"):
        index.upsert(["a"], np.full((1, 4), np.nan, np.float32))
    with pytest.raises(InvalidArgumentError, match="k must be"):
        index.search(np.zeros((1, 4), np.float32), 0)


def test_shard_collections_are_separate():
    shard = Shard(0, exact_threshold=100)
    shard.upsert("a", ["1"], np.eye(4, dtype=np.float32)[:1])
    results, _ = shard.search("b", np.eye(4, dtype=np.float32)[:1], 3)
    assert results == [[]]
    with pytest.raises(InvalidArgumentError, match="duplicate"):
        shard.upsert("a", ["1", "1"], np.eye(4, dtype=np.float32)[:2])
    with pytest.raises(InvalidArgumentError, match="collection name"):
        shard.upsert("bad name!", ["1"], np.eye(4, dtype=np.float32)[:1])
