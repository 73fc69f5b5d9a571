"""Writes docs/benchmarks.md from the JSON results in bench/results/ (no hand-typed numbers).

.venv/bin/python bench/render_report.py
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def e2e_section(report: dict) -> list[str]:
    lines = [
        "## End to end on ukbench1000 (`bench/e2e_ukbench.py`)",
        "",
        f"{report['images']} images through a local stack with 2 shards on this machine "
        f"({report['machine']['cpus']} cores); load average before/after "
        f"{report['load_average_before']} / {report.get('load_average_after')} "
        "(other benchmarks ran at the same time, so latencies are pessimistic; "
        "quality numbers do not depend on load). "
        f"Stack start {report['stack_start_s']} s; ingest {report['ingest_images_per_s']} images/s "
        "(decode + embedding + RootSIFT + S3 + Redis + shard, 2 clients, batches of 16).",
        "",
        "| rerank | N-S | mAP@100 | P@1 | p50 ms (1 client) | p95 ms (1 client) "
        "| p50 ms (4 clients) | p95 ms (4 clients) | mean stage ms (1 client) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for mode, m in report["modes"].items():
        stages = ", ".join(f"{k} {v:.0f}" for k, v in m["mean_stage_ms_single_client"].items() if v)
        lines.append(
            f"| {mode} | {m['ns_score']:.3f} | {m['map_at_100']:.4f} | {m['p_at_1']:.3f} "
            f"| {m['latency_ms_single_client']['p50']:.0f} "
            f"| {m['latency_ms_single_client']['p95']:.0f} "
            f"| {m['latency_ms_4_clients']['p50']:.0f} | {m['latency_ms_4_clients']['p95']:.0f} "
            f"| {stages} |"
        )
    return lines + [""]


def model_section(report: dict) -> list[str]:
    lines = [
        "## Global model input size (`bench/global_model_input_size.py`)",
        "",
        f"MobileNetV2 + GeM, ONNX Runtime CPU, {report['ort_threads']} threads, "
        f"{report['n_images']} ukbench images, brute-force cosine search. "
        "The default is 288x288.",
        "",
        "| input | N-S | mAP | P@1 | ms/image (batch 16) | ms (batch 1) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['name']} | {r['ns_score']:.3f} | {r['map']:.4f} | {r['p_at_1']:.3f} "
            f"| {r['infer_ms_per_image_b16']:.1f} | {r['latency_ms_b1']:.1f} |"
        )
    return lines + [""]


def verify_section(report: dict) -> list[str]:
    extraction = report["extraction"]["ms_per_image"]
    pairs = report["verification"]["blas_1_thread"]
    sep = report["separability"]
    reranker = report["reranker"]
    lines = [
        "## Geometric verification (`bench/verify_speed.py`)",
        "",
        "RootSIFT (at most 1,000 features, long side 640) and one-to-one matching + MAGSAC "
        "homography on ukbench images with at least 950 features, BLAS on one thread.",
        "",
        "| what | median ms | p90 ms |",
        "| --- | --- | --- |",
        f"| extract RootSIFT, one 640x480 image | {extraction['median']:.1f} "
        f"| {extraction['p90']:.1f} |",
    ]
    for group in ("same_group", "different_group"):
        timing = pairs[group]["verify_ms_best_of_repeats"]
        lines.append(
            f"| verify one pair ({group.replace('_', ' ')}) | {timing['median']:.2f} "
            f"| {timing['p90']:.2f} |"
        )
    lines += [
        "",
        f"Re-ranker, {reranker['candidates']} candidates: {reranker['warm_cache_ms_per_candidate']}"
        f" ms per candidate with a warm feature cache, {reranker['cold_cache_ms_per_candidate']} "
        "cold (reading features from the store).",
        f"Separability on the first {sep['images']} images: at the minimum of 8 inliers, "
        f"{sep['rate_at_min_inliers']['same_group']:.1%} of same-object pairs and "
        f"{sep['rate_at_min_inliers']['different_group']:.1%} of different-object pairs verify "
        "(most inliers of a different-object pair: "
        f"{sep['inlier_percentiles']['different_group_max']}).",
        "",
    ]
    return lines


def main() -> None:
    lines = [
        "# Benchmarks",
        "",
        "Every number here is rendered from `bench/results/*.json` by `bench/render_report.py`; "
        "rerun a benchmark, then the renderer. Machine: the 2-core, 24 GiB development/CI kind, "
        "no GPU (this task had no GPU machine lent, so no CUDA-provider figures yet).",
        "",
    ]
    for name, section in (
        ("e2e_ukbench.json", e2e_section),
        ("global_model_input_size.json", model_section),
        ("verify_speed.json", verify_section),
    ):
        report = load(name)
        if report is not None:
            lines += section(report)
    lines += [
        "## Index",
        "",
        "- Recall and throughput of the shard index against brute force and faiss: "
        "[benchmarks_ann.md](benchmarks_ann.md) (`bench/ann_recall.py`).",
        "- Upsert throughput with the write-ahead log, recovery after `kill -9`, fan-out over "
        "1/2/4 shards: [benchmarks_index_ops.md](benchmarks_index_ops.md) (`bench/index_ops.py`).",
        "",
    ]
    (ROOT / "docs" / "benchmarks.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
