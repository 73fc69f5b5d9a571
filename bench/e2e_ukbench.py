"""End-to-end benchmark on ukbench1000 through a real local stack.

Writes bench/results/e2e_ukbench.json: ingest images/s, N-S / mAP / P@1 per
re-rank mode (all 1,000 queries, 4 concurrent clients), and single-client
search latency p50/p95 per mode (first --latency-queries queries, one at a time).

    .venv/bin/python bench/e2e_ukbench.py [--dataset ../shared/datasets/ukbench1000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from visearch import datasets, localstack
from visearch.client import VisearchClient
from visearch.jobs import evaluate, ingest_entries, search_entries

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", type=Path, default=ROOT.parent / "shared/datasets/ukbench1000")
    parser.add_argument("--modes", default="none,geometric")
    parser.add_argument("--latency-queries", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/e2e_ukbench.json")
    args = parser.parse_args()
    entries = datasets.ukbench(args.dataset)
    labels = {e.id: e.label for e in entries}
    report: dict[str, object] = {
        "dataset": str(args.dataset),
        "images": len(entries),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    with tempfile.TemporaryDirectory() as state_dir:
        started = time.perf_counter()
        with localstack.running_stack(Path(state_dir), shards=2) as stack:
            report["stack_start_s"] = round(time.perf_counter() - started, 2)
            with VisearchClient(stack.gateway, timeout_s=300) as client:
                report["ingest_images_per_s"] = round(
                    ingest_entries(client, "ukbench", entries, batch_size=16), 2
                )
                modes = {}
                for mode in args.modes.split(","):
                    results = search_entries(client, "ukbench", entries, k=100, rerank=mode)
                    quality = evaluate(results, labels, mode)
                    timed = search_entries(
                        client,
                        "ukbench",
                        entries[: args.latency_queries],
                        k=10,
                        rerank=mode,
                        workers=1,
                    )
                    single = evaluate(timed, labels, mode)
                    stages = {
                        stage: round(
                            sum(r.result.timings_ms.get(stage, 0.0) for r in timed) / len(timed), 2
                        )
                        for stage in ("embed", "local", "index", "metadata", "rerank", "total")
                    }
                    modes[mode] = {
                        "ns_score": round(quality.scores.ns_score, 4),
                        "map_at_100": round(quality.scores.map, 4),
                        "p_at_1": round(quality.scores.p_at_1, 4),
                        "latency_ms_single_client": single.latency_ms,
                        "latency_ms_4_clients": quality.latency_ms,
                        "mean_stage_ms_single_client": stages,
                    }
                    print(mode, json.dumps(modes[mode]))
                report["modes"] = modes
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
