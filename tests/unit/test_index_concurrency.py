"""Searches of one VectorIndex run in parallel; writes wait for them; results stay exact.

Structural, not timed: a search is held inside its scoring step while other searches and
a writer are observed (bench/index_concurrency_memory.py has the throughput figures)."""

import threading

import numpy as np
import pytest

from services.common.index_types import ItemMeta, SearchFilter
from services.indexer import vector_index
from services.indexer.durability import InMemorySnapshotStore, InMemoryWriteAheadLog
from services.indexer.vector_index import VectorIndex

WAIT_S = 10.0


def unit_vectors(n: int, dims: int, seed: int) -> np.ndarray:
    points = np.random.default_rng(seed).normal(size=(n, dims))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def make_index(method: str) -> tuple[VectorIndex, np.ndarray]:
    n = 1500 if method == "scann" else 300
    data = unit_vectors(n, 16, seed=3)
    index = VectorIndex(16, exact_threshold=1000, background_builds=False)
    index.upsert([f"id{i}" for i in range(n)], data)
    assert index.method == method
    return index, data


@pytest.mark.parametrize("method", ["exact", "scann"])
def test_a_search_proceeds_while_another_is_inside_and_a_writer_waits(monkeypatch, method):
    index, data = make_index(method)
    step = "_search_scann" if method == "scann" else "_search_exact_all"
    original = getattr(VectorIndex, step)
    inside, release = threading.Event(), threading.Event()
    holder = threading.current_thread()

    def held(self, *args):
        if threading.current_thread() is holder_thread[0]:
            inside.set()
            assert release.wait(WAIT_S)
        return original(self, *args)

    holder_thread: list[threading.Thread | None] = [None]
    monkeypatch.setattr(VectorIndex, step, held)
    results: dict[str, object] = {}
    first = threading.Thread(target=lambda: results.setdefault("first", index.search(data[:1], 3)))
    holder_thread[0] = first
    first.start()
    assert inside.wait(WAIT_S)

    # A second search completes while the first is still inside its scoring step.
    second = threading.Thread(
        target=lambda: results.setdefault("second", index.search(data[1:2], 3))
    )
    second.start()
    second.join(WAIT_S)
    assert not second.is_alive(), "a search waited for another search"
    assert first.is_alive() and holder is not first

    # A writer waits for the search in flight, then applies.
    new = unit_vectors(1, 16, seed=99)
    writer = threading.Thread(target=lambda: index.upsert(["new"], new))
    writer.start()
    for _ in range(1000):
        if index._lock.writers_waiting == 1:
            break
        writer.join(0.01)
    assert index._lock.writers_waiting == 1 and writer.is_alive()
    release.set()
    first.join(WAIT_S)
    writer.join(WAIT_S)
    assert not first.is_alive() and not writer.is_alive()
    assert results["first"][0][0][0].id == "id0"
    assert results["second"][0][0][0].id == "id1"
    assert index.search(new, 1)[0][0][0].id == "new"  # read-your-writes


@pytest.mark.parametrize("method", ["exact", "scann"])
def test_concurrent_searches_see_every_acknowledged_write_and_no_deleted_id(method):
    index, data = make_index(method)
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader(seed: int) -> None:
        queries = unit_vectors(4, 16, seed)
        try:
            while not stop.is_set():
                for hits in index.search(queries, 5)[0]:
                    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    readers = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for thread in readers:
        thread.start()
    try:
        for step in range(60):
            vector = unit_vectors(1, 16, seed=1000 + step)
            image_id = f"w{step}"
            index.upsert([image_id], vector)
            top = index.search(vector, 1)[0][0][0]
            assert top.id == image_id and top.score == pytest.approx(1.0, abs=1e-5)
            index.delete([image_id])
            assert image_id not in {n.id for n in index.search(vector, 10)[0][0]}
    finally:
        stop.set()
        for thread in readers:
            thread.join(WAIT_S)
    assert not errors, errors[0]


def test_filters_use_cached_row_arrays_that_writes_invalidate():
    index = VectorIndex(8, exact_threshold=10_000)
    data = unit_vectors(50, 8, seed=5)
    meta = [ItemMeta("a" if i % 2 else "b", {"c": str(i % 3)}) for i in range(50)]
    index.upsert([f"id{i}" for i in range(50)], data, meta)
    only_a = SearchFilter(label="a", attributes={"c": "0"})
    hits = index.search(data[3:4], 50, only_a)[0][0]
    assert {h.id for h in hits} == {f"id{i}" for i in range(50) if i % 2 and i % 3 == 0}
    assert isinstance(index._filter_rows[("label", "a")], np.ndarray)
    index.upsert(["id3"], data[3:4], [ItemMeta("b", {"c": "0"})])  # relabelled
    index.upsert(["x"], data[4:5], [ItemMeta("a", {"c": "0"})])  # a new match
    hits = {h.id for h in index.search(data[3:4], 50, only_a)[0][0]}
    assert "id3" not in hits and "x" in hits
    index.delete(["x"])
    assert "x" not in {h.id for h in index.search(data[3:4], 50, only_a)[0][0]}


def test_a_broad_filter_over_scann_with_fresh_rows_keeps_only_matches():
    data = unit_vectors(3000, 16, seed=4)  # half of it is above the exact threshold
    index = VectorIndex(16, exact_threshold=1000, background_builds=False)
    labels = [ItemMeta("even" if i % 2 == 0 else "odd") for i in range(len(data))]
    index.upsert([f"id{i}" for i in range(len(data))], data, labels)
    fresh = unit_vectors(1, 16, seed=77)
    index.upsert(["fresh-odd"], fresh, [ItemMeta("odd")])
    hits, method = index.search(np.vstack([fresh, data[:3]]), 10, SearchFilter(label="even"))
    assert method == "scann-filtered"
    for found in hits:
        assert found and all(int(h.id[2:]) % 2 == 0 for h in found)
    hits, _ = index.search(fresh, 10, SearchFilter(label="odd"))
    assert hits[0][0].id == "fresh-odd"


def test_the_matrix_is_the_only_float_copy_after_a_recovery():
    """A recovering index adopts the snapshot's array; ScaNN keeps int8 codes only."""
    from services.indexer.core import Shard

    wal, snaps = InMemoryWriteAheadLog(), InMemorySnapshotStore()
    shard = Shard(0, exact_threshold=1000, wal=wal, snapshots=snaps)
    data = unit_vectors(1500, 16, seed=8)
    shard.upsert("c", [f"id{i}" for i in range(1500)], data)
    shard._collections["c"].index.wait_for_build()
    shard.snapshot("c")
    restarted = Shard(0, exact_threshold=1000, wal=wal, snapshots=snaps)
    adopted: list[np.ndarray] = []
    load = VectorIndex.load

    def spy(self, ids, vectors, *args, **kwargs):
        adopted.append(vectors)
        return load(self, ids, vectors, *args, **kwargs)

    VectorIndex.load = spy
    try:
        restarted.recover()
    finally:
        VectorIndex.load = load
    index = restarted._collections["c"].index
    assert index._matrix is adopted[0]
    assert index.method == "scann" and index.rebuilds == 0  # served the snapshot's searcher
    files = index.export_searcher().files
    assert not any(name == "dataset.npy" for name in files)  # no float32 copy in ScaNN
    assert vector_index.REORDER_TYPE == vector_index.ReorderType.INT8
    top = index.search(data[5:6], 1)[0][0][0]
    assert top.id == "id5" and top.score == pytest.approx(1.0, abs=1e-5)  # exact re-score
    # The adopted matrix is the index's own: a write after recovery does not alter the
    # snapshot a second recovery reads.
    restarted.upsert("c", ["id5"], unit_vectors(1, 16, seed=9))
    assert np.array_equal(snaps.latest("c").vectors[5], data[5])


class _Store:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put(self, key: str, data: bytes) -> None:
        self.objects[key] = data

    def get(self, key: str) -> bytes:
        return self.objects[key]

    def list(self, prefix: str) -> list[str]:
        return [k for k in self.objects if k.startswith(prefix)]

    def delete(self, key: str) -> None:
        self.objects.pop(key, None)


class _Pointer:
    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def get(self, key: str) -> str | None:
        return self.values.get(key)

    def set(self, key: str, value: str, get: bool = False) -> str | None:
        previous, self.values[key] = self.values.get(key), value
        return previous


@pytest.mark.parametrize("with_searcher", [True, False])
def test_a_snapshot_loads_as_a_view_of_its_bytes_and_is_copied_on_the_first_write(
    with_searcher,
):
    from services.indexer.durability import ObjectSnapshotStore, Snapshot

    data = unit_vectors(1500, 16, seed=11)
    ids = [f"id{i}" for i in range(1500)]
    built = VectorIndex(16, exact_threshold=1000, background_builds=False)
    built.upsert(ids, data)
    store = ObjectSnapshotStore(_Store(), "snap", _Pointer(), 0)
    searcher = built.export_searcher() if with_searcher else None
    store.save("c", Snapshot("1-0", *built.export(), searcher=searcher))

    snapshot = store.latest("c")
    assert snapshot is not None and not snapshot.vectors.flags.writeable  # a view, no copy
    assert np.array_equal(snapshot.vectors, data)
    index = VectorIndex(16, exact_threshold=1000, background_builds=False)
    installed = index.load(snapshot.ids, snapshot.vectors, snapshot.metadata, searcher, adopt=True)
    assert installed == with_searcher and index.method == "scann"  # else trained on the view
    assert index._matrix is snapshot.vectors
    assert index.search(data[7:8], 1)[0][0][0].id == "id7"

    replacement = unit_vectors(1, 16, seed=12)
    index.upsert(["id7", "new"], np.vstack([replacement, data[8:9]]))
    assert index._matrix.flags.writeable and index._matrix is not snapshot.vectors
    assert np.array_equal(snapshot.vectors[7], data[7])  # the snapshot is untouched
    assert np.array_equal(index.vectors_of(["id7"])[0], replacement[0])
    assert np.array_equal(index.vectors_of(["id9"])[0], data[9])
    assert index.search(replacement, 1)[0][0][0].id == "id7"
