"""Embedder throughput on each ONNX Runtime provider this machine has (CPU, CUDA), one run.

For the served global model (models/global/<version>) it measures, per provider:
- model throughput (images/s) and batch latency at several batch sizes, on preprocessed
  input, so the figure is the session alone;
- end to end: JPEG decode + resize + normalise + model, images/s for one request of 32;
- agreement of the embeddings with the CPU provider's (max |a - b|, min cosine).
It also times the CPU-side stages alone (decode + preprocess per image, RootSIFT extraction),
which no provider speeds up. The speed-up figures are ratios against the CPU provider
measured in the same run, so they hold whatever the machine's absolute speed.

Usage: python bench/embedder_providers.py [--models models] [--images DIR] [--count 64]
       [--out bench/results/embedder_providers.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.common.imaging import ImageLimits, decode_rgb  # noqa: E402
from services.common.model_registry import load_local  # noqa: E402
from services.embedder.core import GlobalModel, create_session, delf_from_session  # noqa: E402
from services.embedder.rootsift import extract_rootsift  # noqa: E402

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared/datasets/ukbench1000/images"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "embedder_providers.json"
BATCH_SIZES = (1, 8, 32, 64)
END_TO_END_BATCH = 32
MAX_IMAGE_BYTES = 20 * 1024 * 1024
WARMUP_RUNS = 3
MIN_TIMED_RUNS = 5
TIME_PER_SETTING_S = 3.0
PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider")
DELF_MAX_FEATURES = 500
QUERY_ROTATIONS = (0.0, 90.0, 180.0, 270.0)


def bench_delf(model_dir: Path, provider: str, image_rgb: np.ndarray) -> dict[str, object] | None:
    """DELF-style extraction ms for one gallery image (upright) and one query (4 rotations)."""
    manifest, path = load_local(model_dir)
    session = create_session(path, [provider], threads=0)
    if provider not in session.get_providers():
        return None
    extractor = delf_from_session(manifest, session)
    upright = _timed_runs(lambda: extractor.extract(image_rgb, DELF_MAX_FEATURES), min_runs=3)
    rotated = _timed_runs(
        lambda: extractor.extract(image_rgb, DELF_MAX_FEATURES, QUERY_ROTATIONS), min_runs=3
    )
    return {
        "model_version": manifest.version,
        "gallery_upright_ms_p50": 1000 * statistics.median(upright),
        "query_4_rotations_ms_p50": 1000 * statistics.median(rotated),
    }


def _timed_runs(run: object, min_runs: int = MIN_TIMED_RUNS) -> list[float]:
    """Calls run() until TIME_PER_SETTING_S has passed and min_runs were made; seconds each."""
    for _ in range(WARMUP_RUNS):
        run()  # type: ignore[operator]
    times = []
    started = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - started < TIME_PER_SETTING_S:
        t0 = time.perf_counter()
        run()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return times


def _global_model(model_dir: Path, provider: str) -> GlobalModel:
    manifest, model_path = load_local(model_dir)
    return GlobalModel(manifest, create_session(model_path, [provider], threads=0))


def bench_provider(
    model: GlobalModel, encoded: list[bytes], preprocessed: np.ndarray
) -> dict[str, object]:
    """preprocessed: float32 [n, 3, h, w] with n >= max(BATCH_SIZES)."""
    result: dict[str, object] = {"providers": model.providers, "batches": {}}
    for batch_size in BATCH_SIZES:
        batch = np.ascontiguousarray(preprocessed[:batch_size])
        times = _timed_runs(lambda b=batch: model.run(b))
        result["batches"][str(batch_size)] = {  # type: ignore[index]
            "runs": len(times),
            "batch_ms_p50": 1000 * statistics.median(times),
            "images_per_s": batch_size / statistics.median(times),
        }
    limits = ImageLimits(max_bytes=MAX_IMAGE_BYTES)
    request = encoded[:END_TO_END_BATCH]

    def end_to_end() -> np.ndarray:
        images = [model.preprocess(decode_rgb(data, limits)) for data in request]
        return model.run(np.stack(images))

    times = _timed_runs(end_to_end, min_runs=3)
    result["end_to_end"] = {
        "batch": len(request),
        "batch_ms_p50": 1000 * statistics.median(times),
        "images_per_s": len(request) / statistics.median(times),
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    model_dirs = sorted((args.models / "global").iterdir())
    if not model_dirs:
        raise SystemExit(f"no global model under {args.models}/global: run `make models`")
    model_dir = model_dirs[0]
    paths = sorted(args.images.glob("*.jpg"))[: args.count]
    if len(paths) < max(BATCH_SIZES):
        raise SystemExit(f"need {max(BATCH_SIZES)} images in {args.images}, found {len(paths)}")
    encoded = [p.read_bytes() for p in paths]
    limits = ImageLimits(max_bytes=MAX_IMAGE_BYTES)

    available = set(ort.get_available_providers())
    providers = [p for p in PROVIDERS if p in available]
    cpu_model = _global_model(model_dir, "CPUExecutionProvider")
    decode_times = _timed_runs(lambda: decode_rgb(encoded[0], limits))
    decoded = [decode_rgb(data, limits) for data in encoded]
    preprocess_times = _timed_runs(lambda: cpu_model.preprocess(decoded[0]))
    preprocessed = np.stack([cpu_model.preprocess(image) for image in decoded])
    rootsift_times = _timed_runs(lambda: extract_rootsift(decoded[0]), min_runs=3)

    reference = cpu_model.run(preprocessed[:END_TO_END_BATCH])
    results: dict[str, object] = {}
    for provider in providers:
        model = cpu_model if provider == "CPUExecutionProvider" else None
        model = model or _global_model(model_dir, provider)
        if provider not in model.providers:
            continue  # the provider is listed but could not start (e.g. no GPU driver)
        entry = bench_provider(model, encoded, preprocessed)
        vectors = model.run(preprocessed[:END_TO_END_BATCH])
        entry["max_abs_diff_vs_cpu"] = float(np.abs(vectors - reference).max())
        entry["min_cosine_vs_cpu"] = float((vectors * reference).sum(axis=1).min())
        local_dirs = sorted((args.models / "local").glob("*/manifest.json"))
        if local_dirs:
            entry["delf"] = bench_delf(local_dirs[0].parent, provider, decoded[0])
        results[provider] = entry

    speedup = {}
    if "CUDAExecutionProvider" in results:
        cpu, cuda = results["CPUExecutionProvider"], results["CUDAExecutionProvider"]
        for size in map(str, BATCH_SIZES):
            speedup[f"model_batch_{size}"] = (
                cuda["batches"][size]["images_per_s"] / cpu["batches"][size]["images_per_s"]  # type: ignore[index]
            )
        speedup["end_to_end"] = (
            cuda["end_to_end"]["images_per_s"] / cpu["end_to_end"]["images_per_s"]  # type: ignore[index]
        )
        if cpu.get("delf") and cuda.get("delf"):  # type: ignore[union-attr]
            for key in ("gallery_upright_ms_p50", "query_4_rotations_ms_p50"):
                speedup[f"delf_{key}"] = cpu["delf"][key] / cuda["delf"][key]  # type: ignore[index]
    report = {
        "benchmark": "embedder_providers",
        "model_version": cpu_model.manifest.version,
        "input_size": list(cpu_model.manifest.input_size),
        "images": str(args.images),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_avg": os.getloadavg(),
            "onnxruntime": ort.__version__,
            "available_providers": sorted(available),
        },
        "cpu_stages_ms_p50": {
            "decode_640x480_jpeg": 1000 * statistics.median(decode_times),
            "preprocess": 1000 * statistics.median(preprocess_times),
            "rootsift_extract": 1000 * statistics.median(rootsift_times),
        },
        "providers": results,
        "speedup_cuda_over_cpu": speedup,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
