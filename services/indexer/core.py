"""The shard: one VectorIndex per collection, made durable by a WAL and snapshots. No grpc."""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass

import numpy as np

from services.common.errors import InvalidArgumentError, NotFoundError
from services.common.index_types import NO_FILTER, IndexOverrides, ItemMeta, SearchFilter
from services.indexer.durability import (
    OP_DELETE,
    OP_UPSERT,
    Snapshot,
    SnapshotStore,
    WriteAheadLog,
)
from services.indexer.vector_index import Neighbor, VectorIndex

COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
START_SEQ = "0-0"
log = logging.getLogger(__name__)


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
        self._collections: dict[str, _Collection] = {}
        self._lock = threading.Lock()

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
        collection's index settings (None keeps the current ones). Logged, then applied.

        Returns the collection's size.
        """
        check_collection_name(collection)
        if len(set(ids)) != len(ids):
            raise InvalidArgumentError("duplicate ids in one upsert")
        if vectors.ndim != 2 or vectors.shape[0] == 0:
            raise InvalidArgumentError("upsert needs at least one vector")
        entry = self._collection(collection, create_dims=vectors.shape[1])
        checked = entry.index.check_upsert(ids, vectors)
        if metadata is not None and len(metadata) != len(ids):
            raise InvalidArgumentError(f"{len(ids)} ids but {len(metadata)} metadata entries")
        with entry.write_lock:
            if self._wal is not None:
                entry.applied_seq = self._wal.append(
                    collection, OP_UPSERT, ids, checked, metadata, overrides
                )
                entry.wal_lag_entries += 1
            if overrides is not None:
                entry.index.set_overrides(overrides)
            entry.index.upsert(ids, checked, metadata)
        return entry.index.size

    def delete(self, collection: str, ids: list[str]) -> tuple[int, int]:
        """Returns (deleted, size afterwards); an unknown collection deletes nothing."""
        check_collection_name(collection)
        with self._lock:
            entry = self._collections.get(collection)
        if entry is None:
            return 0, 0
        with entry.write_lock:
            if self._wal is not None:
                entry.applied_seq = self._wal.append(collection, OP_DELETE, ids, None, None, None)
                entry.wal_lag_entries += 1
            deleted = entry.index.delete(ids)
        return deleted, entry.index.size

    def search(
        self,
        collection: str,
        queries: np.ndarray,
        k: int,
        search_filter: SearchFilter = NO_FILTER,
    ) -> tuple[list[list[Neighbor]], str]:
        """queries: float32 [q, d]. A collection this shard never saw is empty."""
        check_collection_name(collection)
        with self._lock:
            entry = self._collections.get(collection)
        if entry is None:
            return [[] for _ in range(len(queries))], "exact"
        return entry.index.search(queries, k, search_filter)

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
                entry.index.upsert(snapshot.ids, snapshot.vectors, snapshot.metadata)
                entry.applied_seq = entry.snapshot_seq = snapshot.seq
            for wal_entry in self._wal.read_after(name, after):
                replayed += 1
                if wal_entry.op == OP_UPSERT and wal_entry.vectors is not None:
                    entry = self._collection(name, create_dims=wal_entry.vectors.shape[1])
                    if wal_entry.overrides is not None:
                        entry.index.set_overrides(wal_entry.overrides)
                    entry.index.upsert(wal_entry.ids, wal_entry.vectors, wal_entry.metadata)
                else:
                    with self._lock:
                        existing = self._collections.get(name)
                    if existing is None:
                        continue
                    entry = existing
                    entry.index.delete(wal_entry.ids)
                entry.applied_seq = wal_entry.seq
                entry.wal_lag_entries += 1
        report = RecoveryReport(len(names), from_snapshots, replayed)
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
            overrides = entry.index.overrides
        if seq == entry.snapshot_seq:
            return seq
        self._snapshots.save(collection, Snapshot(seq, ids, vectors, metadata, overrides))
        with entry.write_lock:
            entry.snapshot_seq = seq
            entry.snapshot_at = time.time()
            entry.wal_lag_entries -= lag
        self._wal.trim_before(collection, seq)
        return seq

    def snapshot_all(self) -> dict[str, str | None]:
        with self._lock:
            names = sorted(self._collections)
        return {name: self.snapshot(name) for name in names}

    def _collection(self, collection: str, create_dims: int) -> _Collection:
        with self._lock:
            entry = self._collections.get(collection)
            if entry is None:
                if create_dims <= 0:
                    raise InvalidArgumentError(f"collection {collection!r} has no vectors yet")
                entry = _Collection(VectorIndex(create_dims, self.exact_threshold))
                self._collections[collection] = entry
            return entry
