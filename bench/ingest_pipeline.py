"""Ingest throughput through a real local stack against the CPU bound measured in this run.

The bound is `cores / (CPU seconds per image of decode + preprocess + model + RootSIFT)`
(plus the texture histogram for a texture collection), each stage timed in-process with
time.process_time() (all threads) on the stack's default global model, one image at a time
except the model (batches of 16, as an ingest sends them). The stack then ingests the same
images through the client (batches of 16, 2 concurrent clients) into a plain collection and a
texture collection, alternating halves of the images between the two; the ratios ingest
images/s / bound are the figures.

It also compares, on the stack's embedder, one `Extract` call against the three RPCs an
ingest made before (EmbedGlobal + ExtractLocal + ExtractTexture, concurrently, each
decoding the images again) for the same batches.

    flock /tmp/visearch-heavy.lock .venv/bin/python bench/ingest_pipeline.py [--images 160]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import grpc
import numpy as np

from services.common.imaging import ImageLimits, decode_rgb
from services.common.model_registry import load_local
from services.embedder.core import GlobalModel, create_session
from services.embedder.rootsift import extract_rootsift
from services.embedder.texture import extract_texture
from services.models.build import BASE_VERSION
from visearch import datasets, demo, localstack
from visearch.client import VisearchClient
from visearch.datasets import ImageEntry
from visearch.jobs import ingest_entries
from visearch.v1 import embedder_pb2, embedder_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATASET = ROOT.parent / "shared/datasets/ukbench1000"
DEFAULT_OUT = ROOT / "bench/results/ingest_pipeline.json"
BATCH = 16
CLIENTS = 2
LIMITS = ImageLimits(max_bytes=20 * 1024 * 1024)
RPC_ROUNDS = 3
LOGS_ON_FAILURE = Path(tempfile.gettempdir()) / "ingest_pipeline_logs"
# 16 images of RootSIFT features are ~8 MB; gRPC's default receive limit is 4 MB.
MESSAGE_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


def load_entries(dataset: Path, count: int, scratch: Path) -> list[ImageEntry]:
    """ukbench1000 when present, else the demo samples repeated (distinct ids)."""
    if (dataset / "images").is_dir():
        return datasets.ukbench(dataset)[:count]
    samples = demo.write_samples(scratch)
    return [ImageEntry(f"demo-{i}", samples[i % len(samples)], "demo") for i in range(count)]


def cpu_seconds_per_image(encoded: list[bytes], model: GlobalModel) -> dict[str, float]:
    """CPU seconds per image of each ingest stage, measured in this process."""

    def timed(work: object) -> tuple[float, object]:
        started = time.process_time()
        result = work()  # type: ignore[operator]
        return (time.process_time() - started) / len(encoded), result

    decode_s, decoded = timed(lambda: [decode_rgb(data, LIMITS) for data in encoded])
    preprocess_s, pre = timed(lambda: np.stack([model.preprocess(rgb) for rgb in decoded]))
    model.run(pre[:BATCH])  # warm-up
    model_s, _ = timed(
        lambda: [model.run(pre[i : i + BATCH]) for i in range(0, len(pre), BATCH)]  # type: ignore[index]
    )
    rootsift_s, _ = timed(lambda: [extract_rootsift(rgb) for rgb in decoded])  # type: ignore[union-attr]
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # OpenCV's own parallel loops off: less CPU per image, more wall time
    rootsift_1_thread_s, _ = timed(lambda: [extract_rootsift(rgb) for rgb in decoded])  # type: ignore[union-attr]
    cv2.setNumThreads(threads)
    texture_s, _ = timed(lambda: [extract_texture(rgb) for rgb in decoded])  # type: ignore[union-attr]
    return {
        "decode": decode_s,
        "preprocess": preprocess_s,
        "model": model_s,
        "rootsift": rootsift_s,
        "rootsift_opencv_1_thread": rootsift_1_thread_s,
        "texture": texture_s,
    }


def embedder_calls(address_channel: object, encoded: list[bytes]) -> dict[str, float]:
    """images/s of one Extract per batch vs the three old RPCs per batch (concurrently)."""
    stub = embedder_pb2_grpc.EmbedderStub(address_channel)
    batches = [encoded[i : i + BATCH] for i in range(0, len(encoded), BATCH)]

    def one_call(batch: list[bytes]) -> None:
        stub.Extract(
            embedder_pb2.ExtractRequest(images=batch, feature_type="rootsift", texture=True),
            timeout=120,
        )

    def three_calls(batch: list[bytes]) -> None:
        with ThreadPoolExecutor(max_workers=3) as pool:
            futures = [
                pool.submit(
                    stub.EmbedGlobal, embedder_pb2.EmbedGlobalRequest(images=batch), timeout=120
                ),
                pool.submit(
                    stub.ExtractLocal,
                    embedder_pb2.ExtractLocalRequest(images=batch, feature_type="rootsift"),
                    timeout=120,
                ),
                pool.submit(
                    stub.ExtractTexture,
                    embedder_pb2.ExtractTextureRequest(images=batch),
                    timeout=120,
                ),
            ]
            for future in futures:
                future.result()

    rates: dict[str, list[float]] = {"extract": [], "three_rpcs": []}
    one_call(batches[0])  # warm-up
    for _ in range(RPC_ROUNDS):  # interleaved, so drifting load hits both alike
        for name, work in (("extract", one_call), ("three_rpcs", three_calls)):
            started = time.perf_counter()
            for batch in batches:
                work(batch)
            rates[name].append(len(encoded) / (time.perf_counter() - started))
    return {name: statistics.median(values) for name, values in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as scratch:
        entries = load_entries(args.dataset, args.images, Path(scratch))
        encoded = [entry.path.read_bytes() for entry in entries]
        manifest, path = load_local(args.models / "global" / BASE_VERSION)
        model = GlobalModel(manifest, create_session(path, ["CPUExecutionProvider"], threads=0))
        stages = cpu_seconds_per_image(encoded, model)
        del model
        # The bound takes RootSIFT's cheaper setting, so it is the stricter one.
        rootsift_cpu = min(stages["rootsift"], stages["rootsift_opencv_1_thread"])
        plain_cpu = sum(stages[s] for s in ("decode", "preprocess", "model")) + rootsift_cpu
        texture_cpu = plain_cpu + stages["texture"]
        bound = {"plain": cores / plain_cpu, "texture": cores / texture_cpu}
        print("cpu s/image", json.dumps(stages), flush=True)
        report: dict[str, object] = {
            "benchmark": "ingest_pipeline",
            "images": len(entries),
            "dataset": str(args.dataset) if (args.dataset / "images").is_dir() else "demo",
            "model_version": manifest.version,
            "machine": {"cpus": cores, "python": platform.python_version()},
            "load_average_before": [round(x, 2) for x in os.getloadavg()],
            "cpu_ms_per_image": {k: round(1000 * v, 2) for k, v in stages.items()},
            "bound_images_per_s": {k: round(v, 2) for k, v in bound.items()},
        }
        with localstack.running_stack(Path(scratch) / "stack", shards=2) as stack:
            with VisearchClient(stack.gateway, timeout_s=300) as client:
                client.create_collection("plain")
                client.create_collection("tex", texture_features=True)
                ingest_entries(client, "warm", entries[:BATCH], batch_size=BATCH)
                # Alternating halves, so drifting load from other jobs hits both alike.
                seconds = {"plain": 0.0, "tex": 0.0}
                half = len(entries) // 2
                for part in (entries[:half], entries[half:]):
                    for name in seconds:
                        rate = ingest_entries(client, name, part, batch_size=BATCH, workers=CLIENTS)
                        seconds[name] += len(part) / rate
                measured = {name: len(entries) / value for name, value in seconds.items()}
                print("ingest images/s", json.dumps(measured), flush=True)
            embedder = localstack.find_process(stack, "embedder").address
            try:
                with grpc.insecure_channel(embedder, options=MESSAGE_OPTIONS) as channel:
                    calls = embedder_calls(channel, encoded[: 4 * BATCH])
            except grpc.RpcError:
                shutil.copytree(Path(stack.state_dir) / "logs", LOGS_ON_FAILURE, dirs_exist_ok=True)
                raise
    ingest = {"plain": measured["plain"], "texture": measured["tex"]}
    report["ingest_images_per_s"] = {k: round(v, 2) for k, v in ingest.items()}
    report["ratio_to_bound"] = {k: round(ingest[k] / bound[k], 3) for k in ingest}
    report["texture_cost_factor"] = {
        # how many times longer a texture ingest takes than a plain one
        "measured": round(ingest["plain"] / ingest["texture"], 3),
        "bound": round(texture_cpu / plain_cpu, 3),
    }
    report["embedder_batch_of_16_with_texture_images_per_s"] = {
        "extract_one_call": round(calls["extract"], 2),
        "three_rpcs_before": round(calls["three_rpcs"], 2),
        "speedup": round(calls["extract"] / calls["three_rpcs"], 3),
    }
    report["targets"] = {"ratio_to_bound": ">= 0.8", "texture_cost_factor": "well below 3"}
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
