"""Rows written since the serving ScaNN searcher's data was copied, scored exactly per query.

Their vectors are kept in a contiguous buffer beside the index matrix, so that scoring them is
one matrix product over that buffer, instead of gathering them from the matrix on every query
(a fancy index over up to ``MAX_FRESH_ROWS`` rows: 20 MB at 256 dims, 100 MB at 1280); 2.8-5.3x
faster per query in bench/fresh_rows.py (bench/results/fresh_rows.json).
Not thread-safe for writes: the index writes under its lock's write side and scores under
its read side (``scores`` only reads).
"""

from __future__ import annotations

import numpy as np

INITIAL_SLOTS = 64
DEAD = -1


class FreshRows:
    """Row → (write number, vector [dims] float32), in slots of a growable buffer.

    A rewritten row keeps its slot; a discarded row leaves a dead slot that the next
    compaction (at ``keep_after`` or when dead slots outnumber live ones) removes.
    """

    def __init__(self, dims: int) -> None:
        self.dims = dims
        self._write_of: dict[int, int] = {}  # row -> write number
        self._slot_of: dict[int, int] = {}  # row -> slot
        self._rows = np.full(INITIAL_SLOTS, DEAD, dtype=np.int64)  # slot -> row (or DEAD)
        self._vectors = np.zeros((INITIAL_SLOTS, dims), dtype=np.float32)
        self._used = 0  # slots in use, dead ones included

    def __len__(self) -> int:
        return len(self._write_of)

    def __contains__(self, row: int) -> bool:
        return row in self._write_of

    def rows(self) -> list[int]:
        """The fresh rows, in first-write order."""
        return list(self._write_of)

    def write(self, row: int, vector: np.ndarray, write_number: int) -> None:
        """Marks ``row`` fresh with its current vector ([dims] float32)."""
        slot = self._slot_of.get(row)
        if slot is None:
            if self._used == len(self._rows):
                self._grow()
            slot = self._used
            self._used += 1
            self._slot_of[row] = slot
            self._rows[slot] = row
        self._vectors[slot] = vector
        self._write_of.pop(row, None)  # re-insert: keeps rows() in write order
        self._write_of[row] = write_number

    def discard(self, row: int) -> None:
        """Forgets ``row`` (deleted); no-op when it is not fresh."""
        if self._write_of.pop(row, None) is None:
            return
        self._rows[self._slot_of.pop(row)] = DEAD
        if self._used - len(self._write_of) > max(len(self._write_of), INITIAL_SLOTS):
            self._compact()

    def keep_after(self, write_number: int) -> None:
        """Keeps only rows last written after ``write_number`` (a new searcher covers the
        rest) and compacts the buffer."""
        self._write_of = {r: n for r, n in self._write_of.items() if n > write_number}
        self._compact()

    def clear(self) -> None:
        self._write_of = {}
        self._compact()

    def scores(
        self, queries: np.ndarray, allowed: np.ndarray | set[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of the fresh rows.

        Args:
            queries: float32 [q, dims].
            allowed: only these rows count (a filter's matches): a bool mask indexed by row
                (covering every fresh row), or a set of rows; None = all.

        Returns:
            (scores float32 [q, m], rows int64 [m]) over the m live (and allowed) slots.
        """
        rows = self._rows[: self._used]
        live = rows != DEAD
        if isinstance(allowed, np.ndarray):
            live &= allowed[np.where(live, rows, 0)]
        elif allowed is not None:
            live &= np.isin(rows, np.fromiter(allowed, dtype=np.int64, count=len(allowed)))
        if live.all():
            return queries @ self._vectors[: self._used].T, rows
        slots = np.flatnonzero(live)
        return queries @ self._vectors[slots].T, rows[slots]

    def _grow(self) -> None:
        size = 2 * len(self._rows)
        rows = np.full(size, DEAD, dtype=np.int64)
        rows[: self._used] = self._rows[: self._used]
        vectors = np.zeros((size, self.dims), dtype=np.float32)
        vectors[: self._used] = self._vectors[: self._used]
        self._rows, self._vectors = rows, vectors

    def _compact(self) -> None:
        """Moves the live slots to the front, in write order."""
        order = [self._slot_of[row] for row in self._write_of]
        count = len(order)
        size = max(INITIAL_SLOTS, 1 << max(count - 1, 0).bit_length())
        rows = np.full(size, DEAD, dtype=np.int64)
        vectors = np.zeros((size, self.dims), dtype=np.float32)
        if count:
            rows[:count] = self._rows[order]
            vectors[:count] = self._vectors[order]
        self._rows, self._vectors, self._used = rows, vectors, count
        self._slot_of = {int(row): slot for slot, row in enumerate(rows[:count])}
