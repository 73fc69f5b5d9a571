"""Embedder service throughput against raw ONNX Runtime doing the same work in-process.

Raw: decode + resize/normalise + model of the same global model, in this process, with the
session settings the service uses (threads 0 = ORT's default). Service: the embedder started
as its own process (services.embedder.main, no object store), EmbedGlobal over gRPC from this
process. Both one image per request, first one caller at a time, then 4 concurrent callers
(raw: 4 threads sharing the session, as 4 requests would share it without a service).
Rounds alternate raw and service so drifting machine load hits both alike; the figures are
medians of the rounds and the ratios service / raw.

--provider cuda asks both for CUDAExecutionProvider (CPU as fallback; the report says which
ran). --images-per-request N > 1 sends N images per request, and the raw side then decodes
them on --decode-workers threads (the service decodes a request's images in parallel too),
the setting to use where a GPU makes the model cheaper than the decode.

    flock /tmp/visearch-heavy.lock .venv/bin/python bench/embedder_service.py [--seconds 6]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort

from services.common.imaging import ImageLimits, decode_rgb
from services.common.model_registry import load_local
from services.embedder.core import GlobalModel, create_session
from services.models.build import BASE_VERSION
from visearch import demo, localstack
from visearch.v1 import embedder_pb2, embedder_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = ROOT.parent / "shared/datasets/ukbench1000/images"
DEFAULT_OUT = ROOT / "bench/results/embedder_service.json"
LIMITS = ImageLimits(max_bytes=20 * 1024 * 1024)
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
}
CONCURRENCY = (1, 4)


def load_images(folder: Path, count: int, scratch: Path) -> list[bytes]:
    paths = sorted(folder.glob("*.jpg"))[:count] if folder.is_dir() else []
    if not paths:
        paths = demo.write_samples(scratch)
    return [path.read_bytes() for path in paths]


def throughput(
    call: Callable[[list[bytes]], object], requests: list[list[bytes]], callers: int, seconds: float
) -> float:
    """Images/s of `callers` threads each sending requests back to back for `seconds`."""
    done = [0] * callers
    stop = time.perf_counter() + seconds

    def caller(index: int) -> None:
        position = index
        while time.perf_counter() < stop:
            request = requests[position % len(requests)]
            call(request)
            done[index] += len(request)
            position += callers

    started = time.perf_counter()
    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.perf_counter() - started)


def raw_caller(model: GlobalModel, decode_workers: int) -> Callable[[list[bytes]], object]:
    """decode + resize/normalise + model in this process (parallel decode for N > 1)."""
    pool = ThreadPoolExecutor(max_workers=max(1, decode_workers))

    def prepare(data: bytes) -> np.ndarray:
        return model.preprocess(decode_rgb(data, LIMITS))

    def call(images: list[bytes]) -> np.ndarray:
        if len(images) == 1:
            batch = prepare(images[0])[None]
        else:
            batch = np.stack(list(pool.map(prepare, images)))
        return model.run(batch)

    return call


def service_caller(channel: grpc.Channel) -> Callable[[list[bytes]], object]:
    stub = embedder_pb2_grpc.EmbedderStub(channel)

    def call(images: list[bytes]) -> object:
        return stub.EmbedGlobal(embedder_pb2.EmbedGlobalRequest(images=images), timeout=60)

    return call


def start_embedder(
    state_dir: Path, model_dir: Path, providers: list[str], decode_workers: int
) -> localstack.ProcessInfo:
    launcher = localstack.Launcher(state_dir)
    info = launcher.spawn_service(
        "embedder",
        "services.embedder.main",
        {
            "VISEARCH_MODEL_DIR": str(model_dir),
            "VISEARCH_ORT_PROVIDERS": ",".join(providers),
            "VISEARCH_CPU_WORKERS": str(decode_workers),
            "VISEARCH_LOG_LEVEL": "WARNING",
        },
    )
    try:
        launcher.wait_ports(info, 120)
        deadline = time.monotonic() + 120
        while not localstack.health_serving(info.address):
            if time.monotonic() > deadline:
                raise localstack.StackError(f"embedder not SERVING; see {info.log}")
            time.sleep(0.2)
    except BaseException:
        localstack.stop_processes([info])
        raise
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--provider", choices=sorted(PROVIDERS), default="cpu")
    parser.add_argument("--images-per-request", type=int, default=1)
    parser.add_argument("--decode-workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seconds", type=float, default=6.0, help="per setting and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    providers = PROVIDERS[args.provider]
    model_dir = args.models / "global" / BASE_VERSION
    with tempfile.TemporaryDirectory() as scratch:
        images = load_images(args.images, args.count, Path(scratch))
        per = max(1, args.images_per_request)
        requests = [[images[(i + j) % len(images)] for j in range(per)] for i in range(len(images))]
        manifest, path = load_local(model_dir)
        model = GlobalModel(manifest, create_session(path, providers, threads=0))
        raw = raw_caller(model, args.decode_workers)
        info = start_embedder(Path(scratch), model_dir, providers, args.decode_workers)
        try:
            with grpc.insecure_channel(info.address) as channel:
                service = service_caller(channel)
                stats = embedder_pb2_grpc.EmbedderStub(channel).Stats(
                    embedder_pb2.EmbedderStatsRequest(), timeout=30
                )
                for call in (raw, service):  # warm-up
                    throughput(call, requests, 1, 1.0)
                rounds: dict[str, list[float]] = {}
                for _ in range(args.rounds):
                    for callers in CONCURRENCY:
                        for name, call in (("raw", raw), ("service", service)):
                            rate = throughput(call, requests, callers, args.seconds)
                            rounds.setdefault(f"{name}_{callers}", []).append(rate)
        finally:
            localstack.stop_processes([info])
    rates = {key: statistics.median(values) for key, values in rounds.items()}
    report = {
        "benchmark": "embedder_service",
        "model_version": manifest.version,
        "provider_asked": args.provider,
        "providers_raw": model.providers,
        "providers_service": list(stats.providers),
        "images_per_request": per,
        "decode_workers": args.decode_workers,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "onnxruntime": ort.__version__,
            "load_avg": [round(x, 2) for x in os.getloadavg()],
        },
        "seconds_per_setting": args.seconds,
        "rounds": {key: [round(v, 2) for v in values] for key, values in rounds.items()},
        "images_per_s": {key: round(value, 2) for key, value in rates.items()},
        "ratio_service_to_raw": {
            "1_client": round(rates["service_1"] / rates["raw_1"], 3),
            "4_clients_vs_raw_4_threads": round(rates["service_4"] / rates["raw_4"], 3),
            "4_clients_vs_raw_1_thread": round(rates["service_4"] / rates["raw_1"], 3),
        },
        "targets": {"1_client": ">= 0.85", "4_clients": ">= 0.95"},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
