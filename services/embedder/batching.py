"""Dynamic micro-batching: concurrent requests share one model run."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np


@dataclass
class _Pending:
    inputs: np.ndarray
    future: Future[np.ndarray]
    enqueued_at: float


class MicroBatcher:
    """Collects inputs [m, ...] from many callers into runs of up to `max_batch` rows.

    A run starts when `max_batch` rows are waiting or the oldest waited `max_wait_s`.
    """

    def __init__(
        self,
        run_batch: Callable[[np.ndarray], np.ndarray],
        max_batch: int,
        max_wait_s: float,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._worker = threading.Thread(target=self._loop, name="micro-batcher", daemon=True)
        self._worker.start()

    def submit(self, inputs: np.ndarray) -> Future[np.ndarray]:
        future: Future[np.ndarray] = Future()
        self._queue.put(_Pending(inputs, future, time.perf_counter()))
        return future

    def run(self, inputs: np.ndarray, timeout: float | None = None) -> np.ndarray:
        return self.submit(inputs).result(timeout=timeout)

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=5)

    def _loop(self) -> None:
        carry: _Pending | None = None
        while True:
            first = carry if carry is not None else self._queue.get()
            carry = None
            if first is None:
                return
            batch = [first]
            rows = len(first.inputs)
            deadline = first.enqueued_at + self._max_wait_s
            while rows < self._max_batch:
                remaining = deadline - time.perf_counter()
                try:
                    item = (
                        self._queue.get(timeout=max(remaining, 0.0))
                        if remaining > 0
                        else (self._queue.get_nowait())
                    )
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                if rows + len(item.inputs) > self._max_batch:
                    carry = item
                    break
                batch.append(item)
                rows += len(item.inputs)
            self._execute(batch, rows)

    def _execute(self, batch: list[_Pending], rows: int) -> None:
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
        offset = 0
        for pending in batch:
            count = len(pending.inputs)
            pending.future.set_result(outputs[offset : offset + count])
            offset += count
