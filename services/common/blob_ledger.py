"""Which stored images are still referenced, so that unreferenced bytes can be erased.

An image's bytes and features are content-addressed by sha256 and shared by every id, in
any collection, that has the same bytes. The metadata store keeps, in the same transaction
as each image record, the set of ids that reference a digest (`blobrefs:<sha256>`, members
"<collection>/<id>") and queues a digest for erasure when an id stops referencing it. This
ledger adds what erasure needs:

- `blobkeys:<sha256>` set: every object key written for those bytes (image, features,
  texture histogram), so erasure deletes them without listing buckets;
- `blobpin:<sha256>`: how many ingests are storing the bytes now (each releases its pin
  when it committed or gave up; the key also expires after the longest ingest's deadline);
- `bloberasing:<sha256>`: an eraser is deleting them (expires if the eraser dies);
- `erase:queue` sorted set: digest -> when it may have lost its last reference. Every
  ingest queues its digests too, so bytes stored by an ingest that failed are erased.

A pin and an erasure exclude each other atomically (a Redis script), so an ingest of the
same bytes never races an eraser into losing them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

import redis

from services.common.errors import UnavailableError

ERASE_QUEUE_KEY = "erase:queue"
PIN_RETRIES = 20  # x PIN_RETRY_PAUSE_S: how long an ingest waits for an erasure
PIN_RETRY_PAUSE_S = 0.1


def refs_key(sha256: str) -> str:
    return f"blobrefs:{sha256}"


def ref_member(collection: str, image_id: str) -> str:
    """Neither a collection name nor an id contains '/'."""
    return f"{collection}/{image_id}"


class BlobLedger(Protocol):
    def pin(self, keys_by_digest: dict[str, list[str]], ttl_s: float) -> None:
        """Records the object keys about to be written for each digest and holds off
        erasure of those digests for ttl_s. Raises UnavailableError while one is being
        erased (retry shortly)."""
        ...

    def unpin(self, digests: list[str]) -> None:
        """Releases pins taken by `pin` (once the ingest committed or failed)."""
        ...

    def referenced_by(self, collection: str, sha256: str) -> bool: ...

    def due(self, before: float, limit: int) -> list[str]:
        """Queued digests that may have lost their last reference before `before`
        (time.time() seconds), oldest first."""
        ...

    def begin_erase(self, sha256: str, ttl_s: float) -> list[str] | None:
        """Claims an unreferenced, unpinned digest for erasure and returns its object keys;
        None when it is referenced again (it leaves the queue) or pinned (it stays)."""
        ...

    def end_erase(self, sha256: str) -> None:
        """The digest's objects are deleted: forget it."""
        ...


_PIN = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('INCR', KEYS[2])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[3])
for i = 4, #ARGV do redis.call('SADD', KEYS[3], ARGV[i]) end
return 1
"""

_UNPIN = """
if redis.call('DECR', KEYS[1]) <= 0 then redis.call('DEL', KEYS[1]) end
return 1
"""

_BEGIN_ERASE = """
if redis.call('SCARD', KEYS[1]) > 0 then
  redis.call('ZREM', KEYS[5], ARGV[2])
  return {0}
end
if redis.call('EXISTS', KEYS[2]) == 1 then return {1} end
redis.call('SET', KEYS[3], '1', 'PX', ARGV[1])
local keys = redis.call('SMEMBERS', KEYS[4])
table.insert(keys, 1, 2)
return keys
"""


def _digest_keys(sha256: str) -> tuple[str, str, str, str]:
    """(refs, pin, erasing, object keys) of a digest."""
    return refs_key(sha256), f"blobpin:{sha256}", f"bloberasing:{sha256}", f"blobkeys:{sha256}"


class RedisBlobLedger:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._pin = client.register_script(_PIN)
        self._begin = client.register_script(_BEGIN_ERASE)
        self._unpin = client.register_script(_UNPIN)

    def _call(self, function: Callable[[], object]) -> object:
        try:
            return function()
        except redis.RedisError as exc:
            raise UnavailableError(f"metadata store (Redis): {exc}") from exc

    def pin(self, keys_by_digest: dict[str, list[str]], ttl_s: float) -> None:
        ttl_ms = max(1, int(ttl_s * 1000))
        for sha256, object_keys in keys_by_digest.items():
            for _ in range(PIN_RETRIES):
                if self._pin_one(sha256, object_keys, ttl_ms):
                    break
                time.sleep(PIN_RETRY_PAUSE_S)
            else:
                raise UnavailableError(
                    f"image {sha256[:12]}… is being erased right now; retry the ingest"
                )

    def _pin_one(self, sha256: str, object_keys: list[str], ttl_ms: int) -> bool:
        _refs, pin, erasing, blob_keys = _digest_keys(sha256)
        keys = [erasing, pin, blob_keys, ERASE_QUEUE_KEY]
        args = [ttl_ms, time.time(), sha256, *object_keys]
        return bool(self._call(lambda: self._pin(keys=keys, args=args)))

    def unpin(self, digests: list[str]) -> None:
        for sha256 in dict.fromkeys(digests):
            keys = [_digest_keys(sha256)[1]]
            self._call(lambda: self._unpin(keys=keys))  # noqa: B023 - called at once

    def referenced_by(self, collection: str, sha256: str) -> bool:
        prefix = f"{collection}/"
        members = self._call(lambda: self._redis.smembers(refs_key(sha256)))
        return any(str(member).startswith(prefix) for member in members)  # type: ignore[attr-defined]

    def due(self, before: float, limit: int) -> list[str]:
        rows = self._call(
            lambda: self._redis.zrangebyscore(ERASE_QUEUE_KEY, "-inf", before, start=0, num=limit)
        )
        return [str(row) for row in rows]  # type: ignore[attr-defined]

    def begin_erase(self, sha256: str, ttl_s: float) -> list[str] | None:
        refs, pin, erasing, blob_keys = _digest_keys(sha256)
        reply = self._call(
            lambda: self._begin(
                keys=[refs, pin, erasing, blob_keys, ERASE_QUEUE_KEY],
                args=[max(1, int(ttl_s * 1000)), sha256],
            )
        )
        status, *object_keys = reply  # type: ignore[misc]
        return [str(key) for key in object_keys] if int(status) == 2 else None

    def end_erase(self, sha256: str) -> None:
        _refs, _pin, erasing, blob_keys = _digest_keys(sha256)
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(blob_keys)
            pipe.zrem(ERASE_QUEUE_KEY, sha256)
            pipe.delete(erasing)
            self._call(pipe.execute)


class InMemoryBlobLedger:
    """For unit tests; `refs` is the in-memory metadata store's reference table."""

    def __init__(self, refs: dict[str, set[str]], queue: dict[str, float]) -> None:
        self._refs = refs
        self._queue = queue
        self._keys: dict[str, set[str]] = {}
        self._pins: dict[str, tuple[int, float]] = {}  # digest -> (count, expires at)
        self._erasing: set[str] = set()
        self._lock = threading.Lock()

    def pin(self, keys_by_digest: dict[str, list[str]], ttl_s: float) -> None:
        with self._lock:
            busy = [sha for sha in keys_by_digest if sha in self._erasing]
            if busy:
                raise UnavailableError(f"image {busy[0][:12]}… is being erased; retry")
            for sha256, object_keys in keys_by_digest.items():
                count, until = self._pins.get(sha256, (0, 0.0))
                self._pins[sha256] = (count + 1, max(until, time.monotonic() + ttl_s))
                self._queue[sha256] = time.time()
                self._keys.setdefault(sha256, set()).update(object_keys)

    def unpin(self, digests: list[str]) -> None:
        with self._lock:
            for sha256 in dict.fromkeys(digests):
                count, until = self._pins.pop(sha256, (0, 0.0))
                if count > 1:
                    self._pins[sha256] = (count - 1, until)

    def referenced_by(self, collection: str, sha256: str) -> bool:
        with self._lock:
            return any(m.startswith(f"{collection}/") for m in self._refs.get(sha256, ()))

    def due(self, before: float, limit: int) -> list[str]:
        with self._lock:
            ready = sorted((at, sha) for sha, at in self._queue.items() if at <= before)
            return [sha for _, sha in ready[:limit]]

    def begin_erase(self, sha256: str, ttl_s: float) -> list[str] | None:
        with self._lock:
            if self._refs.get(sha256):
                self._queue.pop(sha256, None)
                return None
            if self._pins.get(sha256, (0, 0.0))[1] > time.monotonic():
                return None
            self._erasing.add(sha256)
            return sorted(self._keys.get(sha256, ()))

    def end_erase(self, sha256: str) -> None:
        with self._lock:
            self._keys.pop(sha256, None)
            self._queue.pop(sha256, None)
            self._erasing.discard(sha256)
