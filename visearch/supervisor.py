"""Restarts the crashed processes of a local stack on their old ports.

`visearch up` starts ``python -m visearch.supervisor --state-dir DIR`` and records it in the
stack's state; `visearch down` stops it first. Every ``poll_s`` it reads the recorded pids
(under the state lock, so a `visearch restart` in progress is never mistaken for a crash).
A process that died is started again with its argv, environment and ports after a backoff
that doubles with each crash inside ``window_s`` (``backoff_initial_s`` up to
``backoff_max_s``); a process that crashes more than ``max_restarts`` times inside the
window is left down (a crash loop), until `visearch restart NAME` or `visearch up` starts
it again. Every decision is logged (JSON lines in ``logs/supervisor.log``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Protocol

from services.common.logging_setup import configure_logging
from visearch import localstack

log = logging.getLogger("visearch.supervisor")

ENV_PREFIX = "VISEARCH_SUPERVISOR_"


@dataclass(frozen=True)
class SupervisorConfig:
    """How often to look, how long to wait before a restart, when to give up."""

    poll_s: float = 0.5
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    # More crashes than this inside window_s is a crash loop: the process stays down.
    max_restarts: int = 5
    window_s: float = 120.0

    def __post_init__(self) -> None:
        if self.poll_s <= 0 or self.backoff_initial_s < 0 or self.window_s <= 0:
            raise ValueError("poll_s and window_s must be > 0, backoff_initial_s >= 0")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        if self.max_restarts < 0:
            raise ValueError("max_restarts must be >= 0")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> SupervisorConfig:
        """VISEARCH_SUPERVISOR_POLL_S, _BACKOFF_INITIAL_S, _BACKOFF_MAX_S, _MAX_RESTARTS,
        _WINDOW_S; unset ones keep their defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, float | int] = {}
        for name, kind in (
            ("poll_s", float),
            ("backoff_initial_s", float),
            ("backoff_max_s", float),
            ("max_restarts", int),
            ("window_s", float),
        ):
            raw = env.get(ENV_PREFIX + name.upper())
            if raw:
                try:
                    values[name] = kind(raw)
                except ValueError as exc:
                    raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r}: {exc}") from exc
        return cls(**values)  # type: ignore[arg-type]


class CrashPolicy:
    """Backoff and crash-loop limit over one process's recent crash times."""

    def __init__(self, config: SupervisorConfig) -> None:
        self.config = config
        self.crashes: deque[float] = deque()

    def crashed(self, now: float) -> float | None:
        """Records a crash at `now`; the delay before the restart, or None to give up."""
        self.crashes.append(now)
        while self.crashes and self.crashes[0] <= now - self.config.window_s:
            self.crashes.popleft()
        if len(self.crashes) > self.config.max_restarts:
            return None
        exponent = len(self.crashes) - 1
        return min(self.config.backoff_initial_s * 2.0**exponent, self.config.backoff_max_s)

    def reset(self) -> None:
        self.crashes.clear()


class ProcessTable(Protocol):
    """The supervised processes: the real stack state, or a fake in tests."""

    def snapshot(self) -> dict[str, tuple[int, bool]] | None:
        """name -> (pid, alive) of every process, read consistently; None: stop supervising."""
        ...

    def respawn(self, name: str, dead_pid: int) -> int | None:
        """Starts `name` again if its recorded pid is still `dead_pid`; the new pid, or None
        when someone else restarted it meanwhile (or the stack is gone)."""
        ...


@dataclass
class Child:
    """What the supervisor knows about one process."""

    pid: int
    policy: CrashPolicy
    restart_at: float | None = None  # a restart is due then
    gave_up: bool = False
    restarts: int = 0


@dataclass
class Supervisor:
    """One step per poll: notice deaths, schedule restarts with backoff, run due ones."""

    config: SupervisorConfig
    table: ProcessTable
    children: dict[str, Child] = field(default_factory=dict)

    def step(self, now: float) -> bool:
        """Looks at every process once; False when the stack is gone (stop supervising)."""
        snapshot = self.table.snapshot()
        if snapshot is None:
            return False
        for name in set(self.children) - set(snapshot):
            del self.children[name]
        for name, (pid, alive) in snapshot.items():
            child = self.children.get(name)
            if child is None or child.pid != pid:
                # New, or started again by someone else (`visearch restart`, `up`):
                # a fresh start, with a fresh crash history.
                if child is not None and child.gave_up:
                    log.info("process started again from outside", extra=_fields(name, pid))
                child = self.children[name] = Child(pid, CrashPolicy(self.config))
            if child.gave_up:
                continue
            if child.restart_at is None and not alive:
                self._crashed(name, child, now)
            if child.restart_at is not None and now >= child.restart_at:
                self._restart(name, child, now)
        return True

    def _crashed(self, name: str, child: Child, now: float) -> None:
        delay = child.policy.crashed(now)
        crashes = len(child.policy.crashes)
        if delay is None:
            child.gave_up = True
            log.error(
                "process is crash-looping; leaving it down (`visearch restart` starts it)",
                extra=_fields(name, child.pid, crashes=crashes, window_s=self.config.window_s),
            )
            return
        child.restart_at = now + delay
        log.warning(
            "process died; restarting it",
            extra=_fields(name, child.pid, crashes=crashes, backoff_s=round(delay, 3)),
        )

    def _restart(self, name: str, child: Child, now: float) -> None:
        child.restart_at = None
        try:
            new_pid = self.table.respawn(name, child.pid)
        except Exception:  # noqa: BLE001 - a failed start counts as one more crash
            log.exception("restart failed", extra=_fields(name, child.pid))
            self._crashed(name, child, now)
            return
        if new_pid is None:
            return  # restarted by someone else; the next step sees its pid
        child.restarts += 1
        log.info(
            "process restarted on its ports",
            extra=_fields(name, new_pid, old_pid=child.pid, restarts=child.restarts),
        )
        child.pid = new_pid


def _fields(name: str, pid: int, **more: object) -> dict[str, object]:
    return {"fields": {"process": name, "pid": pid, **more}}


class StackProcessTable:
    """The processes recorded in a local stack's state folder."""

    def __init__(self, state_dir: Path, own_pid: int | None = None) -> None:
        self.state_dir = state_dir
        self.own_pid = os.getpid() if own_pid is None else own_pid

    def snapshot(self) -> dict[str, tuple[int, bool]] | None:
        with localstack.state_lock(self.state_dir):
            state = localstack.StackState.load(self.state_dir)
            if state is None or state.supervisor is None or state.supervisor.pid != self.own_pid:
                return None  # `visearch down`, or a newer supervisor took over
            return {p.name: (p.pid, localstack.pid_alive(p.pid)) for p in state.processes}

    def respawn(self, name: str, dead_pid: int) -> int | None:
        with localstack.state_lock(self.state_dir):
            state = localstack.StackState.load(self.state_dir)
            if state is None:
                return None
            old = next((p for p in state.processes if p.name == name), None)
            if old is None or old.pid != dead_pid or localstack.pid_alive(dead_pid):
                return None
            new = localstack.respawn(self.state_dir, old)
            state.processes = [new if p.name == name else p for p in state.processes]
            state.save()
            return new.pid


def run(
    supervisor: Supervisor,
    stop: threading.Event,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Steps until `stop` is set or the stack is gone."""
    while not stop.is_set():
        try:
            if not supervisor.step(clock()):
                log.info("stack stopped or taken over; supervisor exits")
                return
        except Exception:  # noqa: BLE001 - keep supervising through a bad poll
            log.exception("supervision step failed")
        stop.wait(supervisor.config.poll_s)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, required=True)
    defaults = SupervisorConfig()
    for name in ("poll_s", "backoff_initial_s", "backoff_max_s", "window_s"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=None)
    parser.add_argument("--max-restarts", type=int, default=None)
    parser.epilog = f"defaults (or {ENV_PREFIX}* variables): {defaults}"
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    configure_logging("supervisor")
    base = SupervisorConfig.from_env()
    overrides = {
        name: getattr(args, name)
        for name in ("poll_s", "backoff_initial_s", "backoff_max_s", "max_restarts", "window_s")
        if getattr(args, name) is not None
    }
    config = SupervisorConfig(**{**base.__dict__, **overrides})
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    state_dir = args.state_dir.resolve()
    log.info("supervising", extra={"fields": {"state_dir": str(state_dir), **config.__dict__}})
    run(Supervisor(config, StackProcessTable(state_dir)), stop)


if __name__ == "__main__":
    main()
