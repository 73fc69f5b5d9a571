"""The WAITAOF acknowledgement barrier on the real local Valkey (ACL user, AOF on)."""

import pytest
import redis

from services.common.ack_durability import AckBarrier, AckDurability
from services.common.errors import UnavailableError

pytestmark = pytest.mark.integration


def test_local_fsync_is_confirmed_and_missing_replicas_are_unavailable(storage):
    redis_url, _ = storage
    client = redis.Redis.from_url(redis_url)
    client.set("durable-probe", "1")
    AckBarrier(client, AckDurability(local=1, timeout_ms=5000)).wait()
    # This Valkey has no replicas: a barrier that needs one cannot be met.
    with pytest.raises(UnavailableError, match="not yet durable"):
        AckBarrier(client, AckDurability(local=1, replicas=1, timeout_ms=50)).wait()
