"""Dynamic micro-batching: concurrent requests share one model run.

Deadline-aware: a request whose deadline passes before its run would end (by the measured
time of runs of that many rows) is dropped unrun, as its caller will have given up, so the
model never works for nobody. (Refusing at submit by a predicted queue wait was tried and
dropped: under CPU contention it refused most work and left the model running small,
inefficient batches; the in-flight limit of services.common.grpc_server bounds the queue.)

Adaptive: the batcher never waits for company when nobody else is coming. A request that is
still decoding announces itself (`expecting()`); a run waits up to `max_wait_s` for more rows
only while such announced requests exist, and starts at once otherwise, so an idle embedder
answers a lone request without the batching wait. Under load, requests that queue while the
model runs go together into the next run (continuous batching). A caller may also ask to run
its request on its own thread when the model is idle (`submit(inline=True)`), which saves
the hand-over to the batcher's thread and back; runs never overlap either way."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from services.common.errors import DeadlineExceededError, UnavailableError

# Weight of the latest run in the running mean of a run's seconds (per number of rows).
RUN_SECONDS_WEIGHT = 0.2


@dataclass
class _Pending:
    inputs: np.ndarray
    future: Future[np.ndarray]
    enqueued_at: float
    # time.monotonic() after which nobody waits for the result (None: no deadline).
    deadline: float | None = None


class Ticket:
    """An announced request (MicroBatcher.expecting); its submit ends the announcement."""

    def __init__(self) -> None:
        self.open = True


class MicroBatcher:
    """Collects inputs [m, ...] from many callers into runs of up to `max_batch` rows.

    A run starts as soon as the model is free and no announced request is on its way;
    while some are, it waits for them until `max_batch` rows are waiting or the oldest
    waited `max_wait_s`.
    Requests that would not finish before their deadline are not run: their futures get
    DeadlineExceededError and `on_expired(rows)` is called.
    """

    def __init__(
        self,
        run_batch: Callable[[np.ndarray], np.ndarray],
        max_batch: int,
        max_wait_s: float,
        on_batch: Callable[[int, float], None] | None = None,
        on_expired: Callable[[int], None] | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._on_expired = on_expired
        self._lock = threading.Lock()
        # rows -> running mean of the seconds a run of that many rows took.
        self._run_seconds: dict[int, float] = {}
        self._cond = threading.Condition()
        self._pending: deque[_Pending] = deque()
        self._coming = 0  # announced requests not submitted yet
        self._busy = False  # a run is being collected or executed (worker or inline)
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name="micro-batcher", daemon=True)
        self._worker.start()

    @contextmanager
    def expecting(self) -> Iterator[Ticket]:
        """Announces a request that will submit soon (it is decoding): runs that start
        meanwhile may wait for it (up to max_wait_s). Pass the ticket to submit/run; leaving
        the block without submitting withdraws the announcement."""
        ticket = Ticket()
        with self._cond:
            self._coming += 1
        try:
            yield ticket
        finally:
            with self._cond:
                if ticket.open:
                    ticket.open = False
                    self._coming -= 1
                    self._cond.notify_all()

    def submit(
        self,
        inputs: np.ndarray,
        deadline: float | None = None,
        ticket: Ticket | None = None,
        inline: bool = False,
    ) -> Future[np.ndarray]:
        """deadline: time.monotonic() past which the inputs are dropped instead of run;
        ticket: this request's announcement (MicroBatcher.expecting), if any; inline: when
        the model is idle, nothing is queued and nobody is announced, run the inputs on the
        calling thread (the returned future is then already done)."""
        future: Future[np.ndarray] = Future()
        pending = _Pending(inputs, future, time.perf_counter(), deadline)
        with self._cond:
            if ticket is not None and ticket.open:
                ticket.open = False
                self._coming -= 1
            if self._closed:
                future.set_exception(UnavailableError("the model is being unloaded"))
                return future
            here = inline and not (self._busy or self._pending or self._coming > 0)
            if here:
                self._busy = True
            else:
                self._pending.append(pending)
                self._cond.notify_all()
        if here:
            self._execute_then_free([pending], len(inputs))
        return future

    def expected_seconds(self, rows: int) -> float | None:
        """Model time of a run of `rows` rows (None before any run): the mean of such runs,
        else of the quickest larger run, else the largest run's scaled up."""
        with self._lock:
            known = self._run_seconds
            if not known:
                return None
            if rows in known:
                return known[rows]
            larger = [seconds for size, seconds in known.items() if size > rows]
            if larger:
                return min(larger)
            biggest = max(known)
            return known[biggest] * rows / biggest

    def run(
        self, inputs: np.ndarray, timeout: float | None = None, ticket: Ticket | None = None
    ) -> np.ndarray:
        """Waits up to `timeout` seconds, which is also the inputs' deadline in the queue."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return self.submit(inputs, deadline, ticket).result(timeout=timeout)

    def close(self) -> None:
        """Runs what is queued, then stops; later submits fail with UnavailableError."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._worker.join(timeout=5)

    def _loop(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            self._execute_then_free(*taken)

    def _execute_then_free(self, batch: list[_Pending], rows: int) -> None:
        """Runs a batch taken while marking the model busy, then marks it idle."""
        try:
            self._execute(batch, rows)
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _take(self) -> tuple[list[_Pending], int] | None:
        """The next run's requests and rows (None once closed and drained). Waits for more
        only while announced requests are on their way (see the module docstring)."""
        with self._cond:
            while not self._pending or self._busy:
                if self._closed and not self._pending:
                    return None
                self._cond.wait()
            self._busy = True  # an inline submit now queues instead of running beside us
            first = self._pending.popleft()
            batch = [first]
            rows = len(first.inputs)
            wait_until = first.enqueued_at + self._max_wait_s
            while rows < self._max_batch:
                if self._pending:
                    if rows + len(self._pending[0].inputs) > self._max_batch:
                        break
                    item = self._pending.popleft()
                    batch.append(item)
                    rows += len(item.inputs)
                    continue
                remaining = wait_until - time.perf_counter()
                if self._coming <= 0 or self._closed or remaining <= 0:
                    break
                self._cond.wait(remaining)
            return batch, rows

    def _execute(self, batch: list[_Pending], rows: int) -> None:
        batch = self._drop_expired(batch, rows)
        if batch:
            self._run(batch)

    def _run(self, batch: list[_Pending]) -> None:
        rows = sum(len(pending.inputs) for pending in batch)
        started = time.perf_counter()
        if self._on_batch is not None:
            queued = max(started - pending.enqueued_at for pending in batch)
            self._on_batch(rows, queued)
        try:
            inputs = np.concatenate([pending.inputs for pending in batch])
            outputs = np.concatenate(
                [
                    self._run_batch(inputs[start : start + self._max_batch])
                    for start in range(0, len(inputs), self._max_batch)
                ]
            )
        except Exception as exc:
            for pending in batch:
                pending.future.set_exception(exc)
            return
        seconds = time.perf_counter() - started
        with self._lock:
            previous = self._run_seconds.get(rows)
            self._run_seconds[rows] = (
                seconds
                if previous is None
                else previous + RUN_SECONDS_WEIGHT * (seconds - previous)
            )
        offset = 0
        for pending in batch:
            count = len(pending.inputs)
            pending.future.set_result(outputs[offset : offset + count])
            offset += count

    def _drop_expired(self, batch: list[_Pending], rows: int) -> list[_Pending]:
        """The requests that can still finish in time; the others (their deadline passes
        before this run would end) fail with DeadlineExceededError unrun."""
        ends = time.monotonic() + (self.expected_seconds(rows) or 0.0)
        live = [p for p in batch if p.deadline is None or p.deadline > ends]
        if len(live) == len(batch):
            return batch
        dropped = 0
        for pending in batch:
            if pending.deadline is not None and pending.deadline <= ends:
                dropped += len(pending.inputs)
                pending.future.set_exception(
                    DeadlineExceededError(
                        "the deadline passes before the model run would end; not run",
                        retryable=False,
                    )
                )
        if self._on_expired is not None:
            self._on_expired(dropped)
        return live
