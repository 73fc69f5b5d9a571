"""Choose the global model's input size by retrieval quality vs CPU time on UKBench (1,000 imgs).

    python bench/global_model_input_size.py [--dataset DIR] [--out JSON] [--threads 2]

For each input size the model is exported to ONNX (the serving artefact) and run with ONNX
Runtime on CPU. Each image is resized whole (stretch, or aspect-preserving sizes), RGB, /255,
ImageNet mean/std, NCHW. Brute-force cosine similarity, then per query:

* N-S score: how many of the 4 images of its group (itself included) are in its top 4 (max 4);
* P@1 and mAP with the query itself excluded (3 relevant images among 999).

Multi-scale rows average the L2-normalised embeddings of several single-size rows and
re-normalise; their time is the sum of those rows' times.
Timings are ONNX Runtime CPU inference only (min over round-robin rounds); on a shared machine
they are inflated, so ``relative_compute`` (pixels / 224^2, which MobileNetV2's FLOPs follow)
and the recorded load averages are included. Writes bench/results/global_model_input_size.json.
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

import cv2
import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.models.export import IMAGENET_MEAN, IMAGENET_STD, export_onnx  # noqa: E402
from services.models.global_model import GlobalEmbeddingModel  # noqa: E402
from services.models.weights import ensure_mobilenet_v2_weights  # noqa: E402

DEFAULT_DATASET = ROOT.parent / "shared" / "datasets" / "ukbench1000"
DEFAULT_OUT = ROOT / "bench" / "results" / "global_model_input_size.json"
INTERP = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}
# (name, (H, W), interpolation). 640x480 photos: H x W = 3 x 4 keeps the aspect ratio.
SINGLE = [
    ("square-224", (224, 224), "area"),
    ("square-288", (288, 288), "area"),
    ("square-352", (352, 352), "area"),
    ("square-448", (448, 448), "area"),
    ("square-352-linear", (352, 352), "linear"),
    ("aspect-240x320", (240, 320), "area"),
    ("aspect-288x384", (288, 384), "area"),
    ("aspect-360x480", (360, 480), "area"),
]
MULTI = [
    ("multi-224+352", ["square-224", "square-352"]),
    ("multi-288+448", ["square-288", "square-448"]),
    ("multi-224+352+448", ["square-224", "square-352", "square-448"]),
]
BATCH = 16


def load_dataset(root: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """Decoded RGB uint8 images [480,640,3] and their group ids [N] int64."""
    with (root / "groundtruth.csv").open() as f:
        rows = list(csv.DictReader(f))
    images = []
    for row in rows:
        bgr = cv2.imread(str(root / "images" / row["filename"]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(row["filename"])
        images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return images, np.array([int(r["group"]) for r in rows], dtype=np.int64)


def preprocess(img: np.ndarray, size: tuple[int, int], interp: str) -> np.ndarray:
    """RGB uint8 [h,w,3] → [3,H,W] float32 normalised."""
    resized = cv2.resize(img, (size[1], size[0]), interpolation=INTERP[interp])
    x = resized.astype(np.float32) / 255.0
    x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def embed_all(
    session: ort.InferenceSession, images: list[np.ndarray], size: tuple[int, int], interp: str
) -> tuple[np.ndarray, float]:
    """Embeddings [N,1280] float32 and preprocessing ms/image."""
    out, t_pre = [], 0.0
    for i in range(0, len(images), BATCH):
        t0 = time.perf_counter()
        x = np.stack([preprocess(im, size, interp) for im in images[i : i + BATCH]])
        t_pre += time.perf_counter() - t0
        out.append(session.run(["embeddings"], {"images": x})[0])
    return np.concatenate(out), 1000 * t_pre / len(images)


def time_inference(
    sessions: dict[str, tuple[ort.InferenceSession, tuple[int, int]]],
    images: list[np.ndarray],
    rounds: int,
) -> dict[str, dict[str, float]]:
    """Per-model min over ``rounds`` of batch-16 ms/image and of batch-1 ms (round-robin).

    The minimum is used because the machine is shared: it is the least disturbed run.
    """
    timings: dict[str, dict[str, list[float]]] = {k: {"b16": [], "b1": []} for k in sessions}
    inputs = {
        k: np.stack([preprocess(im, size, "area") for im in images[:BATCH]])
        for k, (_, size) in sessions.items()
    }
    for k, (session, _) in sessions.items():  # warm-up
        session.run(None, {"images": inputs[k]})
    for _ in range(rounds):
        for k, (session, _) in sessions.items():
            t0 = time.perf_counter()
            session.run(None, {"images": inputs[k]})
            t1 = time.perf_counter()
            for j in range(4):
                session.run(None, {"images": inputs[k][j : j + 1]})
            t2 = time.perf_counter()
            timings[k]["b16"].append(1000 * (t1 - t0) / BATCH)
            timings[k]["b1"].append(1000 * (t2 - t1) / 4)
    return {
        k: {"infer_ms_per_image_b16": min(v["b16"]), "latency_ms_b1": min(v["b1"])}
        for k, v in timings.items()
    }


def retrieval_metrics(emb: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """N-S (self included, max 4), P@1 and mAP (self excluded) from [N,D] unit vectors."""
    n = len(groups)
    sim = emb @ emb.T
    order = np.argsort(-sim, axis=1, kind="stable")
    same = groups[order] == groups[:, None]
    ns = float(same[:, :4].sum(axis=1).mean())
    not_self = order != np.arange(n)[:, None]
    rel = (groups[order[not_self].reshape(n, n - 1)] == groups[:, None]).astype(np.float64)
    precision = np.cumsum(rel, axis=1) / np.arange(1, n)
    ap = (precision * rel).sum(axis=1) / np.maximum(rel.sum(axis=1), 1)
    return {"ns_score": ns, "map": float(ap.mean()), "p_at_1": float(rel[:, 0].mean())}


def make_session(path: Path, threads: int) -> ort.InferenceSession:
    """CPU ONNX Runtime session with ``threads`` intra-op threads."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def main() -> None:
    """Run every configuration and write the JSON report."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10, help="timing rounds (min is kept)")
    args = ap.parse_args()

    load_start = list(os.getloadavg())
    images, groups = load_dataset(args.dataset)
    model = GlobalEmbeddingModel.from_weights(ensure_mobilenet_v2_weights())
    rows, embs, sessions = [], {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, size, interp in SINGLE:
            path = Path(tmp) / f"{name}.onnx"
            export_onnx(model, path, size)
            session = make_session(path, args.threads)
            emb, pre_ms = embed_all(session, images, size, interp)
            embs[name] = emb
            if interp == "area":
                sessions[name] = (session, size)
            row = {"name": name, "input_size": list(size), "interpolation": interp,
                   **retrieval_metrics(emb, groups), "preprocess_ms_per_image": pre_ms,
                   "relative_compute": size[0] * size[1] / 224**2}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
        timings = time_inference(sessions, images, args.rounds)
    by_name = {r["name"]: r for r in rows}
    for row in rows:
        row.update(timings[row["name"].removesuffix("-linear")])
    for name, parts in MULTI:
        emb = sum(embs[p] for p in parts)
        emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        row = {"name": name, "parts": parts, **retrieval_metrics(emb, groups)}
        keys = ("infer_ms_per_image_b16", "preprocess_ms_per_image", "latency_ms_b1",
                "relative_compute")  # fmt: skip
        for key in keys:
            row[key] = sum(by_name[p][key] for p in parts)
        rows.append(row)
    for row in rows:
        print(
            f"{row['name']:>20}  N-S {row['ns_score']:.3f}  mAP {row['map']:.4f}  "
            f"P@1 {row['p_at_1']:.3f}  b16 {row['infer_ms_per_image_b16']:6.1f} ms/img  "
            f"b1 {row['latency_ms_b1']:6.1f} ms  pre {row['preprocess_ms_per_image']:4.1f} ms  "
            f"compute x{row['relative_compute']:.2f}"
        )

    report = {
        "dataset": str(args.dataset), "n_images": len(images), "ort_threads": args.threads,
        "ort_version": ort.__version__, "cpu": platform.processor() or platform.machine(),
        "batch": BATCH, "timing": "min over rounds, round-robin across models",
        "load_average_at_start": load_start, "load_average_at_end": list(os.getloadavg()),
        "results": rows,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
