"""A readers-writer lock: many searches of one index at once, writes one at a time.

Searches (a numpy matrix product or a ScaNN call, both of which release the GIL) share
the index; a write waits for the searches in flight and holds new ones off until it is
done (writer preference, so a stream of searches cannot starve writes). The write side is
reentrant for its owner, which may also take the read side; the read side is not
reentrant (a reader must not wait for the lock again while a writer queues behind it).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ReadWriteLock:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer: int | None = None  # thread ident of the owner
        self._depth = 0  # the owner's nesting depth
        self._writers_waiting = 0

    @property
    def readers(self) -> int:
        """Searches holding the read side now (tests, metrics)."""
        return self._readers

    @property
    def writers_waiting(self) -> int:
        return self._writers_waiting

    @contextmanager
    def read(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            owner = self._writer == me
            if owner:
                self._depth += 1
            else:
                while self._writer is not None or self._writers_waiting:
                    self._cond.wait()
                self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                if owner:
                    self._depth -= 1
                else:
                    self._readers -= 1
                    if self._readers == 0:
                        self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._writer == me:
                self._depth += 1
            else:
                self._writers_waiting += 1
                try:
                    while self._writer is not None or self._readers:
                        self._cond.wait()
                finally:
                    self._writers_waiting -= 1
                self._writer, self._depth = me, 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if self._depth == 0:
                    self._writer = None
                    self._cond.notify_all()
