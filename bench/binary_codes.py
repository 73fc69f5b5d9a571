"""Binary codes (services/indexer/binary_codes.py) vs float search: memory and recall@10.

    python bench/binary_codes.py [--n 100000] [--dims 256] [--nq 1000] [--limit 1000]

Two data sets:

* ukbench1000 embedded in-process with the served global model (models/global/*, each
  model folder found; ONNX Runtime CPU). Queries: every image against all 1,000. Besides
  recall@10 against exact float search, the UKBench N-S score (same-object images in the
  top 4, max 4) of float search, Hamming only, and Hamming + exact re-scoring.
* synthetic: `--n` L2-normalised vectors of `--dims` from bench/ann_recall.py's
  MixtureModel, `--nq` queries from the same model.

For each threshold method (sign, mean) and re-scoring depth (candidates; 0 = Hamming only)
it records recall@10 against exact inner-product search and the mean query time
(numpy, one thread of this shared machine: relative numbers only). The float vectors for
re-scoring are read from a memory-mapped .npy, so only the codes need to stay resident.
faiss IndexBinaryFlat times the Hamming stage as a C++ reference when faiss is installed.
Writes bench/results/binary_codes.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ann_recall import MixtureModel, exact_topk  # noqa: E402

from services.common.imaging import ImageLimits  # noqa: E402
from services.common.model_registry import load_local  # noqa: E402
from services.embedder.core import (  # noqa: E402
    BatchingSettings,
    EmbedderCore,
    GlobalModel,
    create_session,
)
from services.indexer.binary_codes import (  # noqa: E402
    THRESHOLDS,
    BinaryIndex,
    encode,
    hamming_topk,
)

K = 10
DEPTHS = (0, 20, 50, 100, 200)
QUERY_CHUNK = 100


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(f[:K]) & set(t[:K])) / K for f, t in zip(found, truth, strict=True)])
    )


def ns_score(rankings: np.ndarray, groups: np.ndarray) -> float:
    """Mean number of the query's group among its top 4 (the query itself included)."""
    return float(np.mean([(groups[r[:4]] == groups[i]).sum() for i, r in enumerate(rankings)]))


def timed_search(index: BinaryIndex, queries: np.ndarray, candidates: int) -> tuple:
    rows, elapsed = [], 0.0
    for start in range(0, len(queries), QUERY_CHUNK):
        t0 = time.perf_counter()
        found, _ = index.search(queries[start : start + QUERY_CHUNK], K, candidates)
        elapsed += time.perf_counter() - t0
        rows.append(found)
    return np.concatenate(rows), 1000.0 * elapsed / len(queries)


def float_search(base: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    truth, _ = exact_topk(base, queries, K)
    return truth, 1000.0 * (time.perf_counter() - t0) / len(queries)


def faiss_hamming_ms(codes: np.ndarray, query_codes: np.ndarray) -> float | None:
    try:
        import faiss
    except ImportError:
        return None
    faiss.omp_set_num_threads(1)
    index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
    index.add(codes)
    t0 = time.perf_counter()
    index.search(query_codes, 200)
    return 1000.0 * (time.perf_counter() - t0) / len(query_codes)


def evaluate(name: str, base: np.ndarray, queries: np.ndarray, groups: np.ndarray | None) -> dict:
    truth, float_ms = float_search(base, queries)
    result: dict = {
        "name": name,
        "n": int(len(base)),
        "dims": int(base.shape[1]),
        "queries": int(len(queries)),
        "float_bytes_per_vector": int(base.shape[1] * 4),
        "float_exact_ms_per_query": round(float_ms, 3),
        "methods": [],
    }
    if groups is not None:
        result["float_ns_score"] = round(ns_score(truth, groups), 4)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "vectors.npy"
        np.save(path, base)
        stored = np.load(path, mmap_mode="r")
        for method in THRESHOLDS:
            index = BinaryIndex.build(base, method, lambda rows, s=stored: np.asarray(s[rows]))
            bits_set = float(np.unpackbits(index.codes, axis=1).mean())
            entry: dict = {
                "threshold": method,
                "code_bytes_per_vector": index.bytes_per_vector,
                "memory_ratio": round(base.shape[1] * 4 / index.bytes_per_vector, 1),
                "share_of_bits_set": round(bits_set, 3),
                "depths": [],
            }
            for depth in DEPTHS:
                found, ms = timed_search(index, queries, depth)
                row = {
                    "candidates": depth,
                    "recall_at_10": round(recall(found, truth), 4),
                    "ms_per_query": round(ms, 3),
                }
                if groups is not None:
                    row["ns_score"] = round(ns_score(found, groups), 4)
                entry["depths"].append(row)
                print(name, method, row, flush=True)
            query_codes = encode(queries, index.thresholds)
            t0 = time.perf_counter()
            for start in range(0, len(queries), QUERY_CHUNK):
                hamming_topk(query_codes[start : start + QUERY_CHUNK], index.codes, 200)
            entry["numpy_hamming_top200_ms_per_query"] = round(
                1000.0 * (time.perf_counter() - t0) / len(queries), 3
            )
            faiss_ms = faiss_hamming_ms(index.codes, query_codes)
            if faiss_ms is not None:
                entry["faiss_binary_flat_top200_ms_per_query"] = round(faiss_ms, 3)
            result["methods"].append(entry)
    return result


def embed_ukbench(model_dir: Path, dataset: Path, limit: int) -> tuple[np.ndarray, np.ndarray]:
    manifest, path = load_local(model_dir)
    core = EmbedderCore(
        GlobalModel(manifest, create_session(path, ["CPUExecutionProvider"], 0)),
        ImageLimits(max_bytes=20_000_000),
        BatchingSettings(max_batch=16, max_wait_ms=1.0),
        max_local_features=100,
    )
    with (dataset / "groundtruth.csv").open() as handle:
        rows = list(csv.DictReader(handle))[:limit]
    try:
        vectors = np.concatenate(
            [
                core.embed_global(
                    [(dataset / "images" / r["filename"]).read_bytes() for r in chunk]
                )
                for chunk in (rows[i : i + 16] for i in range(0, len(rows), 16))
            ]
        )
    finally:
        core.close()
    return vectors, np.asarray([int(r["group"]) for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dims", type=int, default=256)
    parser.add_argument("--nq", type=int, default=1000)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=1000, help="ukbench images")
    parser.add_argument("--dataset", type=Path, default=ROOT.parent / "shared/datasets/ukbench1000")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/binary_codes.json")
    args = parser.parse_args()
    report: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
        "k": K,
        "datasets": [],
    }
    for model_dir in sorted((ROOT / "models" / "global").glob("*/")):
        if not (model_dir / "manifest.json").exists():
            continue
        t0 = time.perf_counter()
        vectors, groups = embed_ukbench(model_dir, args.dataset, args.limit)
        print(f"embedded {len(vectors)} with {model_dir.name} in {time.perf_counter() - t0:.0f} s")
        report["datasets"].append(
            evaluate(f"ukbench{len(vectors)} / {model_dir.name}", vectors, vectors, groups)
        )
    model = MixtureModel(args.dims, args.clusters, seed=0)
    base, _ = model.sample(args.n, seed=1)
    queries, _ = model.sample(args.nq, seed=2)
    report["datasets"].append(evaluate(f"mixture {args.n}x{args.dims}", base, queries, None))
    report["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
