"""What returning vectors with shard hits costs (query expansion), in process, per shard answer.

    nice -n 10 .venv/bin/python bench/qe_vector_transfer.py

A shard holding 20,000 random unit vectors answers one query with k hits, with and without
vectors_for_top = k: the time to build the answer (IndexerServicer._neighbors, which looks the
vectors up), serialise, parse and decode it as the gateway does; the search itself is excluded.
Writes bench/results/qe_vector_transfer.json. Network time is not included: on a LAN the extra
bytes (k * dims * 4) add about their size / bandwidth.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.common.metrics import ServiceMetrics  # noqa: E402
from services.gateway.clients import _vector  # noqa: E402
from services.indexer.core import Shard  # noqa: E402
from services.indexer.servicer import IndexerServicer  # noqa: E402
from visearch.v1 import indexer_pb2  # noqa: E402

SIZE = 20_000
REPEATS = 50
OUT = ROOT / "bench" / "results" / "qe_vector_transfer.json"


def one(servicer: IndexerServicer, query: np.ndarray, k: int, top: int) -> tuple[float, int]:
    """Milliseconds (best of REPEATS) and response bytes to build, serialise, parse and decode
    one search's answer (the search itself, the same either way, is left out)."""
    (neighbours,), _ = servicer._shard.search("c", query, k)
    best, size = float("inf"), 0
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        response = indexer_pb2.IndexSearchResponse(
            results=[indexer_pb2.NeighborList(neighbors=servicer._neighbors("c", neighbours, top))]
        )
        data = response.SerializeToString()
        parsed = indexer_pb2.IndexSearchResponse.FromString(data)
        for neighbour in parsed.results[0].neighbors:
            _vector(neighbour.vector)
        best = min(best, (time.perf_counter() - t0) * 1000.0)
        size = len(data)
    return best, size


def main() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for dims in (256, 1280):
        vectors = rng.normal(size=(SIZE, dims)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        shard = Shard(0, exact_threshold=SIZE + 1)
        shard.upsert("c", [f"id-{i}" for i in range(SIZE)], vectors)
        servicer = IndexerServicer(shard, ServiceMetrics(f"bench-{dims}"))
        for k in (5, 50, 100):
            plain_ms, plain_bytes = one(servicer, vectors[:1], k, 0)
            with_ms, with_bytes = one(servicer, vectors[:1], k, k)
            rows.append(
                {
                    "dims": dims,
                    "k": k,
                    "ms_without_vectors": round(plain_ms, 3),
                    "ms_with_vectors": round(with_ms, 3),
                    "bytes_without_vectors": plain_bytes,
                    "bytes_with_vectors": with_bytes,
                }
            )
            print(rows[-1], flush=True)
    OUT.write_text(
        json.dumps(
            {"command": "nice -n 10 .venv/bin/python bench/qe_vector_transfer.py", "rows": rows},
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
