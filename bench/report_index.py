"""Sections of docs/benchmarks.md for the index benchmarks (used by bench/render_report.py).

Each function takes the parsed JSON of one bench/results file and returns markdown lines;
every number comes from that JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

TARGET_RECALL = 0.95


def _load(values: list[float] | None) -> str:
    return "→".join(f"{v:.0f}" for v in values) if values else "–"


def _params(d: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items()) or "–"


def ann_same_run_section(
    report: dict, path_name: str, title: str, script: str = "bench/ann_recall.py"
) -> list[str]:
    """One row per index of an ann_recall.py run: build, memory, fastest point >= 0.95."""
    cfg, summary, machine = report["config"], report["summary"], report["machine"]
    ref = summary.get("brute_force_reference")
    device = f", {machine['device_info']}" if machine.get("device_info") else ""
    lines = [
        f"## {title} (`{script}`)",
        "",
        f"{cfg['n']:,} × {cfg['dims']}-d ({report['data']['generator'].get('kind')}), "
        f"{cfg['threads']} threads for every method, {cfg['nq']} queries, one run on "
        f"{report['date']} ({machine['cpus']} cores{device}; load = the 1-minute load "
        "average before → after each index's run). "
        f"Fastest swept point at recall@10 ≥ {TARGET_RECALL}; full sweeps in "
        f"[benchmarks_ann.md](benchmarks_ann.md), JSON `bench/results/{path_name}`.",
        "",
        "| index | build s | bytes/vector | params | recall@10 | QPS | CPU ms/q | × BF (QPS) "
        "| × BF (CPU) | load |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    if ref:
        bf = next(r for r in report["results"] if r.get("method") == "numpy")
        lines.append(
            f"| exact brute force ({ref['variant']}) | – | "
            f"{bf['rss_delta_bytes_per_vector']:,.0f} | – | 1.000 | {ref['qps']:,.0f} | "
            f"{(summary.get('brute_force_reference_by_cpu') or ref).get('cpu_ms_per_query')} | "
            "1.0 | 1.0 | "
            f"{_load(bf.get('load_avg_1min_before_after'))} |"
        )
    for r in report["results"]:
        if "points" not in r:
            lines.append(f"| {r['label']} | failed: {r.get('error')} |||||||||")
            continue
        entry = summary["methods"].get(r["label"])
        if entry is None:
            continue
        best = entry.get(f"best_at_recall_{TARGET_RECALL}")
        cpu = entry.get(f"least_cpu_at_recall_{TARGET_RECALL}") or {}
        if best is None:
            top = max(r["points"], key=lambda p: p["recall"])
            cells = f"{_params(top['params'])} | {top['recall']:.3f} (max) | – | – | – | –"
        else:
            cells = (
                f"{_params(best['params'])} | {best['recall']:.3f} | {best['qps']:,.0f} | "
                f"{best.get('cpu_ms_per_query', '–')} | {best.get('x_brute_force')} | "
                f"{cpu.get('x_brute_force_cpu', '–')}"
            )
        lines.append(
            f"| {r['label']} | {r.get('build_s')} | {r['rss_delta_bytes_per_vector']:,.0f} | "
            f"{cells} | {_load(r.get('load_avg_1min_before_after'))} |"
        )
    inter = summary.get("interleaved")
    if inter:
        run = next(r for r in report["results"] if r.get("method") == "interleaved")
        lines += [
            "",
            "The separate sweeps above ran at different loads. Interleaved head-to-head (one "
            "process, the indexes measured in alternating rounds, load "
            f"{_load(run.get('load_avg_1min_before_after'))}); QPS = median over the rounds:",
            "",
            "| index | threads | params | recall@10 | QPS | CPU ms/q | × BF (QPS) | × BF (CPU) |",
            "|---|---:|---|---:|---:|---:|---:|---:|",
        ]
        for e in inter:
            p = e["point"]
            if p is None:
                lines.append(f"| {e['method']} | {e['threads']} | no point ≥ {TARGET_RECALL} |||||")
                continue
            lines.append(
                f"| {e['method']} | {e['threads']} | {_params(p['params'])} | {p['recall']:.3f} "
                f"| {p['qps_median']:,.0f} | {p['cpu_ms_per_query']} | "
                f"{e['x_brute_force_median']} | {e['x_brute_force_cpu']} |"
            )
    return lines + [""]


def rebuild_section(report: dict) -> list[str]:
    cfg = report["config"]
    lines = [
        "## Queries during a background rebuild (`bench/rebuild_under_load.py`)",
        "",
        f"Single-query search latency (k = 10, one client back to back; half the queries are "
        f"vectors written shortly before, which must find themselves) on a shard index of "
        f"{cfg['n']:,} × {cfg['dims']}-d mixture vectors plus {cfg['max_fresh_rows']:,} fresh "
        "rows (written since the last build, so every query also scores them exactly), "
        "while steady (no build, no writes), while one more write triggers a ScaNN "
        "re-train beside the serving searcher until the atomic swap, and after the swap "
        "(fresh rows folded into the new partitions). Same run, "
        f"{report['machine']['cpus']} shared cores, load {report['load_avg_before'][0]} → "
        f"{report['load_avg_after'][0]}; noise = second / first half of the steady phase. "
        f"The shard process ran with build niceness +{cfg.get('service_build_niceness')} and "
        f"{cfg.get('service_build_threads') or 'all'} training thread(s). Failures: errors or "
        "empty answers; self-misses: a recent write not in its own top 10 (after the swap "
        "it is found through ScaNN rather than scored exactly: ANN recall, not a lost write).",
        "",
        "| target | build niceness, threads | vectors | rebuild s | steady p50 / p99 ms "
        "| rebuild p50 / p99 ms | rebuild ÷ steady p50 / p99 | noise p50 / p99 "
        "| after swap p50 / p99 ms | failures / self-misses (steady, rebuild, after) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [("in process", r) for r in report["results"].get("inprocess", [])]
    if "process" in report["results"]:
        rows.append(("shard process (gRPC)", report["results"]["process"]))
    for target, r in rows:
        steady, rebuild, after = r["steady"], r["rebuild"], r["after"]
        ratio, noise = r["rebuild_vs_steady"], r["noise_second_vs_first_half"]
        build = (
            f"+{r['build_niceness']}, {r['training_threads'] or 'all'}"
            if "build_niceness" in r
            else f"+{cfg.get('service_build_niceness')}, "
            f"{cfg.get('service_build_threads') or 'all'}"
        )
        lines.append(
            f"| {target} | {build} | {r['vectors_at_rebuild']:,} | {r['rebuild_s']} | "
            f"{steady['p50_ms']} / {steady['p99_ms']} | {rebuild['p50_ms']} / "
            f"{rebuild['p99_ms']} | {ratio.get('p50_ms')} / {ratio.get('p99_ms')} | "
            f"{noise.get('p50_ms')} / {noise.get('p99_ms')} | "
            f"{after.get('p50_ms')} / {after.get('p99_ms')} | "
            + ", ".join(
                f"{phase.get('failures')} / {phase.get('self_misses', '–')}"
                for phase in (steady, rebuild, after)
            )
            + " |"
        )
    return lines + [""]


def index_sections(results_dir: Path) -> list[str]:
    """The sections whose JSON exists, in a fixed order."""
    lines: list[str] = []
    same_run = results_dir / "ann_recall_mixture_1Mx256_hnsw.json"
    if same_run.exists():
        lines += ann_same_run_section(
            json.loads(same_run.read_text()),
            same_run.name,
            "One shard, 1M × 256: brute force, ScaNN, IVF-PQ and HNSW in one run",
        )
    for path in sorted(results_dir.glob("ann_recall_real_*.json")):
        lines += ann_same_run_section(
            json.loads(path.read_text()),
            path.name,
            "Real embeddings + augmented views",
            "bench/real_embeddings_ann.py",
        )
    snapshot = results_dir / "snapshot_load.json"
    if snapshot.exists():
        lines += snapshot_load_section(json.loads(snapshot.read_text()))
    rebuild = results_dir / "rebuild_under_load.json"
    if rebuild.exists():
        lines += rebuild_section(json.loads(rebuild.read_text()))
    fresh = results_dir / "fresh_rows.json"
    if fresh.exists():
        lines += fresh_rows_section(json.loads(fresh.read_text()))
    return lines


def fresh_rows_section(report: dict) -> list[str]:
    cfg = report["config"]
    lines = [
        "## Exact scoring of fresh rows per query (`bench/fresh_rows.py`)",
        "",
        "Rows written since the last ScaNN build are scored exactly on every query "
        "(read-your-writes). Per query (k = 10, one BLAS thread, "
        f"{cfg['repeats']} interleaved repetitions, index matrix of {cfg['matrix_rows']:,} rows, "
        f"{report['machine']['cpus']} shared cores, 1-minute load {report['load_avg'][0]:.2f}): "
        "gathering "
        "their vectors out of the index matrix, as before, vs one product over the contiguous "
        "buffer `services/indexer/fresh_rows.py` keeps; both return the same top 10. The "
        "buffer costs the extra memory shown, at most `MAX_FRESH_ROWS` rows per collection.",
        "",
        "| fresh rows | dims | gather p50 ms | buffer p50 ms | speed-up | buffer MB |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['fresh_rows']:,} | {r['dims']} | {r['gather_p50_ms']} | {r['buffer_p50_ms']} "
            f"| {r['speedup_p50']}× | {r['buffer_extra_mb']} |"
        )
    return lines + [""]


def snapshot_load_section(report: dict) -> list[str]:
    cfg, best = report["config"], report["best_total_s"]
    return [
        "## Snapshot load on shard start (`bench/snapshot_load.py`)",
        "",
        f"Decoding a {report['snapshot_mb']} MB snapshot ({cfg['n']:,} × {cfg['dims']}-d, "
        f"{cfg['labels']} labels) and filling the empty index, best of {cfg['rounds']} "
        f"alternating rounds ({report['cpus']} shared cores, load "
        f"{report['load_avg_before'][0]} → {report['load_avg_after'][0]}); object store and "
        "log replay excluded: current path (vectorised fill, shared metadata objects) "
        f"{best['current']} s, previous path (row-by-row upsert, per-row conversions) "
        f"{best['previous']} s: {report['speedup']}× faster.",
        "",
    ]
