"""Snapshot load on shard start: decode the snapshot file and fill the empty index.

Compares, on the same snapshot bytes and in alternating rounds, the shard's current path
(services.indexer.durability decoding + the first VectorIndex.upsert into an empty index,
which fills it without a per-row loop) with the previous one, re-created here: ids
converted one by one, one ItemMeta per row, and a row-by-row upsert (forced by a
write before the load). Object-store and Redis time are not included (see
bench/index_ops.py for recovery on the real stack).

    .venv/bin/python bench/snapshot_load.py --n 200000
Writes bench/results/snapshot_load.json (or --out).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.common.index_types import ItemMeta  # noqa: E402
from services.indexer import durability  # noqa: E402
from services.indexer.vector_index import VectorIndex  # noqa: E402


def snapshot_bytes(n: int, dims: int, labels: int) -> bytes:
    """An .npz laid out as ObjectSnapshotStore.save writes it."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dims), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    meta = [ItemMeta(f"label{i % labels}", {}) for i in range(n)]
    buffer = io.BytesIO()
    np.savez(
        buffer,
        ids=np.asarray([f"img-{i:08d}" for i in range(n)], dtype=str),
        vectors=vectors,
        metadata=np.asarray([durability._metadata_json(meta)], dtype=str),
        params=np.asarray([""], dtype=str),
    )
    return buffer.getvalue()


def load_current(raw: bytes, dims: int) -> tuple[float, float, VectorIndex]:
    t0 = time.perf_counter()
    with np.load(io.BytesIO(raw), allow_pickle=False) as data:
        ids = data["ids"].tolist()
        metadata = durability._metadata_from_json(str(data["metadata"][0]))
        vectors = data["vectors"]
    t1 = time.perf_counter()
    index = VectorIndex(dims, exact_threshold=10**9)
    index.upsert(ids, vectors, metadata)
    return t1 - t0, time.perf_counter() - t1, index


def load_previous(raw: bytes, dims: int) -> tuple[float, float, VectorIndex]:
    t0 = time.perf_counter()
    with np.load(io.BytesIO(raw), allow_pickle=False) as data:
        ids = [str(i) for i in data["ids"]]
        metadata = [
            ItemMeta(label, dict(attributes))
            for label, attributes in json.loads(str(data["metadata"][0]))
        ]
        vectors = data["vectors"]
    t1 = time.perf_counter()
    index = VectorIndex(dims, exact_threshold=10**9)
    index.upsert(["warm-up"], vectors[:1])  # a used index takes the row-by-row path
    index.delete(["warm-up"])
    index.upsert(ids, vectors, metadata)
    return t1 - t0, time.perf_counter() - t1, index


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dims", type=int, default=256)
    ap.add_argument("--labels", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "snapshot_load.json"))
    args = ap.parse_args()
    load_before = [round(x, 2) for x in os.getloadavg()]
    raw = snapshot_bytes(args.n, args.dims, args.labels)
    runs: dict[str, list[dict[str, float]]] = {"current": [], "previous": []}
    for _ in range(args.rounds):
        for name, load in (("previous", load_previous), ("current", load_current)):
            decode_s, fill_s, index = load(raw, args.dims)
            assert index.size == args.n
            runs[name].append({"decode_s": round(decode_s, 3), "fill_s": round(fill_s, 3)})
            print(name, runs[name][-1], flush=True)
            del index
    best = {name: min(r["decode_s"] + r["fill_s"] for r in rounds) for name, rounds in runs.items()}
    out = {
        "config": {"n": args.n, "dims": args.dims, "labels": args.labels, "rounds": args.rounds},
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpus": os.cpu_count(),
        "snapshot_mb": round(len(raw) / 2**20, 1),
        "load_avg_before": load_before,
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "runs": runs,
        "best_total_s": {k: round(v, 3) for k, v in best.items()},
        "speedup": round(best["previous"] / best["current"], 2),
    }
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out["best_total_s"]), "speed-up", out["speedup"])


if __name__ == "__main__":
    main()
