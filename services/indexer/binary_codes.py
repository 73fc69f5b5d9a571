"""Binary codes: a memory-lean first stage before exact re-scoring.

An embedding becomes one bit per dimension (above its threshold or not), packed
8 per byte: a 256-d float32 vector (1,024 bytes) becomes 32 bytes, a 1,280-d
one (5,120 bytes) 160 bytes. A query's codes are compared with every stored
code by Hamming distance (XOR + popcount over uint64 words); the best
`candidates` are then re-scored exactly with their float vectors, which may
live outside RAM (a numpy memmap, or rows fetched from storage) because only
`candidates` rows per query are read.

Thresholds: "sign" (0 for every dimension) suits centred embeddings such as a
trained projection head's; "mean" (each dimension's mean over the indexed
vectors) also suits non-negative ones such as GeM-pooled backbone features,
whose sign bits would all be 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

THRESHOLDS = ("sign", "mean")
BLOCK_ROWS = 65_536


def fit_thresholds(vectors: np.ndarray, method: str) -> np.ndarray:
    """vectors float32 [n, d] -> thresholds float32 [d]."""
    if method == "sign":
        return np.zeros(vectors.shape[1], dtype=np.float32)
    if method == "mean":
        return vectors.mean(axis=0, dtype=np.float64).astype(np.float32)
    raise ValueError(f"threshold method {method!r}; use one of {THRESHOLDS}")


def encode(vectors: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """float32 [n, d] -> uint8 [n, ceil(d / 64) * 8]: one bit per dimension, padded with
    zero bits to whole 64-bit words."""
    bits = vectors > thresholds[None, :]
    words = -(-vectors.shape[1] // 64)
    padded = np.zeros((vectors.shape[0], words * 64), dtype=bool)
    padded[:, : vectors.shape[1]] = bits
    return np.packbits(padded, axis=1)


def hamming_topk(
    query_codes: np.ndarray, codes: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [q, B] x uint8 [n, B] -> (rows int64 [q, k'], distances int32 [q, k']) with
    k' = min(k, n), nearest first (ties by row)."""
    n = codes.shape[0]
    k = min(k, n)
    q64 = np.ascontiguousarray(query_codes).view(np.uint64)
    db64 = np.ascontiguousarray(codes).view(np.uint64)
    best_rows = np.zeros((len(q64), 0), dtype=np.int64)
    best_dist = np.zeros((len(q64), 0), dtype=np.int32)
    for start in range(0, n, BLOCK_ROWS):
        block = db64[start : start + BLOCK_ROWS]
        dist = np.zeros((len(q64), len(block)), dtype=np.int32)
        for word in range(q64.shape[1]):
            dist += np.bitwise_count(q64[:, word, None] ^ block[None, :, word]).astype(np.int32)
        take = min(k, len(block))
        part = np.argpartition(dist, take - 1, axis=1)[:, :take]
        rows = np.concatenate([best_rows, part + start], axis=1)
        dists = np.concatenate([best_dist, np.take_along_axis(dist, part, axis=1)], axis=1)
        order = np.lexsort((rows, dists), axis=1)[:, :k]
        best_rows = np.take_along_axis(rows, order, axis=1)
        best_dist = np.take_along_axis(dists, order, axis=1)
    return best_rows, best_dist


@dataclass
class BinaryIndex:
    """Codes in memory; float vectors read only for the candidates being re-scored.

    `vectors(rows)` returns float32 [len(rows), d] for row numbers (int64 [m]): an array's
    fancy indexing, a memmap's, or a fetch from storage.
    """

    thresholds: np.ndarray  # float32 [d]
    codes: np.ndarray  # uint8 [n, B]
    vectors: Callable[[np.ndarray], np.ndarray]

    @classmethod
    def build(
        cls, vectors: np.ndarray, method: str, store: Callable[[np.ndarray], np.ndarray] | None
    ) -> BinaryIndex:
        thresholds = fit_thresholds(vectors, method)
        return cls(thresholds, encode(vectors, thresholds), store or (lambda rows: vectors[rows]))

    @property
    def bytes_per_vector(self) -> int:
        return int(self.codes.shape[1])

    def search(self, queries: np.ndarray, k: int, candidates: int) -> tuple[np.ndarray, np.ndarray]:
        """queries float32 [q, d] -> (rows int64 [q, k], scores float32 [q, k]): Hamming
        top-`candidates`, then exact inner products on those; candidates <= k skips
        re-scoring (scores are then -Hamming distance)."""
        rows, dist = hamming_topk(encode(queries, self.thresholds), self.codes, max(k, candidates))
        if candidates <= k:
            return rows[:, :k], -dist[:, :k].astype(np.float32)
        out_rows = np.empty((len(queries), min(k, rows.shape[1])), dtype=np.int64)
        out_scores = np.empty(out_rows.shape, dtype=np.float32)
        for i, query in enumerate(queries):
            order = np.sort(rows[i])  # sequential reads from a memmap or a store
            scores = self.vectors(order) @ query
            best = np.argsort(-scores, kind="stable")[: out_rows.shape[1]]
            out_rows[i], out_scores[i] = order[best], scores[best]
        return out_rows, out_scores
