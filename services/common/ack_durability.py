"""What an acknowledged write survives: an optional WAITAOF barrier before the answer.

Valkey answers a write once it is in memory and in its append-only file's buffer; the
file is fsynced per `appendfsync` (`always`: before the answer; `everysec`: within about a
second, so a power loss can drop the last second). With `VISEARCH_WAITAOF_LOCAL=1` (and/or
`VISEARCH_WAITAOF_REPLICAS=N`) the gateway does not acknowledge an Ingest, Delete or
CreateCollection until Valkey (and N replicas) has fsynced every write made for it.

WAITAOF waits for the writes of its own connection; a pooled client's writes go over
several connections, and the indexers' write-ahead-log entries over theirs. So the barrier
first makes one write of its own (INCR of `ackfence`) on the connection it then waits on:
that write comes after every write the request caused (they were acknowledged before it),
and the append-only file is fsynced in order, so its fsync covers them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import redis

from services.common.config import env_int
from services.common.errors import UnavailableError

FENCE_KEY = "ackfence"


@dataclass(frozen=True)
class AckDurability:
    # Wait for this Valkey's fsync of its append-only file (0 or 1).
    local: int = 0
    # Wait for this many replicas' fsync.
    replicas: int = 0
    timeout_ms: int = 1000

    @property
    def enabled(self) -> bool:
        return self.local > 0 or self.replicas > 0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AckDurability:
        return cls(
            local=env_int(env, "VISEARCH_WAITAOF_LOCAL", 0, minimum=0, maximum=1),
            replicas=env_int(env, "VISEARCH_WAITAOF_REPLICAS", 0, minimum=0, maximum=100),
            timeout_ms=env_int(env, "VISEARCH_WAITAOF_TIMEOUT_MS", 1000, minimum=1),
        )

    def describe(self) -> str:
        if not self.enabled:
            return "acknowledged when in Valkey's memory (fsync per its appendfsync)"
        return (
            f"acknowledged after WAITAOF {self.local} {self.replicas} "
            f"(timeout {self.timeout_ms} ms)"
        )


class AckBarrier:
    """Waits until every write acknowledged so far is fsynced as `durability` asks."""

    def __init__(self, client: redis.Redis, durability: AckDurability) -> None:
        self._redis = client
        self.durability = durability

    def wait(self) -> None:
        d = self.durability
        if not d.enabled:
            return
        try:
            with self._redis.pipeline(transaction=False) as pipe:  # one connection
                pipe.incr(FENCE_KEY)
                pipe.execute_command("WAITAOF", d.local, d.replicas, d.timeout_ms)
                _, acks = pipe.execute()
        except redis.RedisError as exc:
            raise UnavailableError(f"durability barrier (WAITAOF): {exc}") from exc
        local, replicas = int(acks[0]), int(acks[1])
        if local < d.local or replicas < d.replicas:
            raise UnavailableError(
                f"the write is applied but not yet durable: WAITAOF got {local} local and "
                f"{replicas} replica fsyncs of {d.local} and {d.replicas} in {d.timeout_ms} ms"
            )
