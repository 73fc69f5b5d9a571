"""A re-embed job's checkpoint and lease, in Redis (and in memory, for unit tests).

Keys: `reembed:<collection>` JSON job state; `reembed:<collection>:ids` list of the
ids the job covers (taken once, after the pending generation was published);
`reembed:<collection>:done` set of completed batch numbers (batch b = ids
[b*batch_size, (b+1)*batch_size)); `reembed:<collection>:lease` the owner of the
running job, with a TTL its heartbeat renews.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Protocol, TypeVar

import redis

from services.common.errors import UnavailableError
from services.common.lease import InMemoryLease, Lease, RedisLease

T = TypeVar("T")
PHASE_EMBEDDING = "embedding"
PHASE_SWITCHED = "switched"


@dataclass(frozen=True)
class JobState:
    model_version: str
    generation: int
    batch_size: int
    total: int
    phase: str = PHASE_EMBEDDING
    # The generation (and version) the switch replaced; dropped after it.
    old_generation: int = 0
    old_model_version: str = ""


class ReembedStore(Protocol):
    def load(self, collection: str) -> JobState | None: ...

    def begin(self, collection: str, state: JobState, ids: list[str]) -> None:
        """Replaces any previous checkpoint of the collection with a fresh one."""
        ...

    def ids(self, collection: str, start: int, stop: int) -> list[str]:
        """The job's ids [start, stop)."""
        ...

    def done_batches(self, collection: str) -> set[int]: ...

    def mark_done(self, collection: str, batch: int) -> None: ...

    def save(self, collection: str, state: JobState) -> None: ...

    def clear(self, collection: str) -> None: ...

    # The job's lease, one per collection (services.common.lease).
    lease: Lease


class RedisReembedStore:
    def __init__(self, url: str) -> None:
        self._redis = redis.Redis.from_url(url, decode_responses=True, socket_timeout=10)
        self.lease = RedisLease(self._redis, "reembed:{}:lease", "re-embed lease")

    def _call(self, function: Callable[[], T]) -> T:
        try:
            return function()
        except redis.RedisError as exc:
            raise UnavailableError(f"re-embed checkpoint (Redis): {exc}") from exc

    def load(self, collection: str) -> JobState | None:
        raw = self._call(lambda: self._redis.get(f"reembed:{collection}"))
        return JobState(**json.loads(raw)) if raw else None

    def begin(self, collection: str, state: JobState, ids: list[str]) -> None:
        def write() -> None:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(f"reembed:{collection}:ids", f"reembed:{collection}:done")
                for start in range(0, len(ids), 1000):
                    pipe.rpush(f"reembed:{collection}:ids", *ids[start : start + 1000])
                pipe.set(f"reembed:{collection}", json.dumps(asdict(state)))
                pipe.execute()

        self._call(write)

    def ids(self, collection: str, start: int, stop: int) -> list[str]:
        return list(
            self._call(lambda: self._redis.lrange(f"reembed:{collection}:ids", start, stop - 1))
        )

    def done_batches(self, collection: str) -> set[int]:
        members = self._call(lambda: self._redis.smembers(f"reembed:{collection}:done"))
        return {int(m) for m in members}

    def mark_done(self, collection: str, batch: int) -> None:
        self._call(lambda: self._redis.sadd(f"reembed:{collection}:done", batch))

    def save(self, collection: str, state: JobState) -> None:
        self._call(lambda: self._redis.set(f"reembed:{collection}", json.dumps(asdict(state))))

    def clear(self, collection: str) -> None:
        self._call(
            lambda: self._redis.delete(
                f"reembed:{collection}", f"reembed:{collection}:ids", f"reembed:{collection}:done"
            )
        )


class InMemoryReembedStore:
    def __init__(self) -> None:
        self._states: dict[str, JobState] = {}
        self._ids: dict[str, list[str]] = {}
        self._done: dict[str, set[int]] = {}
        self.lease = InMemoryLease()
        self._lock = threading.Lock()

    def load(self, collection: str) -> JobState | None:
        with self._lock:
            return self._states.get(collection)

    def begin(self, collection: str, state: JobState, ids: list[str]) -> None:
        with self._lock:
            self._states[collection] = replace(state)
            self._ids[collection] = list(ids)
            self._done[collection] = set()

    def ids(self, collection: str, start: int, stop: int) -> list[str]:
        with self._lock:
            return self._ids.get(collection, [])[start:stop]

    def done_batches(self, collection: str) -> set[int]:
        with self._lock:
            return set(self._done.get(collection, set()))

    def mark_done(self, collection: str, batch: int) -> None:
        with self._lock:
            self._done.setdefault(collection, set()).add(batch)

    def save(self, collection: str, state: JobState) -> None:
        with self._lock:
            self._states[collection] = state

    def clear(self, collection: str) -> None:
        with self._lock:
            self._states.pop(collection, None)
            self._ids.pop(collection, None)
            self._done.pop(collection, None)
