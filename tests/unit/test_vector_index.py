import numpy as np
import pytest

from services.common.errors import InvalidArgumentError
from services.common.index_types import IndexOverrides, ItemMeta, SearchFilter
from services.indexer import vector_index
from services.indexer.core import Shard
from services.indexer.vector_index import VectorIndex, scann_params_for


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
    results = index.search(queries, 10)[0]
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
    index.wait_for_build()
    assert index.method == "scann"
    queries = clustered_unit_vectors(100, 64, 50, seed=4)
    expected = brute_force(data, queries, 10)
    results = index.search(queries, 10)[0]
    recall = np.mean(
        [
            len({n.id for n in got} & {f"id{i}" for i in want}) / 10
            for got, want in zip(results, expected, strict=True)
        ]
    )
    assert recall >= 0.9
    # Upserts and deletes after the build are visible to the ScaNN searcher.
    index.upsert(["fresh"], queries[:1])
    assert index.search(queries[:1], 1)[0][0][0].id == "fresh"
    index.delete(["fresh"])
    assert "fresh" not in {n.id for n in index.search(queries[:1], 10)[0][0]}


def test_upsert_replaces_and_delete_removes():
    index = VectorIndex(4, exact_threshold=100)
    a = np.array([[1, 0, 0, 0]], np.float32)
    b = np.array([[0, 1, 0, 0]], np.float32)
    index.upsert(["x"], a)
    index.upsert(["x"], b)
    assert index.size == 1
    assert index.search(b, 1)[0][0][0].score == pytest.approx(1.0)
    assert index.delete(["x", "missing"]) == 1
    assert index.search(b, 5)[0] == [[]]


def test_rows_are_reused_and_capacity_grows():
    index = VectorIndex(8, exact_threshold=10**6)
    data = clustered_unit_vectors(3000, 8, 5, seed=5)
    index.upsert([str(i) for i in range(3000)], data)
    index.delete([str(i) for i in range(0, 3000, 2)])
    index.upsert([f"n{i}" for i in range(1500)], data[:1500])
    assert index.size == 3000
    top = index.search(data[1:2], 1)[0][0][0]
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


def brute_force_subset(data, queries, rows, k):
    scores = queries @ data[rows].T
    return [[rows[i] for i in np.argsort(-row, kind="stable")[:k]] for row in scores]


@pytest.mark.parametrize("threshold", [100_000, 1000])  # exact index / ScaNN index
def test_filtered_search_is_exact_for_selective_filters_and_complete_for_broad_ones(threshold):
    data = clustered_unit_vectors(8000, 32, 40, seed=7)
    ids = [f"id{i}" for i in range(len(data))]
    labels = ["rare" if i % 100 == 0 else ("common" if i % 2 else "other") for i in range(8000)]
    shops = ["north" if i % 3 == 0 else "south" for i in range(8000)]
    index = VectorIndex(32, exact_threshold=threshold)
    index.upsert(
        ids, data, [ItemMeta(lab, {"shop": shop}) for lab, shop in zip(labels, shops, strict=True)]
    )
    index.wait_for_build()
    queries = clustered_unit_vectors(20, 32, 40, seed=8)

    rare_rows = [i for i in range(8000) if labels[i] == "rare"]
    results, method = index.search(queries, 10, SearchFilter("rare"))
    assert method == "exact-filtered"
    for got, want in zip(results, brute_force_subset(data, queries, rare_rows, 10), strict=True):
        assert [n.id for n in got] == [ids[i] for i in want]

    rows = [i for i in range(8000) if labels[i] == "common" and shops[i] == "north"]
    results, method = index.search(queries, 10, SearchFilter("common", {"shop": "north"}))
    assert method == ("scann-filtered" if threshold == 1000 else "exact-filtered")
    expected = brute_force_subset(data, queries, rows, 10)
    allowed = {ids[i] for i in rows}
    recall = np.mean(
        [
            len({n.id for n in g} & {ids[i] for i in w}) / 10
            for g, w in zip(results, expected, strict=True)
        ]
    )
    assert all(len(r) == 10 and {n.id for n in r} <= allowed for r in results)
    assert recall >= 0.9
    assert index.search(queries, 5, SearchFilter("missing"))[0] == [[]] * 20


def test_metadata_follows_replacement_and_deletion():
    index = VectorIndex(4, exact_threshold=100)
    v = np.eye(4, dtype=np.float32)
    index.upsert(["a"], v[:1], [ItemMeta("red")])
    index.upsert(["a"], v[:1], [ItemMeta("blue")])
    assert index.search(v[:1], 5, SearchFilter("red"))[0] == [[]]
    assert [n.id for n in index.search(v[:1], 5, SearchFilter("blue"))[0][0]] == ["a"]
    index.delete(["a"])
    assert index.search(v[:1], 5, SearchFilter("blue"))[0] == [[]]


def test_background_rebuild_swaps_in_a_new_searcher_without_losing_writes():
    data = clustered_unit_vectors(12_000, 32, 60, seed=9)
    ids = [f"id{i}" for i in range(len(data))]
    index = VectorIndex(32, exact_threshold=2000)
    index.upsert(ids[:4000], data[:4000])
    index.wait_for_build()
    assert index.rebuilds == 1 and index.method == "scann"
    # Adding more than half of the built size again triggers a retrain beside the live index.
    index.upsert(ids[4000:7000], data[4000:7000])
    assert index.rebuilding or index.rebuilds == 2
    queries = clustered_unit_vectors(50, 32, 60, seed=10)
    during, method = index.search(queries, 10)  # served by the old searcher meanwhile
    assert method == "scann" and all(len(r) == 10 for r in during)
    index.upsert(["fresh"], queries[:1])
    index.delete(["id5"])
    index.wait_for_build()
    assert index.rebuilds == 2 and not index.rebuilding
    assert index.search(queries[:1], 1)[0][0][0].id == "fresh"
    assert "id5" not in {n.id for n in index.search(data[5:6], 10)[0][0]}
    expected = brute_force(data[:7000], queries[1:], 10)
    got = index.search(queries[1:], 10)[0]
    recall = np.mean(
        [
            len({n.id for n in g} & {f"id{i}" for i in w}) / 10
            for g, w in zip(got, expected, strict=True)
        ]
    )
    assert recall >= 0.9


def test_overrides_set_the_threshold_and_the_partitioning():
    data = clustered_unit_vectors(3000, 16, 20, seed=11)
    index = VectorIndex(16, exact_threshold=100_000)
    index.upsert([str(i) for i in range(3000)], data)
    assert index.method == "exact"
    index.set_overrides(IndexOverrides(exact_threshold=1000, num_leaves=30, leaves_to_search=30))
    index.wait_for_build()
    assert index.method == "scann" and index.exact_threshold == 1000
    # Searching every leaf with exact re-ordering finds the true nearest neighbour.
    results, _ = index.search(data[:20], 1)
    assert [r[0].id for r in results] == [str(i) for i in range(20)]
    assert scann_params_for(3000, index.overrides).num_leaves == 30


def test_fresh_writes_are_found_by_their_own_vector_after_a_build():
    data = clustered_unit_vectors(6000, 32, 30, seed=12)
    index = VectorIndex(32, exact_threshold=2000)
    index.upsert([f"id{i}" for i in range(6000)], data)
    index.wait_for_build()
    fresh = clustered_unit_vectors(300, 32, 30, seed=13)
    index.upsert([f"new{i}" for i in range(300)], fresh)  # below the rebuild trigger
    assert not index.rebuilding and index.method == "scann"
    results, _ = index.search(fresh, 1)
    assert [r[0].id for r in results] == [f"new{i}" for i in range(300)]
    index.delete(["new0"])
    assert index.search(fresh[:1], 3)[0][0][0].id != "new0"


def test_large_k_keeps_recall():
    data = clustered_unit_vectors(8000, 32, 40, seed=14)
    index = VectorIndex(32, exact_threshold=1000)
    index.upsert([f"id{i}" for i in range(8000)], data)
    index.wait_for_build()
    queries = clustered_unit_vectors(10, 32, 40, seed=15)
    results, method = index.search(queries, 600)
    expected = brute_force(data, queries, 600)
    recall = np.mean(
        [
            len({n.id for n in g} & {f"id{i}" for i in w}) / 600
            for g, w in zip(results, expected, strict=True)
        ]
    )
    assert method == "scann" and all(len(r) == 600 for r in results)
    assert recall >= 0.9


def test_first_fill_of_an_empty_index_matches_row_by_row_upserts():
    data = clustered_unit_vectors(3000, 16, 20, seed=21)
    ids = [f"id{i}" for i in range(3000)]
    meta = [ItemMeta(f"l{i % 7}", {"c": str(i % 3)} if i % 2 else {}) for i in range(3000)]
    bulk = VectorIndex(16, exact_threshold=100_000)
    bulk.upsert(ids, data, meta)  # one call into a never-used index: the vectorised path
    stepwise = VectorIndex(16, exact_threshold=100_000)
    stepwise.upsert(ids[:1], data[:1], meta[:1])
    stepwise.upsert(ids[1:], data[1:], meta[1:])
    queries = clustered_unit_vectors(5, 16, 20, seed=22)
    filters = [SearchFilter(), SearchFilter("l3"), SearchFilter("l3", {"c": "1"})]
    for search_filter in [*filters, SearchFilter(attributes={"c": "2"})]:
        assert bulk.search(queries, 10, search_filter) == stepwise.search(
            queries, 10, search_filter
        )
    exported, expected = bulk.export(), stepwise.export()
    assert exported[0] == expected[0] and exported[2] == expected[2]
    np.testing.assert_array_equal(exported[1], expected[1])
    # afterwards it is an ordinary index: replace, delete, grow
    bulk.upsert(["id5", "new"], data[6:8])
    assert bulk.delete(["id7", "missing"]) == 1
    assert bulk.size == 3000
    assert bulk.search(data[6:7], 2)[0][0][0].id in {"id5", "id6"}
    # ids repeated within the first call: the last one wins, as row by row
    repeated = VectorIndex(16, exact_threshold=100_000)
    repeated.upsert(["a", "b", "a"], data[:3])
    assert repeated.size == 2
    assert repeated.search(data[2:3], 1)[0][0][0].id == "a"


def test_writes_while_a_rebuild_gathers_its_rows_are_not_lost(monkeypatch):
    data = clustered_unit_vectors(9000, 32, 60, seed=23)
    index = VectorIndex(32, exact_threshold=2000)
    index.upsert([f"id{i}" for i in range(4000)], data[:4000])
    index.wait_for_build()
    gather = vector_index._gather

    def gather_after_writes(source):
        # the rows are read off the lock: rewrite, delete and reuse rows before reading them
        index.upsert(["id0"], data[8000:8001])
        index.delete(["id1", "id2"])
        index.upsert(["reused"], data[8001:8002])
        return gather(source)

    monkeypatch.setattr(vector_index, "_gather", gather_after_writes)
    index.upsert([f"id{i}" for i in range(4000, 7000)], data[4000:7000])  # triggers a rebuild
    index.wait_for_build()
    assert index.rebuilds == 2 and not index.rebuilding and index.size == 6999
    index._fresh.clear()  # answers from the new searcher alone, without exact fresh rows
    assert index.search(data[8000:8001], 1)[0][0][0].id == "id0"
    assert index.search(data[8001:8002], 1)[0][0][0].id == "reused"
    found = {n.id for row in index.search(data[:3], 10)[0] for n in row}
    assert not found & {"id1", "id2"}
