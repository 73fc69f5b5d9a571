"""One collection's vectors on one shard: exact search while small, ScaNN once large.

Vectors are L2-normalised float32; the score is the inner product (cosine).
The dense matrix is the source of truth and the only float32 copy of the vectors: the
ScaNN searcher, once built, re-orders with int8 codes of them (a quarter of the bytes)
and its final candidates are re-scored exactly from the matrix. It is kept in step with
every upsert and delete through its string docids.

Concurrency: a readers-writer lock. Searches, exports, scans and the ScaNN serialisation
share the read side, so searches of one shard run in parallel (numpy and ScaNN release the
GIL); upserts, deletes and a build's swap take the write side, briefly.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import scann
from scann.scann_ops.py.scann_builder import ReorderType

from services.common.errors import InvalidArgumentError
from services.common.index_types import (
    NO_FILTER,
    NO_OVERRIDES,
    IndexOverrides,
    ItemMeta,
    SearchFilter,
)
from services.indexer.fresh_rows import FreshRows
from services.indexer.rwlock import ReadWriteLock
from services.indexer.searcher_files import (
    SerializedSearcher,
    digests,
    load_searcher,
    searcher_files,
)

MAX_K = 1000
INITIAL_CAPACITY = 1024
# Retrain the partitions once this share of the index has changed since the last build.
REBUILD_CHANGE_FRACTION = 0.5
# ... or once this many rows await a build (each query scores them exactly).
MAX_FRESH_ROWS = 20_000
# Below this ScaNN's quantiser cannot train (and exact search is fast anyway).
MIN_SCANN_VECTORS = 1000
# A rebuild beside a serving searcher can run nicer than the serving threads (Linux
# niceness is per thread and inherited by the threads ScaNN trains with) and on fewer
# training threads (0 = all cores). Off by default: in bench/rebuild_under_load.py +5 / one
# thread made the rebuild 2.8-3.4x longer with no consistent query-latency gain, and the
# rows written meanwhile (scored exactly on every query until the swap) cost queries more
# than the build does (docs/benchmarks.md).
BUILD_NICENESS = 0
BUILD_THREADS = 0
# Growth of the row arrays when full (1.5x: at most half a matrix of slack, and a grow
# briefly holds 2.5x the old matrix rather than 3x).
GROWTH_FACTOR = 1.5
# ScaNN re-orders its candidates with int8 codes of the vectors instead of a float32 copy
# of them (the shard's matrix is the one float32 copy); the final candidates, twice as many
# as asked for, are then re-scored exactly from the matrix ...
REORDER_TYPE = ReorderType.INT8
# ... at least k + this many of them.
RESCORE_EXTRA = 20


def _blas_product_slots() -> int:
    """How many exact-search matrix products may run at once: OpenBLAS already spreads one
    product over every core, and concurrent multi-threaded products oversubscribe them (in
    bench/index_concurrency_memory.py 4 concurrent searches of 50k x 256 ran at 0.25x the
    single-lock throughput on 2 cores). With single-threaded BLAS
    (OPENBLAS_NUM_THREADS / OMP_NUM_THREADS = 1) one slot per core."""
    cores = os.cpu_count() or 1
    configured = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    blas_threads = int(configured) if configured and configured.isdigit() else cores
    return max(1, cores // max(1, blas_threads))


# Process-wide: the products of every collection share the cores. Only the product is
# gated; top-k selection, ScaNN calls and result assembly of other searches run meanwhile.
_BLAS_GATE = threading.BoundedSemaphore(_blas_product_slots())
# A scan page examines at most this many entries per entry it may return.
SCAN_EXAMINE_FACTOR = 20
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScannParams:
    """Tree + asymmetric hashing + exact re-order (ScaNN's recommended recipe)."""

    num_leaves: int
    leaves_to_search: int
    training_sample_size: int
    dims_per_block: int = 2
    anisotropic_quantization_threshold: float = 0.2
    reorder: int = 200


def scann_params_for(size: int, overrides: IndexOverrides = NO_OVERRIDES) -> ScannParams:
    """Partitioning scaled with the shard: about sqrt(n) leaves, searching ~5% of them."""
    num_leaves = overrides.num_leaves or max(16, min(4000, int(math.sqrt(size))))
    num_leaves = min(num_leaves, size)
    leaves_to_search = overrides.leaves_to_search or max(8, num_leaves // 20)
    return ScannParams(
        num_leaves=num_leaves,
        leaves_to_search=min(leaves_to_search, num_leaves),
        training_sample_size=min(size, 250_000),
        reorder=overrides.reorder or ScannParams.reorder,
    )


def build_searcher(
    data: np.ndarray,
    docids: list[str],
    overrides: IndexOverrides = NO_OVERRIDES,
    training_threads: int = 0,
) -> scann.scann_ops_pybind.ScannSearcher:
    """data: float32 [n, dims] L2-normalised; docids: n strings; training_threads 0 = all."""
    params = scann_params_for(len(docids), overrides)
    builder = scann.scann_ops_pybind.builder(data, 10, "dot_product")
    builder.set_n_training_threads(training_threads)
    return (
        builder.tree(
            num_leaves=params.num_leaves,
            num_leaves_to_search=params.leaves_to_search,
            training_sample_size=params.training_sample_size,
        )
        .score_ah(
            params.dims_per_block,
            anisotropic_quantization_threshold=params.anisotropic_quantization_threshold,
        )
        .reorder(params.reorder, quantize=REORDER_TYPE)
        .build(docids=docids)
    )


@dataclass(frozen=True)
class Neighbor:
    id: str
    score: float


# A filter keeping at most this share of the index (or fewer than the exact
# threshold) is searched exactly over the matching rows; broader ones use
# ScaNN over-fetching within the shard, topped up exactly when short.
SELECTIVE_FILTER_FRACTION = 0.05
MAX_FILTERED_FETCH = 5000


class VectorIndex:
    """Thread-safe index of (id -> vector [dims] float32) for one collection: searches run
    in parallel under the read side of a readers-writer lock, writes under its write side."""

    def __init__(self, dims: int, exact_threshold: int, background_builds: bool = True) -> None:
        self.dims = dims
        self.default_exact_threshold = exact_threshold
        self.exact_threshold = exact_threshold
        self.overrides = NO_OVERRIDES
        self._matrix = np.zeros((INITIAL_CAPACITY, dims), dtype=np.float32)
        self._live = np.zeros(INITIAL_CAPACITY, dtype=bool)
        self._ids: list[str | None] = [None] * INITIAL_CAPACITY
        self._row_of: dict[str, int] = {}
        self._meta: list[ItemMeta | None] = [None] * INITIAL_CAPACITY
        self._rows_by_label: dict[str, set[int]] = {}
        self._rows_by_attribute: dict[tuple[str, str], set[int]] = {}
        # Filter condition -> its rows as a sorted int64 array, built on the first query
        # after a write touched it (writes drop the entry), so a query intersects arrays
        # instead of copying Python sets.
        self._filter_rows: dict[tuple[str, ...], np.ndarray] = {}
        self._free_rows: list[int] = []
        self._high_water = 0
        self._scann: scann.scann_ops_pybind.ScannSearcher | None = None
        self._scann_params = scann_params_for(1)
        # Rebuilds: a new searcher is trained beside the serving one from a copy of
        # the data; writes made meanwhile are queued and replayed into it before
        # it replaces the old one under the lock.
        self.background_builds = background_builds
        self._built_size = 0
        self._changes_since_build = 0
        self._pending: list[tuple[str, list[str], np.ndarray | None]] | None = None
        # Rows written since the serving searcher's data was copied (row -> write number).
        # They are also scored exactly and merged in, so a fresh write is always found even
        # where ScaNN's partitions or quantisation would miss it (read-your-writes).
        self._fresh = FreshRows(dims)
        self._writes = 0
        self._builder: threading.Thread | None = None
        self.rebuilds = 0
        self._lock = ReadWriteLock()

    @property
    def size(self) -> int:
        return len(self._row_of)

    @property
    def method(self) -> str:
        return "scann" if self._use_scann() else "exact"

    def _use_scann(self) -> bool:
        return self._scann is not None and self.size >= self.exact_threshold

    def check_upsert(self, ids: list[str], vectors: np.ndarray) -> np.ndarray:
        """Validates an upsert without applying it; returns vectors as float32 [n, dims]."""
        array = self._check_vectors(vectors, "vectors")
        if len(ids) != array.shape[0]:
            raise InvalidArgumentError(f"{len(ids)} ids but {array.shape[0]} vectors")
        return array

    def upsert(
        self, ids: list[str], vectors: np.ndarray, metadata: list[ItemMeta] | None = None
    ) -> None:
        """vectors: float32 [n, dims], L2-normalised; metadata: None or one per id.

        An existing id is replaced (vector and metadata).
        """
        vectors = self.check_upsert(ids, vectors)
        if metadata is not None and len(metadata) != len(ids):
            raise InvalidArgumentError(f"{len(ids)} ids but {len(metadata)} metadata entries")
        with self._lock.write():
            self._upsert_locked(ids, vectors, metadata)
            self._maybe_rebuild()

    def _upsert_locked(
        self,
        ids: list[str],
        vectors: np.ndarray,
        metadata: list[ItemMeta] | None,
        adopt: bool = False,
    ) -> None:
        """Applies a checked upsert (vectors float32 [n, dims]); the write lock is held."""
        if self._high_water == 0 and self._fill_empty(ids, vectors, metadata, adopt):
            self._changes_since_build += len(ids)
            return
        if not self._matrix.flags.writeable:
            self._grow()  # an adopted read-only snapshot array: copied on the first write
        for position, (image_id, vector) in enumerate(zip(ids, vectors, strict=True)):
            row = self._row_of.get(image_id)
            if row is None:
                row = self._take_row()
                self._row_of[image_id] = row
                self._ids[row] = image_id
                self._live[row] = True
            else:
                self._unindex_meta(row)
            self._matrix[row] = vector
            self._index_meta(row, metadata[position] if metadata is not None else ItemMeta())
            if self._scann is not None or self._pending is not None:
                self._writes += 1
                self._fresh.write(row, vector, self._writes)
        if self._scann is not None:
            self._scann.upsert(list(ids), vectors)
        if self._pending is not None:
            self._pending.append(("upsert", list(ids), vectors.copy()))
        self._changes_since_build += len(ids)

    def _fill_empty(
        self,
        ids: list[str],
        vectors: np.ndarray,
        metadata: list[ItemMeta] | None,
        adopt: bool = False,
    ) -> bool:
        """The first upsert into a never-used index (a snapshot load) without a per-row
        loop: vectors float32 [n, dims] go in as rows 0..n-1, sized to fit exactly (the next
        write grows the arrays). adopt: a C-contiguous `vectors` the caller hands over
        becomes the matrix itself, without a copy (a read-only one, such as a view of the
        downloaded snapshot, is copied into a writable matrix on the first write). False
        (nothing done) when ids repeat, which the row-by-row path resolves (the last one
        wins)."""
        row_of = dict(zip(ids, range(len(ids)), strict=True))
        if len(row_of) != len(ids):
            return False
        n = len(ids)
        self._filter_rows.clear()
        capacity = max(INITIAL_CAPACITY, n)
        adopt = adopt and n >= INITIAL_CAPACITY
        adopt = adopt and vectors.flags.c_contiguous and vectors.dtype == np.float32
        if adopt:
            self._matrix = vectors
        elif capacity > self._matrix.shape[0]:
            self._matrix = np.zeros((capacity, self.dims), dtype=np.float32)
        if capacity > self._live.shape[0]:
            self._live = np.zeros(capacity, dtype=bool)
            self._ids = [None] * capacity
            self._meta = [None] * capacity
        if not adopt:
            self._matrix[:n] = vectors
        self._live[:n] = True
        self._ids[:n] = ids
        self._row_of = row_of
        self._high_water = n
        if metadata is None:
            self._meta[:n] = [ItemMeta()] * n
            return True
        self._meta[:n] = metadata
        for row, meta in enumerate(metadata):
            if meta.label:
                self._rows_by_label.setdefault(meta.label, set()).add(row)
            for pair in meta.attributes.items():
                self._rows_by_attribute.setdefault(pair, set()).add(row)
        return True

    def delete(self, ids: list[str]) -> int:
        """Removes ids; returns how many existed."""
        with self._lock.write():
            present = [image_id for image_id in ids if image_id in self._row_of]
            for image_id in present:
                row = self._row_of.pop(image_id)
                self._unindex_meta(row)
                self._live[row] = False
                self._ids[row] = None
                self._free_rows.append(row)
                self._fresh.discard(row)
            if self._scann is not None and present:
                self._scann.delete(present)
            if self._pending is not None and present:
                self._pending.append(("delete", present, None))
            self._changes_since_build += len(present)
            return len(present)

    def export(self) -> tuple[list[str], np.ndarray, list[ItemMeta]]:
        """A consistent copy of the live entries: ids, float32 [n, dims] vectors, metadata."""
        with self._lock.read():
            live_rows = np.flatnonzero(self._live[: self._high_water])
            return (
                [self._ids[row] or "" for row in live_rows],
                self._matrix[live_rows].copy(),
                [self._meta[row] or ItemMeta() for row in live_rows],
            )

    def export_searcher(self) -> SerializedSearcher | None:
        """The serving ScaNN searcher as files, consistent with `export` at this moment
        (its docids are exactly the live ids); None while queries are exact. Serialises
        under the read side of the lock (searches go on; writes wait) and hashes after it."""
        with self._lock.read():
            if not self._use_scann():
                return None
            assert self._scann is not None
            docids = list(self._scann.docids)
            if len(docids) != self.size or set(docids) != self._row_of.keys():
                log.warning("ScaNN docids disagree with the index; snapshot without searcher")
                return None
            files = searcher_files(self._scann)
            state = (
                self._built_size,
                self._changes_since_build,
                [self._ids[row] or "" for row in self._fresh.rows()],
                asdict(self._scann_params),
            )
        built_size, changes_since_build, fresh_ids, params = state
        return SerializedSearcher(
            files=files,
            docids=docids,
            built_size=built_size,
            changes_since_build=changes_since_build,
            fresh_ids=fresh_ids,
            sha256=digests(files),
            params=params,
        )

    def load(
        self,
        ids: list[str],
        vectors: np.ndarray,
        metadata: list[ItemMeta] | None,
        serialized: SerializedSearcher | None = None,
        adopt: bool = False,
    ) -> bool:
        """Fills an empty index from a snapshot: vectors float32 [n, dims]. With a serialized
        searcher that fits, serves it at once instead of training one; returns whether it
        did. Any problem with it is logged and the index builds one as after `upsert`.
        adopt: the caller hands `vectors` over (it must not use them again); a float32
        C-contiguous array then becomes the index's matrix without a copy, so a recovery
        holds one copy of the vectors (a read-only one is copied on the first write)."""
        vectors = self.check_upsert(ids, vectors)
        if metadata is not None and len(metadata) != len(ids):
            raise InvalidArgumentError(f"{len(ids)} ids but {len(metadata)} metadata entries")
        with self._lock.write():
            empty = self._high_water == 0 and self._scann is None and self._pending is None
            self._upsert_locked(ids, vectors, metadata, adopt=adopt and empty)
            installed = False
            if serialized is not None and empty:
                installed = self._install_serialized(serialized)
            self._maybe_rebuild()
            return installed

    def _install_serialized(self, serialized: SerializedSearcher) -> bool:
        """Lock held, index just loaded: makes the serialized searcher the serving one."""
        if self.size < max(self.exact_threshold, MIN_SCANN_VECTORS):
            return False
        if len(serialized.docids) != self.size or set(serialized.docids) != self._row_of.keys():
            log.warning("serialized ScaNN searcher does not match the snapshot; rebuilding")
            return False
        try:
            params = ScannParams(**serialized.params)
            searcher = load_searcher(serialized)
            self._check_loaded(searcher, params)
        except Exception:
            log.warning("could not load the serialized ScaNN searcher; rebuilding", exc_info=True)
            return False
        self._scann = searcher
        self._scann_params = params
        self._built_size = serialized.built_size
        self._changes_since_build = serialized.changes_since_build
        self._fresh.clear()
        for image_id in serialized.fresh_ids:
            row = self._row_of.get(image_id)
            if row is not None:
                self._writes += 1
                self._fresh.write(row, self._matrix[row], self._writes)
        log.info("scann index loaded", extra={"fields": {"vectors": self.size}})
        return True

    def _check_loaded(
        self, searcher: scann.scann_ops_pybind.ScannSearcher, params: ScannParams
    ) -> None:
        """Raises unless a few stored vectors find themselves with their exact scores."""
        if searcher.size() != self.size:
            raise ValueError(f"searcher holds {searcher.size()} vectors, index {self.size}")
        rows = np.flatnonzero(self._live[: self._high_water])
        rows = rows[np.linspace(0, len(rows) - 1, num=min(8, len(rows)), dtype=np.int64)]
        queries = self._matrix[rows]
        _, scores = searcher.search_batched(
            queries, final_num_neighbors=1, leaves_to_search=params.num_leaves
        )
        expected = np.einsum("ij,ij->i", queries, queries)
        # int8 re-ordering scores are within ~2e-3 of the exact ones; a wrong searcher's
        # best match for a stored vector scores far lower.
        if not np.allclose(np.asarray(scores)[:, 0], expected, atol=2e-2):
            raise ValueError("serialized searcher does not find stored vectors")

    def scan(
        self, start_row: int, limit: int, keep: Callable[[str], bool] | None = None
    ) -> tuple[list[str], np.ndarray, list[ItemMeta], int, int]:
        """Up to `limit` live entries from row `start_row` on whose id passes `keep`:
        ids, float32 [n, dims] vectors, metadata, the row to resume from (-1 = end) and
        the live entries examined. Every entry live during the whole scan is returned once.
        """
        with self._lock.read():
            live_rows = np.flatnonzero(self._live[start_row : self._high_water]) + start_row
            taken: list[int] = []
            examined, next_row = 0, -1
            for row in live_rows.tolist():
                # Bounded work per call: the lock's read side holds off writes.
                if len(taken) == limit or examined == SCAN_EXAMINE_FACTOR * limit:
                    next_row = row
                    break
                examined += 1
                if keep is None or keep(self._ids[row] or ""):
                    taken.append(row)
            return (
                [self._ids[row] or "" for row in taken],
                self._matrix[taken].copy(),
                [self._meta[row] or ItemMeta() for row in taken],
                next_row,
                examined,
            )

    def contains(self, image_id: str) -> bool:
        with self._lock.read():
            return image_id in self._row_of

    def vectors_of(self, ids: list[str]) -> list[np.ndarray | None]:
        """The stored vector (float32 [dims], a copy) of each id; None for an id not held."""
        with self._lock.read():
            rows = [self._row_of.get(image_id) for image_id in ids]
            return [None if row is None else self._matrix[row].copy() for row in rows]

    def search(
        self, queries: np.ndarray, k: int, search_filter: SearchFilter = NO_FILTER
    ) -> tuple[list[list[Neighbor]], str]:
        """queries: float32 [q, dims]; returns q lists of up to k neighbours (best first)
        and the method used ("exact", "scann", "exact-filtered", "scann-filtered")."""
        queries = self._check_vectors(queries, "queries")
        if not 1 <= k <= MAX_K:
            raise InvalidArgumentError(f"k must be in 1..{MAX_K}, got {k}")
        with self._lock.read():
            if self.size == 0:
                return [[] for _ in range(queries.shape[0])], "exact"
            if not search_filter.empty:
                return self._search_filtered(queries, k, search_filter)
            if self._use_scann():
                k = min(k, self.size)
                return self._with_fresh(queries, k, self._search_scann(queries, k)), "scann"
            return self._search_exact_all(queries, min(k, self.size)), "exact"

    def _search_filtered(
        self, queries: np.ndarray, k: int, search_filter: SearchFilter
    ) -> tuple[list[list[Neighbor]], str]:
        rows = self._matching_rows(search_filter)
        if len(rows) == 0:
            return [[] for _ in range(queries.shape[0])], "exact-filtered"
        k = min(k, len(rows))
        selective = len(rows) <= max(self.exact_threshold, SELECTIVE_FILTER_FRACTION * self.size)
        if selective or not self._use_scann():
            return self._search_exact(queries, k, rows), "exact-filtered"
        allowed = np.zeros(self._high_water, dtype=bool)
        allowed[rows] = True
        fetch = min(self.size, MAX_FILTERED_FETCH, int(np.ceil(2 * k * self.size / len(rows))))
        results = []
        for query_index, found in enumerate(self._search_scann(queries, fetch)):
            kept = [n for n in found if allowed[self._row_of[n.id]]][:k]
            if len(kept) < k:
                kept = self._search_exact(queries[query_index : query_index + 1], k, rows)[0]
            results.append(kept)
        return self._with_fresh(queries, k, results, allowed), "scann-filtered"

    def _with_fresh(
        self,
        queries: np.ndarray,
        k: int,
        results: list[list[Neighbor]],
        allowed: np.ndarray | None = None,
    ) -> list[list[Neighbor]]:
        """Merges exact scores of rows written since the last build into ANN results;
        allowed: None or bool [high water] (a filter's rows)."""
        if not len(self._fresh):
            return results
        scores, rows = self._fresh.scores(queries, allowed)
        if rows.size == 0:
            return results
        exact = self._top_k(scores, min(k, rows.size), rows)
        merged = []
        for approximate, fresh_hits in zip(results, exact, strict=True):
            best: dict[str, float] = {}
            for neighbor in (*approximate, *fresh_hits):
                best[neighbor.id] = max(best.get(neighbor.id, -np.inf), neighbor.score)
            ranked = sorted(best.items(), key=lambda item: (-item[1], item[0]))[:k]
            merged.append([Neighbor(image_id, score) for image_id, score in ranked])
        return merged

    def _matching_rows(self, search_filter: SearchFilter) -> np.ndarray:
        """Sorted int64 rows whose metadata satisfies every condition of the filter."""
        arrays = []
        if search_filter.label:
            arrays.append(self._condition_rows(("label", search_filter.label)))
        for name, value in search_filter.attributes.items():
            arrays.append(self._condition_rows(("attr", name, value)))
        arrays.sort(key=len)
        matching = arrays[0]
        for other in arrays[1:]:
            matching = np.intersect1d(matching, other, assume_unique=True)
        return matching

    def _condition_rows(self, key: tuple[str, ...]) -> np.ndarray:
        """One filter condition's rows, sorted int64 [m], cached until a write touches it.
        Called under the read side: concurrent readers may both fill the same entry with
        equal arrays (a dict store is atomic), and no writer runs meanwhile."""
        cached = self._filter_rows.get(key)
        if cached is not None:
            return cached
        if key[0] == "label":
            rows = self._rows_by_label.get(key[1], set())
        else:
            rows = self._rows_by_attribute.get((key[1], key[2]), set())
        array = np.sort(np.fromiter(rows, dtype=np.int64, count=len(rows)))
        self._filter_rows[key] = array
        return array

    def _search_exact_all(self, queries: np.ndarray, k: int) -> list[list[Neighbor]]:
        """Exact top-k over every live row, on a view of the matrix (no copy)."""
        used = self._high_water
        with _BLAS_GATE:
            scores = queries @ self._matrix[:used].T
        scores[:, ~self._live[:used]] = -np.inf
        return self._top_k(scores, k, np.arange(used))

    def _search_exact(self, queries: np.ndarray, k: int, rows: np.ndarray) -> list[list[Neighbor]]:
        """Exact top-k over the given live rows (int64 [m]; a filter's few matches)."""
        with _BLAS_GATE:
            scores = queries @ self._matrix[rows].T
        return self._top_k(scores, min(k, len(rows)), rows)

    def _top_k(self, scores: np.ndarray, k: int, rows: np.ndarray) -> list[list[Neighbor]]:
        """scores: float32 [q, m] for `rows` (int64 [m]) -> q lists of the best k."""
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        results = []
        for query_index, candidates in enumerate(top):
            ordered = candidates[np.argsort(-scores[query_index, candidates], kind="stable")]
            results.append(
                [Neighbor(self._ids[rows[c]] or "", float(scores[query_index, c])) for c in ordered]
            )
        return results

    def _index_meta(self, row: int, meta: ItemMeta) -> None:
        self._meta[row] = meta
        if meta.label:
            self._rows_by_label.setdefault(meta.label, set()).add(row)
            self._filter_rows.pop(("label", meta.label), None)
        for pair in meta.attributes.items():
            self._rows_by_attribute.setdefault(pair, set()).add(row)
            self._filter_rows.pop(("attr", *pair), None)

    def _unindex_meta(self, row: int) -> None:
        meta = self._meta[row]
        if meta is None:
            return
        if meta.label:
            self._rows_by_label[meta.label].discard(row)
            self._filter_rows.pop(("label", meta.label), None)
        for pair in meta.attributes.items():
            self._rows_by_attribute[pair].discard(row)
            self._filter_rows.pop(("attr", *pair), None)
        self._meta[row] = None

    def _search_scann(self, queries: np.ndarray, k: int) -> list[list[Neighbor]]:
        assert self._scann is not None
        params = self._scann_params
        # A k near or above the re-order depth needs deeper re-ordering and more leaves,
        # or recall@k collapses (0.2 at k=1000 with the defaults).
        widen = max(1, math.ceil(2 * k / params.reorder))
        pre_reorder = max(params.reorder, 2 * k)
        ids, _ = self._scann.search_batched(
            queries,
            # int8 scores can swap near-ties: a few more candidates than k are re-scored.
            final_num_neighbors=min(max(2 * k, k + RESCORE_EXTRA), pre_reorder, self.size),
            pre_reorder_num_neighbors=pre_reorder,
            leaves_to_search=min(params.num_leaves, params.leaves_to_search * widen),
        )
        # Re-scores the (int8-re-ordered) candidates exactly from the matrix, keeps the k best.
        results = []
        for query, row_ids in zip(queries, ids, strict=True):
            found = [str(i) for i in row_ids]
            rows = np.fromiter((self._row_of[i] for i in found), dtype=np.int64, count=len(found))
            exact = self._matrix[rows] @ query
            order = np.argsort(-exact, kind="stable")[:k]
            results.append([Neighbor(found[c], float(exact[c])) for c in order])
        return results

    def set_overrides(self, overrides: IndexOverrides) -> None:
        """Applies a collection's settings: the threshold at once, ScaNN ones at the next build."""
        with self._lock.write():
            if overrides == self.overrides:
                return
            self.overrides = overrides
            self.exact_threshold = overrides.exact_threshold or self.default_exact_threshold
            if self._scann is not None:
                self._changes_since_build = self.size  # retrain with the new parameters
            self._maybe_rebuild()

    @property
    def rebuilding(self) -> bool:
        return self._pending is not None

    def wait_for_build(self, timeout: float | None = None) -> None:
        """Blocks until a running (re)build has swapped in (tests, benchmarks)."""
        builder = self._builder
        if builder is not None:
            builder.join(timeout)

    def _needs_build(self) -> bool:
        if self.size < max(self.exact_threshold, MIN_SCANN_VECTORS):
            return False
        if self._scann is None:
            return True
        # Partitions trained on the old data erode recall as vectors are added, and the
        # fresh rows scored exactly on every query must stay few.
        return (
            self._changes_since_build >= REBUILD_CHANGE_FRACTION * max(self._built_size, 1)
            or len(self._fresh) > MAX_FRESH_ROWS
        )

    def _maybe_rebuild(self) -> None:
        """Called with the lock held: starts a (re)build when one is due."""
        if self._pending is not None or not self._needs_build():
            return
        # Only flat copies of the row state here: the vectors are gathered off the lock, in
        # the build thread. Writes from now on are queued and replayed into the new searcher,
        # which also repairs any row the gather read while it was rewritten or reused.
        source = (
            self._matrix,
            self._live[: self._high_water].copy(),
            self._ids[: self._high_water],
        )
        self._pending = []
        self._changes_since_build = 0
        if self.background_builds:
            self._builder = threading.Thread(
                target=self._background_build,
                args=(source, self.overrides, self._writes, self._scann is not None),
                name="scann-build",
                daemon=True,
            )
            self._builder.start()
        else:
            self._finish_build(*_gather(source), self.overrides, self._writes)

    def _background_build(
        self,
        source: tuple[np.ndarray, np.ndarray, list[str | None]],
        overrides: IndexOverrides,
        writes_at_copy: int,
        beside_serving: bool,
    ) -> None:
        """A rebuild beside a serving searcher yields CPU to queries; a first build (every
        query is exact until it lands) takes all cores."""
        if not beside_serving:
            self._finish_build(*_gather(source), overrides, writes_at_copy)
            return
        _lower_thread_priority(BUILD_NICENESS)
        self._finish_build(*_gather(source), overrides, writes_at_copy, BUILD_THREADS)

    def _finish_build(
        self,
        data: np.ndarray,
        docids: list[str],
        overrides: IndexOverrides,
        writes_at_copy: int,
        training_threads: int = 0,
    ) -> None:
        """Trains a searcher on the copied data, replays later writes, swaps it in."""
        started = time.perf_counter()
        log.info("scann build started", extra={"fields": {"vectors": len(docids)}})
        try:
            searcher = build_searcher(data, docids, overrides, training_threads)
        except Exception:
            log.exception("ScaNN build failed; serving continues with the previous index")
            with self._lock.write():
                self._pending = None
            return
        with self._lock.write():
            pending = self._pending or []
            for op, ids, vectors in pending:
                if op == "upsert":
                    searcher.upsert(ids, vectors)
                else:
                    searcher.delete(ids)
            self._scann = searcher
            self._scann_params = scann_params_for(len(docids), overrides)
            self._built_size = len(docids)
            self._pending = None
            self._fresh.keep_after(writes_at_copy)
            self.rebuilds += 1
            log.info(
                "scann index swapped in",
                extra={
                    "fields": {
                        "vectors": len(docids),
                        "replayed_ops": len(pending),
                        "build_s": round(time.perf_counter() - started, 3),
                    }
                },
            )
            # Writes during this build may already call for the next one.
            self._maybe_rebuild()

    def _take_row(self) -> int:
        if self._free_rows:
            return self._free_rows.pop()
        if self._high_water == self._matrix.shape[0]:
            self._grow()
        row = self._high_water
        self._high_water += 1
        return row

    def _grow(self) -> None:
        capacity = int(self._matrix.shape[0] * GROWTH_FACTOR) + 1
        matrix = np.zeros((capacity, self.dims), dtype=np.float32)
        matrix[: self._high_water] = self._matrix[: self._high_water]
        live = np.zeros(capacity, dtype=bool)
        live[: self._high_water] = self._live[: self._high_water]
        self._matrix, self._live = matrix, live
        self._ids.extend([None] * (capacity - len(self._ids)))
        self._meta.extend([None] * (capacity - len(self._meta)))

    def _check_vectors(self, vectors: np.ndarray, what: str) -> np.ndarray:
        array = np.asarray(vectors, dtype=np.float32)
        if array.ndim != 2 or array.shape[1] != self.dims:
            raise InvalidArgumentError(
                f"{what} must have shape [n, {self.dims}], got {list(array.shape)}"
            )
        if not np.isfinite(array).all():
            raise InvalidArgumentError(f"{what} contain NaN or infinite values")
        return np.ascontiguousarray(array)


def _gather(
    source: tuple[np.ndarray, np.ndarray, list[str | None]],
) -> tuple[np.ndarray, list[str]]:
    """(matrix float32 [capacity, d], live bool [m], ids [m]) -> the live rows as float32
    [n, d] and their ids. When every row is live the rows are a view of the matrix, not a
    copy (ScaNN copies what it needs; a row rewritten meanwhile is repaired by the replay
    of the queued writes)."""
    matrix, live, ids = source
    if live.all():
        return matrix[: len(live)], [image_id or "" for image_id in ids]
    rows = np.flatnonzero(live)
    return np.ascontiguousarray(matrix[rows]), [ids[row] or "" for row in rows]


def _lower_thread_priority(niceness: int) -> None:
    """Raises the calling thread's niceness by `niceness` (no-op where unsupported)."""
    if niceness <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(
            os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + niceness)
        )
    except OSError:
        log.warning("could not lower the build thread's priority", exc_info=True)
