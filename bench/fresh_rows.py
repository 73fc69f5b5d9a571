"""Exact scoring of fresh rows (written since the last ScaNN build) per query: contiguous
buffer (``services.indexer.fresh_rows.FreshRows``) vs the gather it replaced.

Baseline, as ``VectorIndex._with_fresh`` did before: list the fresh rows from a dict,
gather their vectors out of the index matrix (``matrix[rows]``), one product, top k. New:
one product over FreshRows' buffer, top k. Same queries, same rows, interleaved repetitions
(one query at a time, k = 10, one BLAS thread as a shard's search thread would mostly get);
both must return the same top k. The index matrix holds N = 100k rows; fresh rows are drawn
at random among them, as writes land anywhere.

    .venv/bin/python bench/fresh_rows.py [--repeats 200]
Writes bench/results/fresh_rows.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.indexer.fresh_rows import FreshRows  # noqa: E402

MATRIX_ROWS = 100_000
K = 10


def top_k(scores: np.ndarray, rows: np.ndarray) -> list[int]:
    """scores float32 [1, m] of rows int64 [m] → the k best rows, best first."""
    top = np.argpartition(-scores[0], K - 1)[:K]
    return rows[top[np.argsort(-scores[0, top], kind="stable")]].tolist()


def run(fresh_count: int, dims: int, repeats: int, rng: np.random.Generator) -> dict:
    matrix = rng.standard_normal((MATRIX_ROWS, dims), dtype=np.float32)
    chosen = rng.choice(MATRIX_ROWS, fresh_count, replace=False)
    fresh_dict = {int(row): n for n, row in enumerate(chosen)}
    fresh = FreshRows(dims)
    for n, row in enumerate(chosen):
        fresh.write(int(row), matrix[row], n)
    queries = rng.standard_normal((repeats, 1, dims), dtype=np.float32)
    gather_ms, buffer_ms = [], []
    for query in queries:
        t0 = time.perf_counter()
        rows = np.asarray(list(fresh_dict), dtype=np.int64)
        want = top_k(query @ matrix[rows].T, rows)
        t1 = time.perf_counter()
        scores, buffer_rows = fresh.scores(query)
        got = top_k(scores, buffer_rows)
        t2 = time.perf_counter()
        assert got == want, "the buffer and the gather disagree"
        gather_ms.append((t1 - t0) * 1e3)
        buffer_ms.append((t2 - t1) * 1e3)
    gather_p50, buffer_p50 = float(np.median(gather_ms)), float(np.median(buffer_ms))
    return {
        "fresh_rows": fresh_count,
        "dims": dims,
        "gather_p50_ms": round(gather_p50, 3),
        "buffer_p50_ms": round(buffer_p50, 3),
        "speedup_p50": round(gather_p50 / buffer_p50, 2),
        "buffer_extra_mb": round(fresh_count * dims * 4 / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fresh_rows.json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    results = []
    with threadpool_limits(limits=1, user_api="blas"):
        for dims in (256, 1280):
            for fresh_count in (1_000, 5_000, 20_000):
                results.append(run(fresh_count, dims, args.repeats, rng))
                print(results[-1], flush=True)
    payload = {
        "benchmark": "fresh_rows",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_avg": list(os.getloadavg()),
        "config": {"matrix_rows": MATRIX_ROWS, "k": K, "repeats": args.repeats},
        "wall_s": round(time.perf_counter() - started, 1),
        "results": results,
    }
    args.out.write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    main()
