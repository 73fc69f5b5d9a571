"""Writes docs/benchmarks.md from the JSON results in bench/results/ (no hand-typed numbers).

.venv/bin/python bench/render_report.py
"""

from __future__ import annotations

import json
from pathlib import Path

from e2e_100k_report import e2e_100k_section
from local_features_report import local_features_section
from report_index import index_sections
from triplet_report import (
    triplet_flowers_section,
    triplet_seeds_section,
    triplet_timing_section,
    triplet_ukbench_section,
)

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


def overload_section(report: dict) -> list[str]:
    levels = report["levels"]
    ratio_key = next(k for k in report if k.startswith("goodput_") and k.endswith("_over_peak"))
    lines = [
        "## Overload: 1 to 64 clients with 1 s deadlines (`bench/overload.py`)",
        "",
        f"A local stack with 2 shards, {report['images']} images ({report['dataset']}); "
        f"closed-loop clients, each sending a global-only search (k = 10) with a "
        f"{report['deadline_s']:g} s deadline as soon as the last one is answered, "
        f"{report['seconds_per_level']:g} s per level, on a channel without retries (a "
        "`RESOURCE_EXHAUSTED` answer is honoured: the client waits its retry pushback). "
        "Goodput: searches answered OK within the deadline per second. Accepted: every answer "
        "but `RESOURCE_EXHAUSTED` (a search that ran out of time counts at its deadline). "
        f"Peak goodput {report['peak_goodput_qps']:g}/s; "
        f"{ratio_key.replace('_', ' ')}: **{report[ratio_key]:.2f}**. The 1-minute load "
        "average is given per level: other benchmarks shared the 2 cores, so compare levels "
        "with that in mind. Before load shedding (issue 12) 32 clients with 1 s deadlines got "
        "3.7 good searches/s: the embedder embedded every expired query and the gateway "
        "answered `UNAVAILABLE`.",
        "",
        "| clients | goodput /s | accepted p50 ms | accepted p99 ms | OK p99 ms "
        "| refused p50 ms | answers by status | shed by services | embedder: embedded / "
        "dropped unrun | load avg |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for level in levels:
        counters = level["server_counters"]
        shed = ", ".join(
            f"{key.split(':')[0]} {value}"
            for key, value in counters.items()
            if "shed_requests" in key and "inflight_limit" in key
        )
        late = sum(v for k, v in counters.items() if "shed_requests" in k and "deadline" in k)
        embedded = sum(v for k, v in counters.items() if "images_embedded" in k)
        dropped = sum(v for k, v in counters.items() if "expired_images" in k) + late
        statuses = ", ".join(f"{k} {v}" for k, v in level["by_status"].items())
        refused = level["refused_p50_ms"]
        lines.append(
            f"| {level['clients']} | {level['goodput_qps']:.1f} | {level['accepted_p50_ms']:.0f} "
            f"| {level['accepted_p99_ms']:.0f} | {level['ok_p99_ms']:.0f} "
            f"| {'–' if refused is None else f'{refused:.0f}'} | {statuses} | {shed or '–'} "
            f"| {embedded} / {dropped} "
            f"| {level['load_avg_1min_before']:.1f}→{level['load_avg_1min_after']:.1f} |"
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


def eval_section(name: str, report: dict) -> list[str]:
    """One `visearch eval` report (bench/results/eval_*.json)."""
    ingest = ", ".join(
        f"{kind} {rate} images/s" if rate is not None else f"{kind} reused"
        for kind, rate in report["ingest_images_per_s"].items()
    )
    lines = [
        f"## `visearch eval` on {Path(report['dataset']).name} ({name})",
        "",
        f"{report['images']} gallery images, {report['labels']} labels, protocol "
        f"`{report['protocol']}`, k = {report['k']}, {report['client_workers']} concurrent "
        f"clients (latency is per search under that load); local stack with 2 shards, "
        f"{report['machine']['cpus']} cores shared with other work, load average before/after "
        f"{report['load_average_before']} / {report['load_average_after']}. Ingest: {ingest}. "
        "`plain`: the gallery images as queries (each dropped from its own ranking for mAP and "
        "P@1; texture mode does not train on the query's own copy). `transformed`: each query "
        "rotated 0-360 deg, scaled 0.5-1.5x, cropped to 60-90 %, JPEG quality 30-70 "
        f"(`visearch/transforms.py`, seed {report['transform_seed']}), gallery untouched."
        + (f" Note: {report['note']}" if report.get("note") else ""),
        "",
        "| queries | mode | N-S | mAP | P@1 | p50 ms | p95 ms | mean stage ms | texture vote |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in report["runs"]:
        stages = ", ".join(f"{k} {v:.0f}" for k, v in run["mean_stage_ms"].items() if v)
        texture = run.get("texture")
        vote = (
            f"{texture['vote_rate']:.0%} voted, {texture['vote_accuracy']:.0%} right"
            if texture
            else ""
        )
        lines.append(
            f"| {run['queries']} | {run['mode']} | {run['ns_score']:.3f} | {run['map']:.4f} "
            f"| {run['p_at_1']:.3f} | {run['latency_ms']['p50']:.0f} "
            f"| {run['latency_ms']['p95']:.0f} | {stages} | {vote} |"
        )
    return lines + [""]


def binary_codes_section(report: dict) -> list[str]:
    lines = [
        "## Binary codes (`bench/binary_codes.py`)",
        "",
        "One bit per dimension (sign, or above the dimension's mean), packed in 64-bit words; "
        "Hamming distance (numpy XOR + popcount) picks `candidates` rows, which are re-scored "
        "exactly with float vectors read from a memory-mapped file (0 = Hamming only). "
        "Recall@10 is against exact float inner-product search over the same vectors. "
        f"Load average before/after {report['load_average_before']} / "
        f"{report['load_average_after']} on {report['machine']['cpus']} cores, so times are "
        "inflated; the float search is BLAS (may use both cores), the Hamming stage numpy "
        "and faiss IndexBinaryFlat on one thread. The point of the codes is memory: the "
        "numpy Hamming stage is not faster than BLAS float search here.",
        "",
    ]
    for data in report["datasets"]:
        ns = "float_ns_score" in data
        lines += [
            f"### {data['name']} ({data['n']} vectors x {data['dims']} dims, "
            f"{data['queries']} queries)",
            "",
            f"Float32: {data['float_bytes_per_vector']} bytes/vector, exact search "
            f"{data['float_exact_ms_per_query']} ms/query"
            + (f", N-S {data['float_ns_score']:.3f}" if ns else "")
            + ".",
            "",
            "| threshold | bytes/vector | smaller by | bits set | candidates | recall@10 "
            + ("| N-S " if ns else "")
            + "| ms/query |",
            "| --- | --- | --- | --- | --- | --- " + ("| --- " if ns else "") + "| --- |",
        ]
        for method in data["methods"]:
            for row in method["depths"]:
                lines.append(
                    f"| {method['threshold']} | {method['code_bytes_per_vector']} "
                    f"| {method['memory_ratio']}x | {method['share_of_bits_set']} "
                    f"| {row['candidates']} | {row['recall_at_10']:.3f} "
                    + (f"| {row['ns_score']:.3f} " if ns else "")
                    + f"| {row['ms_per_query']} |"
                )
        refs = [
            f"{m['threshold']}: numpy {m['numpy_hamming_top200_ms_per_query']} ms"
            + (
                f", faiss IndexBinaryFlat {m['faiss_binary_flat_top200_ms_per_query']} ms"
                if "faiss_binary_flat_top200_ms_per_query" in m
                else ""
            )
            for m in data["methods"]
        ]
        lines += ["", "Hamming top-200 alone, per query: " + "; ".join(refs) + ".", ""]
    return lines


def embedder_service_section(report: dict) -> list[str]:
    rates, ratios = report["images_per_s"], report["ratio_service_to_raw"]
    machine = report["machine"]
    gpu = (
        ""
        if "CUDAExecutionProvider" in report["providers_service"]
        else "; no GPU was lent for this task: `--provider cuda --images-per-request 16` is "
        "the run for a GPU machine"
    )
    return [
        "## Embedder service vs raw ONNX Runtime (`bench/embedder_service.py`)",
        "",
        f"{report['model_version']}, {report['images_per_request']} image(s) per request, "
        f"providers {', '.join(report['providers_service'])} ({machine['cpus']} cores, load "
        f"{machine['load_avg'][0]}{gpu}). Raw: decode + "
        "resize/normalise + model in the benchmark's process; service: `EmbedGlobal` over gRPC "
        "to the embedder process. Medians of alternating rounds "
        f"({report['seconds_per_setting']} s each).",
        "",
        "| callers | raw images/s | service images/s | service / raw | target |",
        "|---:|---:|---:|---:|---:|",
        f"| 1 | {rates['raw_1']} | {rates['service_1']} | {ratios['1_client']} | >= 0.85 |",
        f"| 4 | {rates['raw_4']} | {rates['service_4']} | "
        f"{ratios['4_clients_vs_raw_4_threads']} (vs raw 1 thread: "
        f"{ratios['4_clients_vs_raw_1_thread']}) | >= 0.95 |",
        "",
        "The batcher no longer waits when nobody else is decoding, and an idle model runs a "
        "lone request on its handler thread. What is left is the per-request gRPC cost (client "
        "and server in Python, on the same cores as the model): with 4 callers the 2 cores are "
        "saturated, so it shows in full against raw threads that pay none.",
        "",
    ]


def ingest_pipeline_section(report: dict) -> list[str]:
    cpu, bound = report["cpu_ms_per_image"], report["bound_images_per_s"]
    ingest, ratio = report["ingest_images_per_s"], report["ratio_to_bound"]
    calls = report["embedder_batch_of_16_with_texture_images_per_s"]
    factor = report["texture_cost_factor"]
    return [
        "## Ingest pipeline vs the CPU bound (`bench/ingest_pipeline.py`)",
        "",
        f"{report['images']} images ({report['dataset']}), batches of 16, 2 clients, through a "
        f"local stack (2 shards) on {report['machine']['cpus']} cores. Bound = cores / CPU s "
        "per image of decode + preprocess + model + RootSIFT (+ texture), measured in-process "
        f"in the same run: {cpu['decode']} + {cpu['preprocess']} + {cpu['model']} + "
        f"{min(cpu['rootsift'], cpu.get('rootsift_opencv_1_thread', cpu['rootsift']))} "
        f"(+ {cpu['texture']}) ms; RootSIFT at the cheaper of OpenCV's default threads "
        f"({cpu['rootsift']} ms) and one thread "
        f"({cpu.get('rootsift_opencv_1_thread', '-')} ms), the stricter bound.",
        "",
        "| collection | bound images/s | ingest images/s | ingest / bound | target |",
        "|---|---:|---:|---:|---:|",
        f"| plain (RootSIFT) | {bound['plain']} | {ingest['plain']} | {ratio['plain']} | >= 0.8 |",
        f"| texture | {bound['texture']} | {ingest['texture']} | {ratio['texture']} | >= 0.8 |",
        "",
        f"Texture makes an ingest {factor['measured']}x as long (its CPU share predicts "
        f"{factor['bound']}x; before: ~3x). On the embedder, one `Extract` call per batch of 16 "
        f"with texture: {calls['extract_one_call']} images/s vs {calls['three_rpcs_before']} "
        f"for the three RPCs an ingest made before ({calls['speedup']}x).",
        "",
    ]


def embedder_providers_section(report: dict) -> list[str]:
    machine, providers = report["machine"], report["providers"]
    stages = report["cpu_stages_ms_p50"]
    lines = [
        "## Embedder on each ONNX Runtime provider (`bench/embedder_providers.py`)",
        "",
        f"Model `{report['model_version']}` at {report['input_size'][0]} px; machine: "
        f"{machine['cpus']} cores, onnxruntime {machine['onnxruntime']}, load "
        f"{machine['load_avg'][0]:.1f} ({machine['platform']}). Images/s of the session alone "
        "(preprocessed input) by batch size; end to end = decode + preprocess + model for one "
        "request of 32 in one thread; DELF = one image's pyramid (gallery: upright; query: 4 "
        "rotations).",
        "",
        "| provider | b=1 | b=8 | b=32 | b=64 | end to end | DELF gallery ms | DELF query ms "
        "| max abs diff vs CPU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in providers.items():
        batches, delf = entry["batches"], entry.get("delf") or {}
        lines.append(
            f"| {name} | "
            + " | ".join(f"{batches[b]['images_per_s']:.0f}" for b in ("1", "8", "32", "64"))
            + f" | {entry['end_to_end']['images_per_s']:.0f} "
            f"| {delf.get('gallery_upright_ms_p50', float('nan')):.0f} "
            f"| {delf.get('query_4_rotations_ms_p50', float('nan')):.0f} "
            f"| {entry['max_abs_diff_vs_cpu']:.1e} |"
        )
    speedup = report.get("speedup_cuda_over_cpu") or {}
    if speedup:
        lines += [
            "",
            "CUDA ÷ CPU in the same run: "
            + ", ".join(f"{k} {v:.2f}×" for k, v in speedup.items())
            + ". CPU-side stages per image (p50): "
            + ", ".join(f"{k} {v:.1f} ms" for k, v in stages.items())
            + ".",
        ]
    return [*lines, ""]


def backbones_section(name: str, report: dict) -> list[str]:
    """Global models at their default sizes (`bench/global_backbones.py`), CPU time as a
    ratio to the first model of the same run."""
    rows = [r for r in report["results"] if r["default_size"] and r["variant"] == "plain"]
    if not rows:
        return []
    base = rows[0]["timing"]["infer_ms_per_image_b16"]
    lines = [
        f"## Global models, global search only ({name}, `bench/global_backbones.py`)",
        "",
        f"`{report['command']}`: ONNX Runtime CPU, {report['ort_threads']} threads, brute-force "
        "cosine over the whole gallery; SMVS standard (400 phone photos vs 100 covers), the 11 "
        "official Paris queries, every UKBench image (plain and transformed). Load average "
        f"before/after {report['load_average_at_start']} / {report['load_average_at_end']}.",
        "",
        "| version | input | SMVS P@1 | SMVS mAP | Paris mAP | UKBench N-S | UKBench-T N-S "
        "| UKBench-T mAP | ms/image (batch 16) | CPU vs first row |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ms = r["timing"]["infer_ms_per_image_b16"]
        lines.append(
            f"| {r['version']} | {r['input_size'][0]} | {r['smvs_standard']['p_at_1']:.3f} "
            f"| {r['smvs_standard']['map']:.3f} | {r['paris6k_subset']['map']:.3f} "
            f"| {r['ukbench_plain']['ns_score']:.3f} | {r['ukbench_transformed']['ns_score']:.3f} "
            f"| {r['ukbench_transformed']['map']:.3f} | {ms:.1f} | {ms / base:.2f}x |"
        )
    return lines + [""]


def search_latency_section(report: dict) -> list[str]:
    raw, none, geo = report["raw_embedding"], report["none"], report["geometric"]
    ratios, targets = report["ratios"], report["ratios"]["targets"]
    verifier = report["verifier_ms_per_candidate"]
    in_process = report["verifier_in_process"]
    stages = "; ".join(
        f"{mode}: " + ", ".join(f"{k} {v}" for k, v in report[mode]["stages_mean_ms"].items())
        for mode in ("none", "geometric")
    )
    return [
        "## Single-client search latency vs one raw embedding (`bench/search_latency.py`)",
        "",
        f"{report['images']} images ({report['dataset']}), {report['queries']} queries, "
        f"k = {report['k']}, re-rank depth {report['rerank_depth']}, one client through a local "
        f"stack on {report['machine']['cpus']} cores (load {report['load_average_before'][0]}). "
        "Raw: decode + resize/normalise + model in the benchmark's process, same images, "
        "same run.",
        "",
        "| measure | p50 ms | p99 ms | ratio | target |",
        "|---|---:|---:|---:|---:|",
        f"| raw embedding | {raw['p50_ms']} | {raw['p99_ms']} | | |",
        f"| `none` search | {none['p50_ms']} | {none['p99_ms']} | "
        f"{ratios['none_over_raw_p50']}x raw | <= {targets['none_over_raw_p50']}x |",
        f"| `geometric` search | {geo['p50_ms']} | {geo['p99_ms']} | "
        f"{ratios['geometric_over_none_p50']}x `none` | <= {targets['geometric_over_none_p50']}x |",
        f"| verifier per candidate | {verifier['p50_ms']} | {verifier['p99_ms']} | | "
        f"<= {targets['verifier_ms_per_candidate_p50']} ms |",
        "",
        f"Mean stage times (ms) — {stages}. In process, batched matching costs "
        f"{in_process['batched_ms_per_candidate']} ms per candidate against "
        f"{in_process['pairwise_ms_per_candidate']} ms one pair at a time "
        f"({in_process['pairs_with_inlier_difference']} of {in_process['pairs']} pairs with a "
        "different inlier count).",
        "",
    ]


def index_concurrency_memory_section(report: dict) -> list[str]:
    concurrency, memory = report["concurrency"], report["memory"]
    per_image = report["bytes_per_image"]
    lines = [
        "## One shard: concurrent searches and memory (`bench/index_concurrency_memory.py`)",
        "",
        f"Searches/s on one shard of {concurrency['n']:,} x {concurrency['dims']} vectors, "
        "the readers-writer lock against the old single lock (a global lock around the same "
        f"code) in the same run, {concurrency['cores']} cores; ScaNN re-orders with "
        f"{concurrency['reorder_type']} codes and re-scores its final candidates exactly "
        f"(recall@10 {concurrency['scann_recall_at_10']['int8_reorder_exact_rescore']} vs "
        f"{concurrency['scann_recall_at_10']['float32_reorder']} with float32 re-ordering).",
        "",
        "| index | threads | single lock q/s | readers-writer q/s | ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind in ("exact", "scann"):
        for row in concurrency[kind]:
            lines.append(
                f"| {kind} | {row['threads']} | {row['single_lock_qps']} | "
                f"{row['rwlock_qps']} | {row['speedup']} |"
            )
    previous, current = memory["previous"], memory["current"]
    lines += [
        "",
        f"Memory at {memory['n']:,} x {memory['dims']} (raw vectors "
        f"{memory['raw_vector_bytes']:,} bytes), the previous commit's code against this one:",
        "",
        "| x raw vector bytes | previous | current | target |",
        "|---|---:|---:|---:|",
        f"| RSS after build | {previous['rss_after_build_x_raw']} | "
        f"{current['rss_after_build_x_raw']} | |",
        f"| recovery peak | {previous['recovery_peak_x_raw']} | "
        f"{current['recovery_peak_x_raw']} | <= 2 |",
        f"| after recovery | {previous['after_recovery_x_raw']} | "
        f"{current['after_recovery_x_raw']} | |",
        "",
        f"Bytes per image: vector {per_image['vector_raw']} raw, "
        f"{per_image['vector_in_shard_memory']} in shard memory, "
        f"{per_image['vector_snapshot']} in the snapshot; metadata "
        f"{per_image['metadata_img_hash']} (`img:*` hash) or {per_image['metadata_redis_total']} "
        f"with its set entries; stored RootSIFT features {per_image['rootsift_features']:,.0f}.",
        "",
    ]
    return lines


def main() -> None:
    lines = [
        "# Benchmarks",
        "",
        "Every number here is rendered from `bench/results/*.json` by `bench/render_report.py`; "
        "rerun a benchmark, then the renderer. Machine: the 2-core, 24 GiB development/CI kind, "
        "no GPU, unless a section names another (the embedder-provider and real-embedding "
        "figures come from a lent 16-core machine with one NVIDIA H100).",
        "",
    ]
    for name, section in (
        ("e2e_ukbench.json", e2e_section),
        ("overload.json", overload_section),
        ("e2e_100k.json", e2e_100k_section),
        ("global_model_input_size.json", model_section),
        ("verify_speed.json", verify_section),
        ("embedder_providers.json", embedder_providers_section),
        ("embedder_service.json", embedder_service_section),
        ("ingest_pipeline.json", ingest_pipeline_section),
        ("search_latency.json", search_latency_section),
        ("index_concurrency_memory.json", index_concurrency_memory_section),
        ("local_features_eval.json", local_features_section),
        ("binary_codes.json", binary_codes_section),
        ("triplet_eval_ukbench.json", triplet_ukbench_section),
        ("triplet_eval_flowers.json", triplet_flowers_section),
        ("triplet_eval_timing.json", triplet_timing_section),
    ):
        report = load(name)
        if report is not None:
            lines += section(report)
        if name == "triplet_eval_ukbench.json" and report is not None:
            seeds = [
                json.loads(p.read_text()) for p in RESULTS.glob("triplet_eval_ukbench_seed*.json")
            ]
            if seeds:
                lines += triplet_seeds_section([report, *seeds])
    for path in sorted(RESULTS.glob("global_backbones*.json")):
        lines += backbones_section(path.name, json.loads(path.read_text()))
    for path in sorted(RESULTS.glob("eval_*.json")):
        lines += eval_section(path.name, json.loads(path.read_text()))
    lines += [
        "## Index",
        "",
        "- Recall and throughput of the shard index against brute force and faiss: "
        "[benchmarks_ann.md](benchmarks_ann.md) (`bench/ann_recall.py`).",
        "- Upsert throughput with the write-ahead log, recovery after `kill -9`, fan-out over "
        "1/2/4 shards: [benchmarks_index_ops.md](benchmarks_index_ops.md) (`bench/index_ops.py`).",
        "",
    ]
    lines += index_sections(RESULTS)
    (ROOT / "docs" / "benchmarks.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
