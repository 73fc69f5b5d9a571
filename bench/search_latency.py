"""Single-client search latency of a real local stack against one raw embedding.

Starts a local stack (visearch.localstack.running_stack, 2 shards), ingests --images images
(../shared/datasets/ukbench1000 when present, else visearch.demo sample crops), then for
each of --queries query images, one after the other and in the same loop so that all three
see the same machine load:

1. raw: one in-process ONNX Runtime embedding of the image with the stack's default global
   model (decode + resize + model, one image, the embedder's preprocessing), the baseline;
2. a `none` search (global only) through the gateway;
3. a `geometric` search (global + RootSIFT re-rank of the collection's rerank depth).

Reports p50/p99 of each, mean per-stage timings (SearchOutcome.timings_ms), the verifier's
ms per candidate (its `rerank` stage over the candidates re-ranked), and the ratios
none/raw (target <= 1.3) and geometric/none (target <= 2.5).

Then, in process (stack down): the re-ranker (batched matching, services/verifier/core.py)
vs verifying each candidate on its own (geometry.verify_pair on the same worker count, the
former code path) on RootSIFT of the first images, warm feature cache, one BLAS thread:
ms per candidate of each and their inlier counts (equal up to float rounding).

    flock /tmp/visearch-heavy.lock .venv/bin/python bench/search_latency.py [--images 400]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.common.imaging import ImageLimits, decode_rgb  # noqa: E402
from services.common.local_features import feature_key  # noqa: E402
from services.common.model_registry import load_local  # noqa: E402
from services.common.objectstore import InMemoryObjectStore  # noqa: E402
from services.embedder.core import GlobalModel, create_session  # noqa: E402
from services.embedder.rootsift import extract_rootsift  # noqa: E402
from services.verifier.core import (  # noqa: E402
    DEFAULT_MAX_WORKERS,
    Candidate,
    FeatureCache,
    GeometricReranker,
)
from services.verifier.fusion import FusionSettings  # noqa: E402
from services.verifier.geometry import GeometrySettings, verify_pair  # noqa: E402
from visearch import datasets, localstack  # noqa: E402
from visearch.client import VisearchClient  # noqa: E402
from visearch.jobs import ingest_entries  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATASET = ROOT.parent / "shared/datasets/ukbench1000"
DEFAULT_OUT = ROOT / "bench/results/search_latency.json"
COLLECTION = "latency"
WARMUP = 3
K = 10
TARGET_NONE_OVER_RAW = 1.3
TARGET_GEOMETRIC_OVER_NONE = 2.5
TARGET_VERIFY_MS_PER_CANDIDATE = 2.0
VERIFY_REPEATS = 5
LIMITS = ImageLimits(max_bytes=50_000_000)


def entries_for(dataset: Path, count: int) -> list[datasets.ImageEntry]:
    if (dataset / "groundtruth.csv").exists():
        return datasets.ukbench(dataset, limit=count)
    from visearch import demo  # the bundled sample photos when the dataset is not there

    paths = demo.write_samples(Path(tempfile.mkdtemp(prefix="search-latency-")))
    return [datasets.ImageEntry(path.stem, path, path.stem) for path in paths][:count]


def raw_embedder(models_dir: Path, threads: int) -> GlobalModel:
    manifest, path = load_local(localstack.find_model_dir(models_dir))
    return GlobalModel(manifest, create_session(path, ["CPUExecutionProvider"], threads))


def raw_embed_ms(model: GlobalModel, data: bytes) -> float:
    t0 = time.perf_counter()
    model.run(model.preprocess(decode_rgb(data, LIMITS))[None])
    return (time.perf_counter() - t0) * 1000.0


def search_ms(client: VisearchClient, data: bytes, rerank: str) -> tuple[float, dict[str, float]]:
    t0 = time.perf_counter()
    result = client.search(COLLECTION, data, k=K, rerank=rerank)
    return (time.perf_counter() - t0) * 1000.0, result.timings_ms


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(float(np.percentile(ordered, 99)), 2),
        "mean_ms": round(statistics.fmean(ordered), 2),
    }


def mean_stages(all_timings: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({key for timings in all_timings for key in timings})
    return {key: round(statistics.fmean(t.get(key, 0.0) for t in all_timings), 2) for key in keys}


def verifier_in_process(entries: list[datasets.ImageEntry], candidates: int) -> dict[str, object]:
    """Batched re-rank vs pair-by-pair verification of the same candidates (see the module
    docstring); several queries, the fastest of VERIFY_REPEATS runs of each per query."""
    from concurrent.futures import ThreadPoolExecutor

    features = [
        extract_rootsift(decode_rgb(entry.path.read_bytes(), LIMITS))
        for entry in entries[: candidates + 1]
    ]
    store = InMemoryObjectStore()
    for i, f in enumerate(features):
        store.put(feature_key("rootsift", f"s{i}"), f.to_npz())
    settings = GeometrySettings()
    batched_ms, pairwise_ms, differences, verified = [], [], [], 0
    with (
        GeometricReranker(store, settings, FusionSettings(), FeatureCache()) as reranker,
        ThreadPoolExecutor(DEFAULT_MAX_WORKERS) as pool,
    ):
        for q in range(0, 4 * 4, 4):  # one query per UKBench group of the first four
            query = features[q]
            others = [i for i in range(len(features)) if i != q][:candidates]
            cands = [Candidate(f"c{i}", f"s{i}", 0.5) for i in others]
            reranker.rerank(query, cands)  # warm the cache
            best_new = best_old = float("inf")
            for _ in range(VERIFY_REPEATS):
                t0 = time.perf_counter()
                new = reranker.rerank(query, cands)
                best_new = min(best_new, time.perf_counter() - t0)
                t0 = time.perf_counter()
                old = list(
                    pool.map(
                        verify_pair,
                        [query] * len(others),
                        [features[i] for i in others],
                        [settings] * len(others),
                    )
                )
                best_old = min(best_old, time.perf_counter() - t0)
            batched_ms.append(best_new * 1000 / len(cands))
            pairwise_ms.append(best_old * 1000 / len(cands))
            inliers = {r.id: r.inliers for r in new}
            for i, evidence in zip(others, old, strict=True):
                differences.append(abs(inliers[f"c{i}"] - evidence.inliers))
                verified += evidence.inliers >= settings.min_inliers
    return {
        "candidates": candidates,
        "queries": len(batched_ms),
        "batched_ms_per_candidate": round(statistics.median(batched_ms), 3),
        "pairwise_ms_per_candidate": round(statistics.median(pairwise_ms), 3),
        "speedup": round(statistics.median(pairwise_ms) / statistics.median(batched_ms), 2),
        "max_inlier_difference": max(differences),
        "pairs_with_inlier_difference": sum(d > 0 for d in differences),
        "pairs": len(differences),
        "pairs_verified": verified,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    entries = entries_for(args.dataset, args.images)
    queries = [entry.path.read_bytes() for entry in entries[: args.queries]]
    report: dict[str, object] = {
        "dataset": str(args.dataset) if args.dataset.exists() else "visearch.demo samples",
        "images": len(entries),
        "queries": len(queries),
        "k": K,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    # The embedder's default ONNX Runtime threads (VISEARCH_ORT_THREADS unset: 0 = ORT's own).
    model = raw_embedder(args.models, threads=0)
    with tempfile.TemporaryDirectory() as state_dir:
        started = time.perf_counter()
        with localstack.running_stack(Path(state_dir), shards=2) as stack:
            report["stack_start_s"] = round(time.perf_counter() - started, 2)
            with VisearchClient(stack.gateway, timeout_s=120) as client:
                report["ingest_images_per_s"] = round(
                    ingest_entries(client, COLLECTION, entries, batch_size=16), 2
                )
                depth = client.stats(COLLECTION).collection.rerank_depth
                for data in queries[:WARMUP]:
                    raw_embed_ms(model, data)
                    search_ms(client, data, "none")
                    search_ms(client, data, "geometric")
                raw, none, geometric = [], [], []
                none_timings, geometric_timings = [], []
                for data in queries:
                    raw.append(raw_embed_ms(model, data))
                    ms, timings = search_ms(client, data, "none")
                    none.append(ms)
                    none_timings.append(timings)
                    ms, timings = search_ms(client, data, "geometric")
                    geometric.append(ms)
                    geometric_timings.append(timings)
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    report["rerank_depth"] = depth
    report["raw_embedding"] = summary(raw)
    report["none"] = {**summary(none), "stages_mean_ms": mean_stages(none_timings)}
    report["geometric"] = {**summary(geometric), "stages_mean_ms": mean_stages(geometric_timings)}
    per_candidate = [t["rerank"] / depth for t in geometric_timings if "rerank" in t]
    report["verifier_ms_per_candidate"] = summary(per_candidate) if per_candidate else {}
    report["verifier_in_process"] = verifier_in_process(entries, depth)
    report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    none_p50 = report["none"]["p50_ms"]  # type: ignore[index]
    report["ratios"] = {
        "none_over_raw_p50": round(none_p50 / report["raw_embedding"]["p50_ms"], 2),  # type: ignore[index]
        "geometric_over_none_p50": round(report["geometric"]["p50_ms"] / none_p50, 2),  # type: ignore[index]
        "targets": {
            "none_over_raw_p50": TARGET_NONE_OVER_RAW,
            "geometric_over_none_p50": TARGET_GEOMETRIC_OVER_NONE,
            "verifier_ms_per_candidate_p50": TARGET_VERIFY_MS_PER_CANDIDATE,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
