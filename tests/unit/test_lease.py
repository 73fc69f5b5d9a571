"""InMemoryLease behaves as the Redis lease does (tests/integration/test_reshard_state.py)."""

import time

import pytest

from services.common.errors import FailedPreconditionError
from services.common.lease import InMemoryLease, held


def test_one_owner_at_a_time_until_its_lease_expires():
    lease = InMemoryLease()
    assert lease.acquire("c", "a", ttl_s=0.2) == 0.0
    assert lease.acquire("c", "a", ttl_s=0.2) == 0.0  # its own: kept
    wait = lease.acquire("c", "b", ttl_s=0.2)
    assert 0.0 < wait <= 0.2
    assert lease.renew("c", "a", ttl_s=0.2) and not lease.renew("c", "b", ttl_s=0.2)
    lease.release("c", "b")  # not the holder: no effect
    assert lease.holder("c") == "a"
    time.sleep(0.25)
    assert lease.holder("c") is None
    assert not lease.renew("c", "a", ttl_s=0.2), "an expired lease cannot be renewed"
    assert lease.acquire("c", "b", ttl_s=5) == 0.0 and lease.holder("c") == "b"
    lease.release("c", "b")
    assert lease.holder("c") is None and lease.acquire("other", "a", 1) == 0.0


def test_held_renews_while_the_block_runs_and_refuses_a_second_runner():
    lease = InMemoryLease()
    with held(lease, "c", 0.15, "a job on 'c'") as owner:
        time.sleep(0.3)  # twice the ttl: only the heartbeat keeps it
        assert lease.holder("c") == owner
        busy = "a job on 'c' is running elsewhere"
        with (
            pytest.raises(FailedPreconditionError, match=busy),
            held(lease, "c", 0.15, "a job on 'c'"),
        ):
            pass
    assert lease.holder("c") is None
