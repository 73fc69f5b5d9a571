"""A reshard's progress record and its run lock, in Redis (and in memory for unit tests).

Keys: `reshard:<collection>` JSON (the record: phase, counts, per-shard cursors, so a
job resumes where it stopped), `reshardlock:<collection>` (the gateway replica running
the job; expires unless renewed, so a crashed replica's job can be taken over).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import redis

from services.common.errors import UnavailableError
from services.common.lease import InMemoryLease, Lease, RedisLease

PHASE_COPYING = "copying"
PHASE_CLEANING = "cleaning"
PHASE_DONE = "done"


@dataclass
class ReshardRecord:
    collection: str
    from_shards: int
    to_shards: int
    phase: str  # PHASE_*
    total: int = 0  # entries on the old shards when the phase started
    copied: int = 0
    skipped: int = 0  # copies an only-if-absent upsert skipped (newer write or tombstone)
    removed: int = 0
    error: str = ""
    started_at: float = 0.0
    updated_at: float = 0.0
    # Per old shard ("0", "1", ...): done in this phase, next page token, entries scanned.
    done_shards: list[int] = field(default_factory=list)
    cursors: dict[str, str] = field(default_factory=dict)
    scanned_by_shard: dict[str, int] = field(default_factory=dict)
    # The collection's namespace on the shards (CollectionConfig.index_name).
    namespace: str = ""
    # Names the current run (this start or resume of the job) to the shards' copy fences.
    run_id: str = ""

    @property
    def scanned(self) -> int:
        return sum(self.scanned_by_shard.values())


class ReshardStore(Protocol):
    def load(self, collection: str) -> ReshardRecord | None: ...

    def save(self, record: ReshardRecord) -> None: ...

    # The run lock, one per collection (services.common.lease).
    lease: Lease


class RedisReshardStore:
    def __init__(self, url: str) -> None:
        self._redis = redis.Redis.from_url(url, decode_responses=True, socket_timeout=10)
        self.lease = RedisLease(self._redis, "reshardlock:{}", "reshard lock")

    def load(self, collection: str) -> ReshardRecord | None:
        raw = self._call(self._redis.get, f"reshard:{collection}")
        return ReshardRecord(**json.loads(raw)) if raw else None

    def save(self, record: ReshardRecord) -> None:
        record.updated_at = time.time()
        self._call(self._redis.set, f"reshard:{record.collection}", json.dumps(asdict(record)))

    @staticmethod
    def _call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except redis.RedisError as exc:
            raise UnavailableError(f"reshard state (Redis): {exc}") from exc


class InMemoryReshardStore:
    def __init__(self) -> None:
        self._records: dict[str, str] = {}
        self.lease = InMemoryLease()
        self._lock = threading.Lock()

    def load(self, collection: str) -> ReshardRecord | None:
        with self._lock:
            raw = self._records.get(collection)
        return ReshardRecord(**json.loads(raw)) if raw else None

    def save(self, record: ReshardRecord) -> None:
        record.updated_at = time.time()
        with self._lock:
            self._records[record.collection] = json.dumps(asdict(record))
