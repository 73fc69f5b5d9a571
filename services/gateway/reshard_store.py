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

    @property
    def scanned(self) -> int:
        return sum(self.scanned_by_shard.values())


class ReshardStore(Protocol):
    def load(self, collection: str) -> ReshardRecord | None: ...

    def save(self, record: ReshardRecord) -> None: ...

    def acquire(self, collection: str, owner: str, ttl_s: float) -> bool:
        """Takes the collection's run lock unless another owner holds it."""
        ...

    def renew(self, collection: str, owner: str, ttl_s: float) -> bool:
        """Extends the lock; False when `owner` no longer holds it."""
        ...

    def release(self, collection: str, owner: str) -> None: ...

    def holder(self, collection: str) -> str | None: ...


_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class RedisReshardStore:
    def __init__(self, url: str) -> None:
        self._redis = redis.Redis.from_url(url, decode_responses=True, socket_timeout=10)
        self._renew = self._redis.register_script(_RENEW)
        self._release = self._redis.register_script(_RELEASE)

    def load(self, collection: str) -> ReshardRecord | None:
        raw = self._call(self._redis.get, f"reshard:{collection}")
        return ReshardRecord(**json.loads(raw)) if raw else None

    def save(self, record: ReshardRecord) -> None:
        record.updated_at = time.time()
        self._call(self._redis.set, f"reshard:{record.collection}", json.dumps(asdict(record)))

    def acquire(self, collection: str, owner: str, ttl_s: float) -> bool:
        key = f"reshardlock:{collection}"
        return bool(self._call(self._redis.set, key, owner, nx=True, px=int(ttl_s * 1000)))

    def renew(self, collection: str, owner: str, ttl_s: float) -> bool:
        key = f"reshardlock:{collection}"
        return bool(self._call(self._renew, keys=[key], args=[owner, int(ttl_s * 1000)]))

    def release(self, collection: str, owner: str) -> None:
        self._call(self._release, keys=[f"reshardlock:{collection}"], args=[owner])

    def holder(self, collection: str) -> str | None:
        return self._call(self._redis.get, f"reshardlock:{collection}")

    @staticmethod
    def _call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except redis.RedisError as exc:
            raise UnavailableError(f"reshard state (Redis): {exc}") from exc


class InMemoryReshardStore:
    def __init__(self) -> None:
        self._records: dict[str, str] = {}
        self._locks: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def load(self, collection: str) -> ReshardRecord | None:
        with self._lock:
            raw = self._records.get(collection)
        return ReshardRecord(**json.loads(raw)) if raw else None

    def save(self, record: ReshardRecord) -> None:
        record.updated_at = time.time()
        with self._lock:
            self._records[record.collection] = json.dumps(asdict(record))

    def acquire(self, collection: str, owner: str, ttl_s: float) -> bool:
        with self._lock:
            current = self._locks.get(collection)
            if current is not None and current[1] > time.monotonic():
                return False
            self._locks[collection] = (owner, time.monotonic() + ttl_s)
            return True

    def renew(self, collection: str, owner: str, ttl_s: float) -> bool:
        with self._lock:
            current = self._locks.get(collection)
            if current is None or current[0] != owner or current[1] <= time.monotonic():
                return False
            self._locks[collection] = (owner, time.monotonic() + ttl_s)
            return True

    def release(self, collection: str, owner: str) -> None:
        with self._lock:
            if self._locks.get(collection, ("", 0.0))[0] == owner:
                self._locks.pop(collection, None)

    def holder(self, collection: str) -> str | None:
        with self._lock:
            current = self._locks.get(collection)
            return current[0] if current is not None and current[1] > time.monotonic() else None
