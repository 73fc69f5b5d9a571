"""Owner-checked, expiring leases: one runner per background job, taken over after a crash.

A lease is a Redis key holding its owner's id with a TTL that the owner's heartbeat renews.
Renew and release compare the owner and act in one server-side step (a Lua script), so a
runner whose lease expired and was taken by another can neither extend nor delete the new
owner's lease. ``InMemoryLease`` has the same behaviour for unit tests of cores.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar

import redis

from services.common.errors import FailedPreconditionError, UnavailableError

T = TypeVar("T")
log = logging.getLogger(__name__)

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


class Lease(Protocol):
    def acquire(self, name: str, owner: str, ttl_s: float) -> float:
        """0.0 when ``owner`` holds the lease now (taken, or already its own), else the
        seconds until the current holder's lease expires."""
        ...

    def renew(self, name: str, owner: str, ttl_s: float) -> bool:
        """Extends the lease; False when ``owner`` no longer holds it."""
        ...

    def release(self, name: str, owner: str) -> None:
        """Drops the lease if ``owner`` holds it."""
        ...

    def holder(self, name: str) -> str | None:
        """The owner of an unexpired lease, or None."""
        ...


def _millis(ttl_s: float) -> int:
    return max(1, int(ttl_s * 1000))


class RedisLease:
    """Leases under the keys ``key_format.format(name)`` (e.g. "reshardlock:{}")."""

    def __init__(self, client: redis.Redis, key_format: str, what: str) -> None:
        self._redis = client
        self._key_format = key_format
        self._what = what  # names the state in UNAVAILABLE messages
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def _call(self, function: Callable[[], T]) -> T:
        try:
            return function()
        except redis.RedisError as exc:
            raise UnavailableError(f"{self._what} (Redis): {exc}") from exc

    def acquire(self, name: str, owner: str, ttl_s: float) -> float:
        key = self._key_format.format(name)
        if self._call(lambda: self._redis.set(key, owner, nx=True, px=_millis(ttl_s))):
            return 0.0
        if self.holder(name) == owner:
            return 0.0
        return max(0.001, self._call(lambda: self._redis.pttl(key)) / 1000.0)

    def renew(self, name: str, owner: str, ttl_s: float) -> bool:
        key = self._key_format.format(name)
        return bool(self._call(lambda: self._renew(keys=[key], args=[owner, _millis(ttl_s)])))

    def release(self, name: str, owner: str) -> None:
        key = self._key_format.format(name)
        self._call(lambda: self._release(keys=[key], args=[owner]))

    def holder(self, name: str) -> str | None:
        value = self._call(lambda: self._redis.get(self._key_format.format(name)))
        return value.decode() if isinstance(value, bytes) else value


class InMemoryLease:
    def __init__(self) -> None:
        self._leases: dict[str, tuple[str, float]] = {}  # name -> (owner, monotonic expiry)
        self._lock = threading.Lock()

    def acquire(self, name: str, owner: str, ttl_s: float) -> float:
        with self._lock:
            current = self._leases.get(name)
            now = time.monotonic()
            if current is None or current[0] == owner or current[1] <= now:
                self._leases[name] = (owner, now + ttl_s)
                return 0.0
            return current[1] - now

    def renew(self, name: str, owner: str, ttl_s: float) -> bool:
        with self._lock:
            current = self._leases.get(name)
            if current is None or current[0] != owner or current[1] <= time.monotonic():
                return False
            self._leases[name] = (owner, time.monotonic() + ttl_s)
            return True

    def release(self, name: str, owner: str) -> None:
        with self._lock:
            if self._leases.get(name, ("", 0.0))[0] == owner:
                del self._leases[name]

    def holder(self, name: str) -> str | None:
        with self._lock:
            current = self._leases.get(name)
            return current[0] if current is not None and current[1] > time.monotonic() else None


@contextmanager
def held(lease: Lease, name: str, ttl_s: float, job: str) -> Iterator[str]:
    """Holds lease `name` for the with block (a daemon thread renews it every ttl_s / 3) and
    yields its owner id; raises FailedPreconditionError when another runner holds it. `job`
    names the work in messages, e.g. "a re-embed of 'c'"."""
    owner = uuid.uuid4().hex
    wait_s = lease.acquire(name, owner, ttl_s)
    if wait_s > 0:
        raise FailedPreconditionError(
            f"{job} is running elsewhere (its lease expires in {wait_s:.0f} s if that job "
            "died); try again then"
        )
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(ttl_s / 3):
            try:
                if not lease.renew(name, owner, ttl_s):
                    log.warning("lease lost", extra={"fields": {"job": job}})
            except UnavailableError:
                log.warning("lease renewal failed", exc_info=True)

    thread = threading.Thread(target=heartbeat, daemon=True)
    thread.start()
    try:
        yield owner
    finally:
        stop.set()
        lease.release(name, owner)
