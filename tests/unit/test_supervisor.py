"""The local stack's supervision policy on a fake clock and a fake process table."""

import json
import logging
import os
from pathlib import Path

import pytest

from visearch import localstack
from visearch.supervisor import (
    CrashPolicy,
    StackProcessTable,
    Supervisor,
    SupervisorConfig,
)


class FakeTable:
    """Processes that die when told to and get a new pid on respawn."""

    def __init__(self, *names):
        self.pids = {name: 100 + i for i, name in enumerate(names)}
        self.dead: set[int] = set()
        self.next_pid = 1000
        self.respawned: list[tuple[str, int]] = []
        self.fail_next_respawn = False
        self.gone = False

    def kill(self, name):
        self.dead.add(self.pids[name])

    def snapshot(self):
        if self.gone:
            return None
        return {name: (pid, pid not in self.dead) for name, pid in self.pids.items()}

    def respawn(self, name, dead_pid):
        if self.pids[name] != dead_pid:
            return None
        if self.fail_next_respawn:
            self.fail_next_respawn = False
            raise OSError("exec failed")
        self.next_pid += 1
        self.pids[name] = self.next_pid
        self.respawned.append((name, self.next_pid))
        return self.next_pid


CONFIG = SupervisorConfig(
    poll_s=0.5, backoff_initial_s=1.0, backoff_max_s=8.0, max_restarts=3, window_s=60.0
)


def run_until(supervisor, start, end, step=0.5):
    now = start
    while now <= end:
        supervisor.step(now)
        now += step
    return now


def test_backoff_doubles_up_to_the_cap():
    policy = CrashPolicy(
        SupervisorConfig(backoff_initial_s=0.5, backoff_max_s=3.0, max_restarts=10, window_s=100)
    )
    delays = [policy.crashed(float(t)) for t in range(6)]
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_crash_loop_limit_counts_only_crashes_inside_the_window():
    policy = CrashPolicy(CONFIG)
    assert [policy.crashed(t) for t in (0.0, 1.0, 2.0)] == [1.0, 2.0, 4.0]
    assert policy.crashed(3.0) is None  # a 4th crash within 60 s: give up
    stable = CrashPolicy(CONFIG)
    for t in (0.0, 100.0, 200.0, 300.0, 400.0):  # far apart: always the first backoff
        assert stable.crashed(t) == 1.0


def test_a_dead_process_is_restarted_after_its_backoff():
    table = FakeTable("valkey", "embedder", "gateway")
    supervisor = Supervisor(CONFIG, table)
    supervisor.step(0.0)
    assert table.respawned == []
    table.kill("embedder")
    supervisor.step(10.0)  # seen dead: restart due at 11.0
    assert table.respawned == []
    supervisor.step(10.5)
    assert table.respawned == []
    supervisor.step(11.0)
    assert table.respawned == [("embedder", 1001)]
    assert supervisor.children["embedder"].restarts == 1
    run_until(supervisor, 11.5, 30.0)
    assert table.respawned == [("embedder", 1001)]  # alive again: nothing more


def test_repeated_crashes_back_off_then_give_up_and_log(caplog):
    caplog.set_level(logging.INFO, logger="visearch.supervisor")
    table = FakeTable("embedder", "gateway")
    supervisor = Supervisor(CONFIG, table)
    restart_times = []
    now = 0.0
    while now < 60.0:
        if table.pids["embedder"] not in table.dead:
            table.kill("embedder")  # dies as soon as it starts
        count = len(table.respawned)
        supervisor.step(now)
        if len(table.respawned) > count:
            restart_times.append(now)
        now += 0.5
    # Each start dies by the next poll: crashes seen at 0, 1.5, 4, 8.5; backoffs 1, 2, 4,
    # then the 4th crash inside the window is a crash loop.
    assert restart_times == [1.0, 3.5, 8.0]
    assert supervisor.children["embedder"].gave_up
    assert table.pids["gateway"] == 101  # the others are left alone
    messages = [r.getMessage() for r in caplog.records]
    assert sum("restarted" in m for m in messages) == 3
    assert any("crash-looping" in m for m in messages)


def test_an_outside_restart_clears_a_crash_loop():
    table = FakeTable("indexer-0")
    supervisor = Supervisor(CONFIG, table)
    for now in range(40):
        if table.pids["indexer-0"] not in table.dead:
            table.kill("indexer-0")
        supervisor.step(float(now))
    assert supervisor.children["indexer-0"].gave_up
    respawns = len(table.respawned)
    table.pids["indexer-0"] = 5000  # `visearch restart indexer-0`
    supervisor.step(41.0)
    table.kill("indexer-0")
    supervisor.step(42.0)
    supervisor.step(43.0)  # a fresh crash history: the first backoff again
    assert len(table.respawned) == respawns + 1


def test_a_restart_by_someone_else_during_the_backoff_is_not_repeated():
    table = FakeTable("gateway")
    supervisor = Supervisor(CONFIG, table)
    table.kill("gateway")
    supervisor.step(0.0)  # restart due at 1.0
    table.pids["gateway"] = 7777  # `visearch restart gateway` got there first
    run_until(supervisor, 0.5, 10.0)
    assert table.respawned == []
    assert supervisor.children["gateway"].pid == 7777


def test_a_failed_respawn_counts_as_a_crash():
    table = FakeTable("verifier")
    supervisor = Supervisor(CONFIG, table)
    table.kill("verifier")
    table.fail_next_respawn = True
    supervisor.step(0.0)  # crash 1: due at 1.0
    supervisor.step(1.0)  # the start fails: crash 2, due at 3.0
    assert table.respawned == []
    supervisor.step(2.5)
    assert table.respawned == []
    supervisor.step(3.0)
    assert table.respawned == [("verifier", 1001)]


def test_stops_when_the_stack_is_gone():
    table = FakeTable("gateway")
    supervisor = Supervisor(CONFIG, table)
    assert supervisor.step(0.0)
    table.gone = True
    assert not supervisor.step(0.5)


def test_config_from_env_and_validation():
    config = SupervisorConfig.from_env(
        {"VISEARCH_SUPERVISOR_MAX_RESTARTS": "2", "VISEARCH_SUPERVISOR_BACKOFF_MAX_S": "4"}
    )
    assert (config.max_restarts, config.backoff_max_s, config.poll_s) == (2, 4.0, 0.5)
    with pytest.raises(ValueError, match="MAX_RESTARTS"):
        SupervisorConfig.from_env({"VISEARCH_SUPERVISOR_MAX_RESTARTS": "many"})
    with pytest.raises(ValueError):
        SupervisorConfig(backoff_initial_s=5.0, backoff_max_s=1.0)


def write_state(state_dir: Path, supervisor_pid: int, pids: dict[str, int]) -> None:
    state = localstack.StackState(
        state_dir=str(state_dir),
        shards=1,
        gateway="127.0.0.1:1",
        redis_url="redis://127.0.0.1:2/0",
        s3_endpoint="127.0.0.1:3",
        model_version="m",
        processes=[
            localstack.ProcessInfo(name, pid, str(state_dir / f"{name}.log"))
            for name, pid in pids.items()
        ],
        supervisor=localstack.ProcessInfo("supervisor", supervisor_pid, ""),
    )
    state.save()


def test_the_state_table_follows_the_recorded_supervisor(tmp_path):
    write_state(tmp_path, 4242, {"gateway": os.getpid(), "embedder": 2**22 + 12345})
    table = StackProcessTable(tmp_path, own_pid=4242)
    snapshot = table.snapshot()
    assert snapshot == {"gateway": (os.getpid(), True), "embedder": (2**22 + 12345, False)}
    # Someone else's pid in the state (a newer supervisor) or no state: stop.
    assert StackProcessTable(tmp_path, own_pid=1).snapshot() is None
    raw = json.loads((tmp_path / localstack.STATE_FILE).read_text())
    assert raw["supervisor"]["pid"] == 4242 and raw["processes"][0]["restarts"] == 0
    (tmp_path / localstack.STATE_FILE).unlink()
    assert table.snapshot() is None


def test_restart_of_an_unknown_name_lists_the_valid_ones(tmp_path):
    write_state(tmp_path, 4242, {"valkey": 2**22 + 1, "gateway": 2**22 + 2})
    with pytest.raises(localstack.StackError, match="valid names: valkey, gateway"):
        localstack.restart(tmp_path, "gatewya")
