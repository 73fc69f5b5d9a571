"""Which shard holds an id: jump consistent hash (Lamping & Veach, 2014).

Changing the shard count from n to m moves only about |m - n| / max(m, n) of ids.
"""

from __future__ import annotations

import hashlib

_JUMP_MULTIPLIER = 2862933555777941757
_UINT64_MASK = (1 << 64) - 1


def jump_hash(key: int, buckets: int) -> int:
    """Maps a 64-bit key to a bucket in [0, buckets)."""
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    bucket, candidate = -1, 0
    while candidate < buckets:
        bucket = candidate
        key = (key * _JUMP_MULTIPLIER + 1) & _UINT64_MASK
        candidate = int((bucket + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return bucket


def id_key(image_id: str) -> int:
    """A stable 64-bit key for an id (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(image_id.encode(), digest_size=8).digest(), "little")


def shard_of(image_id: str, shards: int) -> int:
    return jump_hash(id_key(image_id), shards)
