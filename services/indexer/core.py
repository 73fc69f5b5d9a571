"""The shard: one VectorIndex per collection, made durable by a WAL and snapshots. No grpc."""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from services.common.errors import (
    AbortedError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from services.common.index_types import NO_FILTER, IndexOverrides, ItemMeta, SearchFilter
from services.common.sharding import shard_of
from services.indexer.durability import (
    OP_CLEAR_TOMBSTONES,
    OP_DELETE,
    OP_DELETE_TOMBSTONE,
    OP_UPSERT,
    Snapshot,
    SnapshotStore,
    WriteAheadLog,
)
from services.indexer.searcher_files import SerializedSearcher
from services.indexer.vector_index import Neighbor, VectorIndex

COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
START_SEQ = "0-0"
log = logging.getLogger(__name__)
T = TypeVar("T")
# Dropped reshard runs a shard remembers per collection (a few per job at most).
MAX_ENDED_RUNS = 64


# The shards also hold re-embedded generations of a collection as "<name>@<generation>",
# and database-side augmented copies of one as "<name>[@<generation>]~<pass>".
INDEX_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}(@[0-9]{1,9})?(~[0-9]{1,9})?$")


def check_index_name(name: str) -> None:
    if not INDEX_NAME.match(name):
        raise InvalidArgumentError(
            f"index name {name!r} must be a collection name, optionally followed by "
            "@<generation> and then ~<augmentation pass>"
        )


def check_collection_name(name: str) -> None:
    if not COLLECTION_NAME.match(name):
        raise InvalidArgumentError(
            f"collection name {name!r} must be 1-64 characters of letters, digits, '_', '.', '-'"
            " starting with a letter or digit"
        )


@dataclass(frozen=True)
class CollectionStats:
    collection: str
    size: int
    dims: int
    method: str
    applied_seq: str
    snapshot_seq: str
    # Log entries the next recovery would replay (written since the latest snapshot).
    wal_lag_entries: int
    snapshot_at: float


@dataclass(frozen=True)
class FetchPage:
    ids: list[str]
    vectors: np.ndarray  # float32 [n, dims]; [0, 0] when ids_only or empty
    metadata: list[ItemMeta]
    next_page_token: str  # "" = no more entries
    scanned: int  # entries examined in this scan so far
    size: int


@dataclass(frozen=True)
class RecoveryReport:
    collections: int
    from_snapshots: int
    replayed_entries: int


class _Collection:
    def __init__(self, index: VectorIndex) -> None:
        self.index = index
        # Serialises log append + apply, so the log order is the apply order.
        self.write_lock = threading.Lock()
        self.applied_seq = START_SEQ
        self.snapshot_seq = START_SEQ
        self.wal_lag_entries = 0
        self.snapshot_at = 0.0


class Shard:
    def __init__(
        self,
        shard_id: int,
        exact_threshold: int,
        wal: WriteAheadLog | None = None,
        snapshots: SnapshotStore | None = None,
    ) -> None:
        self.shard_id = shard_id
        self.exact_threshold = exact_threshold
        self._wal = wal
        self._snapshots = snapshots
        # False until recover() ran: a durable shard must not answer from a partial index.
        self.loaded = wal is None
        self._collections: dict[str, _Collection] = {}
        self._lock = threading.Lock()
        # Ids deleted during a reshard, per collection: an only-if-absent upsert (a reshard
        # copy) skips them. Guarded by the collection's write_lock, or by _lock while the
        # collection has no index on this shard yet.
        self._tombstones: dict[str, set[str]] = {}
        # The reshard run whose copies each collection accepts (set_copy_fence), and the
        # latest runs the fence dropped, never admitted again. In memory only: a restarted
        # shard accepts no copies until a run names itself again. Locked like _tombstones.
        self._copy_fences: dict[str, str] = {}
        self._ended_runs: dict[str, deque[str]] = {}
        # Fetch page tokens name this incarnation: rows are renumbered by a restart.
        self.instance = uuid.uuid4().hex[:12]

    @property
    def durable(self) -> bool:
        return self._wal is not None and self._snapshots is not None

    def upsert(
        self,
        collection: str,
        ids: list[str],
        vectors: np.ndarray,
        metadata: list[ItemMeta] | None = None,
        overrides: IndexOverrides | None = None,
    ) -> int:
        """vectors: float32 [n, d]; metadata: None or one per id; overrides: the
        collection's index settings (None keeps the current ones). Logged, then applied;
        forgets the ids' tombstones.

        Returns the collection's size.
        """
        return self._write(collection, ids, vectors, metadata, overrides, fence="")[1]

    def upsert_if_absent(
        self,
        collection: str,
        ids: list[str],
        vectors: np.ndarray,
        metadata: list[ItemMeta] | None = None,
        overrides: IndexOverrides | None = None,
        *,
        fence: str,
    ) -> tuple[int, int]:
        """A reshard copy from run `fence`: writes only the ids this shard neither holds nor
        has a tombstone for, deciding and writing under the collection's write lock (so no
        write or delete of the same id interleaves). Returns (written, size afterwards).

        Raises AbortedError unless the collection's copy fence names `fence`.
        """
        if not fence:
            raise InvalidArgumentError("a reshard copy (only_if_absent) needs its run's id")
        self._check_fence(collection, fence)  # before creating the collection here
        return self._write(collection, ids, vectors, metadata, overrides, fence=fence)

    def _write(
        self,
        collection: str,
        ids: list[str],
        vectors: np.ndarray,
        metadata: list[ItemMeta] | None,
        overrides: IndexOverrides | None,
        fence: str,
    ) -> tuple[int, int]:
        """fence: "" for an ordinary upsert, else a reshard copy from that run."""
        check_index_name(collection)
        if len(set(ids)) != len(ids):
            raise InvalidArgumentError("duplicate ids in one upsert")
        if vectors.ndim != 2 or vectors.shape[0] == 0:
            raise InvalidArgumentError("upsert needs at least one vector")
        entry = self._collection(collection, create_dims=vectors.shape[1])
        checked = entry.index.check_upsert(ids, vectors)
        if metadata is not None and len(metadata) != len(ids):
            raise InvalidArgumentError(f"{len(ids)} ids but {len(metadata)} metadata entries")
        with entry.write_lock:
            tombstones = self._tombstones.get(collection, set())
            if fence:
                self._check_fence(collection, fence)
                keep = [
                    p
                    for p, image_id in enumerate(ids)
                    if image_id not in tombstones and not entry.index.contains(image_id)
                ]
                if not keep:
                    return 0, entry.index.size
                ids = [ids[p] for p in keep]
                checked = checked[keep]
                metadata = None if metadata is None else [metadata[p] for p in keep]
            if self._wal is not None:
                entry.applied_seq = self._wal.append(
                    collection, OP_UPSERT, ids, checked, metadata, overrides
                )
                entry.wal_lag_entries += 1
            tombstones.difference_update(ids)
            if overrides is not None:
                entry.index.set_overrides(overrides)
            entry.index.upsert(ids, checked, metadata)
        return len(ids), entry.index.size

    def delete(self, collection: str, ids: list[str], tombstone: bool = False) -> tuple[int, int]:
        """Returns (deleted, size afterwards); an unknown collection deletes nothing.

        tombstone: also remember the ids as deleted (a delete during a reshard), even on a
        shard that holds no entry of the collection yet, so a later reshard copy of an
        older version of them is skipped.
        """
        check_index_name(collection)
        op = OP_DELETE_TOMBSTONE if tombstone else OP_DELETE
        with self._lock:
            entry = self._collections.get(collection)
            if entry is None:
                if tombstone:
                    if self._wal is not None:
                        self._wal.append(collection, op, ids, None, None, None)
                    self._tombstones.setdefault(collection, set()).update(ids)
                return 0, 0
        with entry.write_lock:
            if self._wal is not None:
                entry.applied_seq = self._wal.append(collection, op, ids, None, None, None)
                entry.wal_lag_entries += 1
            if tombstone:
                self._tombstones.setdefault(collection, set()).update(ids)
            deleted = entry.index.delete(ids)
        return deleted, entry.index.size

    def _locked(self, collection: str, action: Callable[[_Collection | None], T]) -> T:
        """Runs `action` under the collection's write lock, or under the shard's lock (with
        None) while the collection has no index here yet."""
        with self._lock:
            entry = self._collections.get(collection)
            if entry is None:
                return action(None)
        with entry.write_lock:
            return action(entry)

    def clear_tombstones(self, collection: str) -> int:
        """Forgets a collection's tombstones (a reshard finished); returns how many."""
        check_index_name(collection)
        return self._locked(collection, lambda e: self._clear_tombstones_locked(collection, e))

    def _clear_tombstones_locked(self, collection: str, entry: _Collection | None) -> int:
        cleared = len(self._tombstones.get(collection, ()))
        if cleared:
            if self._wal is not None:
                seq = self._wal.append(collection, OP_CLEAR_TOMBSTONES, [], None, None, None)
                if entry is not None:
                    entry.applied_seq = seq
                    entry.wal_lag_entries += 1
            self._tombstones.pop(collection, None)
        return cleared

    def set_copy_fence(self, collection: str, run_id: str) -> str:
        """Accepts reshard copies of `collection` from run `run_id` only ("" = from none);
        returns the run the fence named before. Waits for copies in flight, so none from
        another run lands after it returns. Raises AbortedError for a run the fence has
        dropped before: it stalled while another replica took the job over."""
        check_index_name(collection)
        return self._locked(collection, lambda _: self._swap_fence(collection, run_id))

    def _swap_fence(self, collection: str, run_id: str) -> str:
        ended = self._ended_runs.setdefault(collection, deque(maxlen=MAX_ENDED_RUNS))
        if run_id in ended:
            raise AbortedError(
                f"shard {self.shard_id}: reshard run {run_id!r} of {collection!r} has ended "
                "here (another gateway replica took the job over, or it flipped)"
            )
        previous = self._copy_fences.pop(collection, "")
        if previous and previous != run_id:
            ended.append(previous)
        if run_id:
            self._copy_fences[collection] = run_id
        return previous

    def _check_fence(self, collection: str, fence: str) -> None:
        accepted = self._copy_fences.get(collection, "")
        if accepted != fence:
            raise AbortedError(
                f"shard {self.shard_id} refused a reshard copy into {collection!r} from run "
                f"{fence!r}: it accepts copies from "
                f"{'run ' + repr(accepted) if accepted else 'no run'} (the job was taken "
                "over, flipped or the shard restarted; `visearch reshard` resumes it)"
            )

    def tombstones(self, collection: str) -> int:
        return len(self._tombstones.get(collection, ()))

    def fetch(
        self,
        collection: str,
        page_token: str = "",
        limit: int = 500,
        moved_under_shards: int = 0,
        ids_only: bool = False,
    ) -> FetchPage:
        """One page of a scan over the collection's entries, in row order.

        moved_under_shards > 0 keeps only the ids whose jump-hash shard under that many
        shards is not this shard. Every entry live for the whole scan is returned exactly
        once; entries written meanwhile may or may not be (a reshard routes those writes
        itself). A token from another incarnation of this shard is refused.
        """
        check_index_name(collection)
        if not 1 <= limit <= 5000:
            raise InvalidArgumentError(f"fetch limit must be in 1..5000, got {limit}")
        start_row, scanned = 0, 0
        if page_token:
            instance, _, rest = page_token.partition(":")
            row_text, _, scanned_text = rest.partition(":")
            if instance != self.instance or not row_text.isdigit():
                raise FailedPreconditionError(
                    f"page token {page_token!r} is not from this run of shard {self.shard_id} "
                    "(it restarted): start the scan again from the beginning"
                )
            start_row, scanned = int(row_text), int(scanned_text or 0)
        with self._lock:
            entry = self._collections.get(collection)
        if entry is None:
            return FetchPage([], np.zeros((0, 0), np.float32), [], "", 0, 0)
        keep = None
        if moved_under_shards > 0:
            shard_id = self.shard_id
            keep = lambda image_id: shard_of(image_id, moved_under_shards) != shard_id  # noqa: E731
        ids, vectors, metadata, next_row, examined = entry.index.scan(start_row, limit, keep)
        scanned += examined
        token = "" if next_row < 0 else f"{self.instance}:{next_row}:{scanned}"
        if ids_only:
            vectors, metadata = np.zeros((0, 0), np.float32), []
        return FetchPage(ids, vectors, metadata, token, scanned, entry.index.size)

    def search(
        self,
        collection: str,
        queries: np.ndarray,
        k: int,
        search_filter: SearchFilter = NO_FILTER,
    ) -> tuple[list[list[Neighbor]], str]:
        """queries: float32 [q, d]. A collection this shard never saw is empty."""
        check_index_name(collection)
        with self._lock:
            entry = self._collections.get(collection)
        if entry is None:
            return [[] for _ in range(len(queries))], "exact"
        return entry.index.search(queries, k, search_filter)

    def vectors(self, collection: str, ids: list[str]) -> list[np.ndarray | None]:
        """The stored vector (float32 [dims]) of each id, None where the shard holds none."""
        check_index_name(collection)
        with self._lock:
            entry = self._collections.get(collection)
        if entry is None:
            return [None] * len(ids)
        return entry.index.vectors_of(ids)

    def stats(self, collection: str = "") -> list[CollectionStats]:
        with self._lock:
            items = sorted(self._collections.items())
        if collection:
            items = [(name, entry) for name, entry in items if name == collection]
            if not items:
                raise NotFoundError(f"shard {self.shard_id} holds no collection {collection!r}")
        return [
            CollectionStats(
                collection=name,
                size=e.index.size,
                dims=e.index.dims,
                method=e.index.method,
                applied_seq=e.applied_seq,
                snapshot_seq=e.snapshot_seq,
                wal_lag_entries=e.wal_lag_entries,
                snapshot_at=e.snapshot_at,
            )
            for name, e in items
        ]

    # Durability ----------------------------------------------------------

    def recover(self) -> RecoveryReport:
        """Loads each logged collection's latest snapshot, then replays the log after it."""
        if self._wal is None:
            self.loaded = True
            return RecoveryReport(0, 0, 0)
        names = self._wal.collections()
        from_snapshots = replayed = 0
        for name in names:
            snapshot = self._snapshots.latest(name) if self._snapshots is not None else None
            after = START_SEQ
            if snapshot is not None:
                after = snapshot.seq
                from_snapshots += 1
            if snapshot is not None and snapshot.ids:
                entry = self._collection(name, create_dims=snapshot.vectors.shape[1])
                entry.index.set_overrides(snapshot.overrides)
                # The snapshot's vectors become the index's matrix (no second copy).
                entry.index.load(
                    snapshot.ids,
                    snapshot.vectors,
                    snapshot.metadata,
                    snapshot.searcher,
                    adopt=True,
                )
                entry.applied_seq = entry.snapshot_seq = snapshot.seq
            if snapshot is not None and snapshot.tombstones:
                self._tombstones[name] = set(snapshot.tombstones)
            for wal_entry in self._wal.read_after(name, after):
                replayed += 1
                tombstones = self._tombstones.setdefault(name, set())
                if wal_entry.op == OP_UPSERT and wal_entry.vectors is not None:
                    entry = self._collection(name, create_dims=wal_entry.vectors.shape[1])
                    if wal_entry.overrides is not None:
                        entry.index.set_overrides(wal_entry.overrides)
                    tombstones.difference_update(wal_entry.ids)
                    entry.index.upsert(wal_entry.ids, wal_entry.vectors, wal_entry.metadata)
                else:
                    if wal_entry.op == OP_DELETE_TOMBSTONE:
                        tombstones.update(wal_entry.ids)
                    elif wal_entry.op == OP_CLEAR_TOMBSTONES:
                        tombstones.clear()
                    with self._lock:
                        existing = self._collections.get(name)
                    if existing is None:
                        continue
                    entry = existing
                    entry.index.delete(wal_entry.ids)
                entry.applied_seq = wal_entry.seq
                entry.wal_lag_entries += 1
        report = RecoveryReport(len(names), from_snapshots, replayed)
        self.loaded = True
        log.info("recovered", extra={"fields": report.__dict__})
        return report

    def snapshot(self, collection: str) -> str | None:
        """Snapshots one collection and trims its log behind it; returns the covered seq."""
        if self._wal is None or self._snapshots is None:
            return None
        with self._lock:
            entry = self._collections.get(collection)
        if entry is None:
            raise NotFoundError(f"shard {self.shard_id} holds no collection {collection!r}")
        with entry.write_lock:
            seq = entry.applied_seq
            lag = entry.wal_lag_entries
            ids, vectors, metadata = entry.index.export()
            unchanged = seq == entry.snapshot_seq
            searcher = None if unchanged else self._export_searcher(collection, entry.index)
            overrides = entry.index.overrides
            tombstones = tuple(self._tombstones.get(collection, ()))
        if unchanged:
            return seq
        self._snapshots.save(
            collection, Snapshot(seq, ids, vectors, metadata, overrides, tombstones, searcher)
        )
        with entry.write_lock:
            entry.snapshot_seq = seq
            entry.snapshot_at = time.time()
            entry.wal_lag_entries -= lag
        self._wal.trim_before(collection, seq)
        return seq

    @staticmethod
    def _export_searcher(collection: str, index: VectorIndex) -> SerializedSearcher | None:
        """The index's ScaNN searcher for a snapshot; a failure only costs a rebuild later."""
        try:
            return index.export_searcher()
        except Exception:
            log.warning(
                "could not serialize the ScaNN searcher; snapshot without it",
                extra={"fields": {"collection": collection}},
                exc_info=True,
            )
            return None

    def snapshot_all(self) -> dict[str, str | None]:
        with self._lock:
            names = sorted(self._collections)
        return {name: self.snapshot(name) for name in names}

    def drop(self, collection: str) -> int:
        """Forgets a collection on this shard, durably: its index, its log (so a restart does
        not replay it) and its snapshots. Returns how many vectors it held (0 if unknown).

        Callers stop writing to it first (a re-embed drops the old generation only after
        the switch plus a grace period); a write after the drop would start it afresh.
        """
        check_index_name(collection)
        with self._lock:
            entry = self._collections.pop(collection, None)
            self._tombstones.pop(collection, None)
            self._copy_fences.pop(collection, None)
            self._ended_runs.pop(collection, None)
        size = 0
        if entry is not None:
            with entry.write_lock:  # waits for a write in progress to be logged first
                size = entry.index.size
                if self._wal is not None:
                    self._wal.drop(collection)
        elif self._wal is not None:
            self._wal.drop(collection)
        if self._snapshots is not None:
            self._snapshots.drop(collection)
        log.info("collection dropped", extra={"fields": {"collection": collection, "size": size}})
        return size

    def _collection(self, collection: str, create_dims: int) -> _Collection:
        with self._lock:
            entry = self._collections.get(collection)
            if entry is None:
                if create_dims <= 0:
                    raise InvalidArgumentError(f"collection {collection!r} has no vectors yet")
                entry = _Collection(VectorIndex(create_dims, self.exact_threshold))
                self._collections[collection] = entry
            return entry
