"""Overload: goodput and latency of searches with 1 s deadlines at 1 to 64 closed-loop clients.

Starts a real local stack (visearch.localstack.running_stack, 2 shards), ingests a small
collection (the first --images of ukbench1000, or synthetic images when it is absent),
then runs closed-loop clients at each level for --seconds: each sends a global-only search
(k = 10, rerank none) with a --deadline-s deadline, waits for the answer, and sends the
next. Clients call the gateway on a channel without gRPC retries, so every answer is
counted as it came; a RESOURCE_EXHAUSTED answer is honoured as a client's retry policy
would: the client waits the `grpc-retry-pushback-ms` the gateway sent before its next call.

Per level: goodput (searches answered OK within the deadline, per second), answers by
status code, accepted-search latency p50/p99 (every answer but RESOURCE_EXHAUSTED; an
accepted search that ran out of time counts at its deadline), OK-only p50/p99, how fast
refusals came back, and from the services' /metrics: requests shed per service and
reason, images the embedder embedded or dropped unrun. goodput(64)/peak is the headline.

    .venv/bin/python bench/overload.py                 # ~2.5 minutes
    .venv/bin/python bench/overload.py --seconds 5     # smoke run
Writes bench/results/overload.json (or --out).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.common.grpc_client import RETRY_PUSHBACK_KEY, make_channel  # noqa: E402
from visearch import datasets, localstack  # noqa: E402
from visearch.client import IngestItem, VisearchClient  # noqa: E402
from visearch.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc  # noqa: E402

COLLECTION = "overload"
MAX_MESSAGE_BYTES = 32 * 1024 * 1024


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {msg}", flush=True)


def load_images(dataset: Path, count: int) -> tuple[list[tuple[str, bytes, str]], str]:
    """(id, JPEG bytes, label) of `count` images, and where they came from."""
    if (dataset / "groundtruth.csv").exists():
        entries = datasets.ukbench(dataset, limit=count)
        return [(e.id, e.path.read_bytes(), e.label) for e in entries], str(dataset)
    rng = np.random.default_rng(0)
    images = []
    for i in range(count):
        pixels = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
        images.append((f"synthetic-{i}", buffer.getvalue(), str(i // 4)))
    return images, "synthetic 640x480 noise JPEGs"


def pushback_ms(exc: grpc.RpcError) -> int:
    for key, value in exc.trailing_metadata() or ():
        if key == RETRY_PUSHBACK_KEY:
            return int(value)
    return -1


def scrape(processes: list[localstack.ProcessInfo]) -> dict[str, float]:
    """Shed / embed counters of every service, keyed 'service:metric{labels}'."""
    out: dict[str, float] = {}
    for process in processes:
        if not process.metrics_port:
            continue
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{process.metrics_port}/metrics", timeout=5
            ) as response:
                text = response.read().decode()
        except OSError:
            continue
        for family in text_string_to_metric_families(text):
            if not family.name.endswith(("shed_requests", "expired_images", "images_embedded")):
                continue
            for sample in family.samples:
                if not sample.name.endswith("_total"):
                    continue
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                key = f"{process.name}:{family.name}{{{labels}}}"
                out[key] = out.get(key, 0.0) + sample.value
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, int]:
    return {
        key: int(value - before.get(key, 0.0))
        for key, value in sorted(after.items())
        if value - before.get(key, 0.0) > 0
    }


def percentile_ms(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 1) if values else None


def run_level(
    stub: gateway_pb2_grpc.GatewayStub,
    queries: list[bytes],
    clients: int,
    seconds: float,
    deadline_s: float,
    metadata: tuple[tuple[str, str], ...] = (),
) -> dict:
    """`clients` closed-loop threads for `seconds`; records (status, latency) per call."""
    records: list[tuple[str, float]] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(seed: int) -> None:
        rng = random.Random(seed)
        mine: list[tuple[str, float]] = []
        while time.perf_counter() < stop_at:
            request = gateway_pb2.SearchRequest(
                collection=COLLECTION,
                image=common_pb2.Image(data=rng.choice(queries)),
                k=10,
                rerank=common_pb2.RERANK_MODE_NONE,
            )
            started = time.perf_counter()
            wait_s = 0.0
            try:
                stub.Search(request, timeout=deadline_s, metadata=metadata)
                status = "OK"
            except grpc.RpcError as exc:
                status = exc.code().name
                if status == "RESOURCE_EXHAUSTED":
                    wait_s = max(pushback_ms(exc), 0) / 1000
                elif status not in ("DEADLINE_EXCEEDED",):
                    wait_s = 0.05  # what a client's backoff would do on UNAVAILABLE etc.
            mine.append((status, time.perf_counter() - started))
            if wait_s:
                time.sleep(wait_s)
        with lock:
            records.extend(mine)

    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    statuses = Counter(status for status, _ in records)
    good = [s for status, s in records if status == "OK" and s <= deadline_s]
    accepted = [min(s, deadline_s) for status, s in records if status != "RESOURCE_EXHAUSTED"]
    refused = [s for status, s in records if status == "RESOURCE_EXHAUSTED"]
    return {
        "clients": clients,
        "seconds": round(elapsed, 2),
        "calls": len(records),
        "by_status": dict(statuses.most_common()),
        "goodput_qps": round(len(good) / elapsed, 2),
        "accepted": len(accepted),
        "accepted_p50_ms": percentile_ms(accepted, 50),
        "accepted_p99_ms": percentile_ms(accepted, 99),
        "ok_p50_ms": percentile_ms(good, 50),
        "ok_p99_ms": percentile_ms(good, 99),
        "refused_p50_ms": percentile_ms(refused, 50),
        "refused_p99_ms": percentile_ms(refused, 99),
        "load_avg_1min_before": round(load_before, 2),
        "load_avg_1min_after": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", type=Path, default=ROOT.parent / "shared/datasets/ukbench1000")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--levels", default="1,8,32,64")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--deadline-s", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/overload.json")
    args = parser.parse_args()
    images, source = load_images(args.dataset, args.images)
    queries = [data for _, data, _ in images]
    report: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "dataset": source,
        "images": len(images),
        "deadline_s": args.deadline_s,
        "seconds_per_level": args.seconds,
        "search": "global only (rerank none), k = 10, query = one of the ingested images",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "env_overrides": {
            k: v for k, v in os.environ.items() if k.startswith("VISEARCH_") and "KEY" not in k
        },
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    levels = []
    with tempfile.TemporaryDirectory() as state_dir:
        started = time.perf_counter()
        with localstack.running_stack(Path(state_dir), shards=2) as stack:
            report["stack_start_s"] = round(time.perf_counter() - started, 2)
            log(f"stack up in {report['stack_start_s']} s; ingesting {len(images)} images")
            # The stack's bootstrap admin key when the gateway checks API keys.
            key_of = getattr(localstack, "local_api_key", None)
            api_key = key_of(Path(state_dir)) if key_of is not None else ""
            metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
            with VisearchClient(stack.gateway, timeout_s=300, api_key=api_key or None) as client:
                t0 = time.perf_counter()
                for start in range(0, len(images), 16):
                    batch = images[start : start + 16]
                    client.ingest(
                        COLLECTION, [IngestItem(i, image=d, label=lb) for i, d, lb in batch]
                    )
                report["ingest_s"] = round(time.perf_counter() - t0, 2)
            channel = make_channel(stack.gateway, MAX_MESSAGE_BYTES, retries=False)
            stub = gateway_pb2_grpc.GatewayStub(channel)
            warm = run_level(stub, queries, 4, 3.0, 5.0, metadata)  # sessions, caches, channels
            if set(warm["by_status"]) != {"OK"}:
                raise SystemExit(f"warm-up searches failed: {warm['by_status']}")
            for clients in (int(x) for x in args.levels.split(",")):
                time.sleep(2.0)  # let queues drain between levels
                before = scrape(stack.processes)
                level = run_level(stub, queries, clients, args.seconds, args.deadline_s, metadata)
                level["server_counters"] = delta(scrape(stack.processes), before)
                log(
                    f"{clients} clients: goodput {level['goodput_qps']}/s, accepted p50/p99 "
                    f"{level['accepted_p50_ms']}/{level['accepted_p99_ms']} ms, "
                    f"{level['by_status']}"
                )
                levels.append(level)
            channel.close()
    report["levels"] = levels
    peak = max(level["goodput_qps"] for level in levels)
    last = levels[-1]
    report["peak_goodput_qps"] = peak
    ratio_key = f"goodput_{last['clients']}_over_peak"
    report[ratio_key] = round(last["goodput_qps"] / peak, 3) if peak else 0.0
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log(f"{ratio_key} = {report[ratio_key]}")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
