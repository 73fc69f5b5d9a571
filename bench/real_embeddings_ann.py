"""Recall@10 vs queries/s on real embeddings: the check that the synthetic mixture flatters no one.

Embeds every image under --images-root (ukbench1000 and flowers5 by default) plus seeded
augmented views of each (crop 35-100 % of the area, rotation ±25°, down-scaling to 40-100 %,
hue / saturation / contrast / brightness jitter, mirror), with the served ONNX global model
(models/global/<version>, `make models`; CUDA provider when this ONNX Runtime has one, else
CPU), caches the vectors as .npy, and runs the same comparison as bench/ann_recall.py on
them, reusing its worker processes: numpy brute force, ScaNN through VectorIndex (service
defaults, swept), ScaNN built directly (tuned), faiss HNSW (M=32) and faiss IVF-PQ fast-scan.

Queries are further augmented views (other seeds) of randomly chosen images, so each has
near-duplicates in the database (other views of the same photo) as real instance-search
queries do; "own cluster" in the statistics means "views of the query's own image".

    # the ~100k configuration (5,326 images x 19 views), on a many-core machine:
    .venv/bin/python bench/real_embeddings_ann.py --views 19 --device-info "16-core, L4 GPU"
    # in parts (e.g. under a 10-minute limit per command; the cache makes the 2nd cheap):
    .venv/bin/python bench/real_embeddings_ann.py --methods ""              # embed, cache
    .venv/bin/python bench/real_embeddings_ann.py --methods numpy,scann_service,scann
    .venv/bin/python bench/real_embeddings_ann.py --methods hnsw,ivfpq_fs --merge
    # smoke run (a few minutes on 2 cores):
    .venv/bin/python bench/real_embeddings_ann.py --max-images 200 --views 6 --nq 100 \\
        --quick --out /tmp/real_smoke.json

The JSON has ann_recall.py's layout; named bench/results/ann_recall_real_*.json it is
rendered into docs/benchmarks_ann.md by `python bench/ann_recall.py --report`.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import ann_recall  # noqa: E402

from services.common.imaging import ImageLimits, decode_rgb  # noqa: E402
from services.common.model_registry import load_local  # noqa: E402
from services.embedder.core import GlobalModel, create_session  # noqa: E402
from services.indexer.vector_index import MIN_SCANN_VECTORS  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
MAX_SIDE = 640  # decoded images are shrunk to this long side before augmentation
AUGMENT_VERSION = 1  # bump when augment() changes (part of the cache key)
EMBED_BATCH = 64


def find_images(root: Path, max_images: int, seed: int) -> list[Path]:
    """Every image file under root (sorted); a seeded sample of max_images if > 0."""
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if max_images and max_images < len(paths):
        keep = np.random.default_rng(seed).choice(len(paths), max_images, replace=False)
        paths = [paths[i] for i in sorted(keep)]
    return paths


def load_rgb(path: Path) -> np.ndarray:
    """uint8 [H, W, 3] RGB, long side at most MAX_SIDE."""
    image = decode_rgb(path.read_bytes(), ImageLimits(max_bytes=64 * 1024 * 1024))
    scale = MAX_SIDE / max(image.shape[:2])
    if scale < 1:
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return image


def augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 [H, W, 3] RGB -> another view of it, uint8 [h, w, 3] RGB."""
    h, w = image.shape[:2]
    area = rng.uniform(0.35, 1.0) * h * w
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    ch = max(16, min(h, round(math.sqrt(area / aspect))))
    cw = max(16, min(w, round(math.sqrt(area * aspect))))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    out = image[y : y + ch, x : x + cw]
    rotation = cv2.getRotationMatrix2D((cw / 2, ch / 2), float(rng.uniform(-25, 25)), 1.0)
    out = cv2.warpAffine(out, rotation, (cw, ch), borderMode=cv2.BORDER_REFLECT_101)
    scale = rng.uniform(0.4, 1.0)
    out = cv2.resize(
        out, (max(16, round(cw * scale)), max(16, round(ch * scale))), interpolation=cv2.INTER_AREA
    )
    hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-8, 8)) % 180
    hsv[..., 1] *= rng.uniform(0.7, 1.3)
    rgb = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB)
    rgb = rgb.astype(np.float32)
    mean = rgb.mean()
    rgb = (rgb - mean) * rng.uniform(0.75, 1.25) + mean + rng.uniform(-25, 25)
    if rng.random() < 0.5:
        rgb = rgb[:, ::-1]
    return np.ascontiguousarray(np.clip(rgb, 0, 255).astype(np.uint8))


def load_model(model_dir: Path, provider: str) -> GlobalModel:
    manifest, path = load_local(model_dir)
    providers = ["CPUExecutionProvider"]
    if provider in ("auto", "cuda"):
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    try:
        return GlobalModel(manifest, create_session(path, providers, threads=0))
    except Exception as exc:  # a CUDA provider listed but unusable (no device, no driver)
        if providers[0] == "CPUExecutionProvider" or provider == "cuda":
            raise
        print(f"CUDA session failed ({exc!r}); using CPU", file=sys.stderr)
        return GlobalModel(manifest, create_session(path, ["CPUExecutionProvider"], threads=0))


def embed_views(
    model: GlobalModel,
    paths: list[Path],
    jobs: list[tuple[int, int]],
    seed: int,
    threads: int,
    log,
) -> np.ndarray:
    """jobs: (image index, view) pairs, view 0 = the image itself; -> float32 [len(jobs), d]."""
    out = np.empty((len(jobs), model.manifest.output_dims), dtype=np.float32)
    by_image: dict[int, list[int]] = {}
    for position, (image_index, _) in enumerate(jobs):
        by_image.setdefault(image_index, []).append(position)

    def prepare(image_index: int) -> list[tuple[int, np.ndarray]]:
        image = load_rgb(paths[image_index])
        prepared = []
        for position in by_image[image_index]:
            view = jobs[position][1]
            viewed = (
                image
                if view == 0
                else augment(image, np.random.default_rng([seed, image_index, view]))
            )
            prepared.append((position, model.preprocess(viewed)))
        return prepared

    images = sorted(by_image)
    started, done = time.perf_counter(), 0
    pending: list[tuple[int, np.ndarray]] = []

    def flush(limit: int) -> None:
        nonlocal pending, done
        while len(pending) >= limit and pending:
            batch, pending = pending[:EMBED_BATCH], pending[EMBED_BATCH:]
            out[[position for position, _ in batch]] = model.run(np.stack([x for _, x in batch]))
            done += len(batch)

    step = 4 * max(1, threads)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for number, chunk_start in enumerate(range(0, len(images), step)):
            for prepared in pool.map(prepare, images[chunk_start : chunk_start + step]):
                pending.extend(prepared)
            flush(EMBED_BATCH)
            if number % 50 == 0:
                rate = done / max(time.perf_counter() - started, 1e-9)
                log(f"  embedded {done}/{len(jobs)} ({rate:.0f}/s)")
    flush(1)
    return out


def prepare_data(args, log) -> dict:
    """Embeds (or loads from the cache) base views and query views; exact ground truth."""
    root = Path(args.images_root)
    paths = find_images(root, args.max_images, args.seed)
    if not paths:
        raise SystemExit(f"no images under {root}")
    manifest, _ = load_local(Path(args.model_dir))
    key_text = json.dumps(
        [
            manifest.sha256,
            [str(p.relative_to(root)) for p in paths],
            args.views,
            args.nq,
            args.seed,
            AUGMENT_VERSION,
        ]
    )
    tag = f"real_{hashlib.sha256(key_text.encode()).hexdigest()[:16]}"
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    files = {name: cache / f"{tag}_{name}.npy" for name in ("base", "queries", "gt")}
    info_path = cache / f"{tag}_info.json"
    if all(p.exists() for p in files.values()) and info_path.exists():
        log(f"embeddings from cache {cache}/{tag}_*")
        return {"paths": files, **json.loads(info_path.read_text())}
    model = load_model(Path(args.model_dir), args.provider)
    log(f"{len(paths)} images x {args.views} views; model {manifest.version}, {model.providers}")
    base_jobs = [(i, v) for i in range(len(paths)) for v in range(args.views)]
    rng = np.random.default_rng(args.seed + 1)
    query_images = rng.choice(len(paths), args.nq, replace=args.nq > len(paths))
    query_jobs = [(int(i), args.views + j) for j, i in enumerate(query_images)]
    t0 = time.perf_counter()
    base = embed_views(model, paths, base_jobs, args.seed, args.threads, log)
    queries = embed_views(model, paths, query_jobs, args.seed, args.threads, log)
    embed_s = time.perf_counter() - t0
    log(f"embedded {len(base) + len(queries)} views in {embed_s:.0f} s; exact ground truth ...")
    base_labels = np.array([i for i, _ in base_jobs])
    query_labels = np.array([i for i, _ in query_jobs])
    gt_ids, gt_scores = ann_recall.exact_topk(base, queries, ann_recall.K)
    stats = ann_recall.data_stats(base, queries, base_labels, query_labels, gt_ids, gt_scores)
    log(f"data: {stats}")
    for name, array in (("base", base), ("queries", queries), ("gt", gt_ids)):
        np.save(files[name], array)
    datasets = sorted({p.relative_to(root).parts[0] for p in paths})
    info = {
        "generator": {
            "kind": f"real embeddings ({manifest.version}) of {len(paths)} images "
            f"({', '.join(datasets)}) x {args.views} views (view 0 = the image, others "
            "augmented); queries: other augmented views",
            "images": len(paths),
            "views": args.views,
            "model_version": manifest.version,
            "embed_providers": model.providers,
            "augment_version": AUGMENT_VERSION,
        },
        "data_stats": stats,
        "embed_s": round(embed_s, 1),
        "embed_views_per_s": round((len(base) + len(queries)) / embed_s, 1),
        "seed": args.seed,
    }
    info_path.write_text(json.dumps(info))
    return {"paths": files, **info}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images-root", default=str(ROOT.parent / "shared" / "datasets"))
    ap.add_argument("--views", type=int, default=19, help="views per image, the image included")
    ap.add_argument("--max-images", type=int, default=0, help="a seeded sample (0 = all)")
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model-dir", default=str(ROOT / "models" / "global" / "mobilenetv2-gem-v1"))
    ap.add_argument("--provider", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--device-info", default="", help="free text describing the machine")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--methods", default="numpy,scann_service,scann,hnsw,ivfpq_fs")
    ap.add_argument("--scann-variants", default="", help="as bench/ann_recall.py")
    ap.add_argument("--ivf-variants", default="", help="as bench/ann_recall.py")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sweep-repeats", type=int, default=2)
    ap.add_argument("--single", type=int, default=200)
    ap.add_argument("--bf-queries", type=int, default=500)
    ap.add_argument("--bf-single", type=int, default=20)
    ap.add_argument("--scann-leaf-fractions", default="0.005,0.01,0.02,0.03,0.05,0.075,0.1,0.15")
    ap.add_argument("--scann-reorder", default="50,100,200,400")
    ap.add_argument("--hnsw-ef", default="16,24,32,48,64,96,128,192,256,384,512")
    ap.add_argument("--ivf-nprobe", default="1,2,4,8,12,16,24,32,48,64")
    ap.add_argument("--ivf-k-factor", default="3,5,10,20")
    ap.add_argument("--quick", action="store_true", help="fewer repeats and sweep points")
    ap.add_argument("--worker-timeout", type=int, default=7200)
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "visearch_real_cache"))
    ap.add_argument("--out", default="", help="default bench/results/ann_recall_real_<N>.json")
    ap.add_argument(
        "--merge",
        action="store_true",
        help="keep the other methods' results already in --out (split a run into parts)",
    )
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.sweep_repeats, args.single = 1, 1, 20
        args.bf_queries, args.bf_single = min(args.bf_queries, 200), 5
        args.scann_leaf_fractions = "0.02,0.1,0.3"
        args.scann_reorder = "100"
        args.hnsw_ef = "16,64,256"
        args.ivf_nprobe = "2,8,32"
        args.ivf_k_factor = "10"
    args.scann_leaf_fractions = [float(x) for x in args.scann_leaf_fractions.split(",")]
    for name in ("scann_reorder", "hnsw_ef", "ivf_nprobe", "ivf_k_factor"):
        setattr(args, name, [int(x) for x in getattr(args, name).split(",")])
    start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - start:7.1f}s] {msg}", file=sys.stderr, flush=True)

    data = prepare_data(args, log)
    n, dims = np.load(data["paths"]["base"], mmap_mode="r").shape
    if not args.methods.strip():
        log(f"embeddings cached in {args.cache}; no methods asked for")
        return
    results = run_methods(args, data, n, log)
    out_path = (
        Path(args.out)
        if args.out
        else (ann_recall.RESULTS / f"ann_recall_real_{round(n / 1000)}kx{dims}.json")
    )
    runs = [{"argv": sys.argv[1:], "date": datetime.datetime.now().isoformat(timespec="seconds")}]
    if args.merge and out_path.exists():
        previous = json.loads(out_path.read_text())
        labels = {r["label"] for r in results}
        results = [r for r in previous["results"] if r["label"] not in labels] + results
        runs = previous.get("runs", []) + runs
    out = {
        "config": {
            "name": out_path.stem.removeprefix("ann_recall_"),
            "n": n,
            "generated_n": n,
            "dims": int(dims),
            "nq": args.nq,
            "k": ann_recall.K,
            "threads": args.threads,
            "batch": ann_recall.BATCH,
            "data": "real embeddings + augmented views",
            "hnsw_n": n,
            "quick": args.quick,
            "argv": sys.argv[1:],
        },
        "date": datetime.date.today().isoformat(),
        "machine": {
            "cpu": ann_recall._cpu_name(),
            "cpus": os.cpu_count(),
            "device_info": args.device_info,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "versions": ann_recall._versions(),
            "mem_total_gib": round(
                os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1
            ),
            "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "service_code": ann_recall._service_code(),
        "data": {k: v for k, v in data.items() if k != "paths"},
        "results": results,
        "summary": ann_recall.summarise(results, n),
        "total_wall_s": round(time.perf_counter() - start, 1),
        "notes": [
            f"Real embeddings, measured on: {args.device_info or 'an unnamed machine'} "
            f"({os.cpu_count()} cores, {args.threads} threads per method); embedding "
            f"{data.get('embed_views_per_s')} views/s on {data['generator']['embed_providers']}."
        ],
        "runs": runs,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, indent=1))
    log(f"wrote {out_path}")
    print(json.dumps(out["summary"], indent=1))


def run_methods(args, data: dict, n: int, log) -> list[dict]:
    """The ann_recall.py workers, one fresh process per index."""
    leaves = max(16, min(4000, int(math.sqrt(n))))
    results = []
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        if method == "scann_service" and n < MIN_SCANN_VECTORS:
            log(f"skipping {method}: N = {n} is below VectorIndex's ScaNN minimum")
            continue
        if method == "scann":
            for params in ann_recall.parse_variants(args.scann_variants) or [
                {"num_leaves": min(4000, 2 * leaves)}
            ]:
                label = "scann direct " + ",".join(f"{k}={v}" for k, v in params.items())
                results.append(ann_recall.run_worker("scann", label, args, data, params, log=log))
        elif method == "ivfpq_fs":
            for params in ann_recall.parse_variants(args.ivf_variants) or [
                {"nlist": 2 ** round(math.log2(leaves))}
            ]:
                label = "faiss IVF-PQ fast-scan + RFlat " + ",".join(
                    f"{k}={v}" for k, v in params.items()
                )
                results.append(
                    ann_recall.run_worker("ivfpq_fs", label, args, data, params, log=log)
                )
        elif method == "hnsw":
            results.append(
                ann_recall.run_worker(
                    "hnsw",
                    "faiss HNSW M=32,efC=200",
                    args,
                    data,
                    {"M": 32, "efConstruction": 200},
                    log=log,
                )
            )
        else:
            label = {
                "numpy": "brute force numpy",
                "faiss_flat": "faiss IndexFlatIP",
                "scann_service": "ScaNN via VectorIndex (service)",
            }[method]
            results.append(ann_recall.run_worker(method, label, args, data, log=log))
        r = results[-1]
        if "points" in r:
            log(
                f"{r['label']}: build {r.get('build_s')} s, "
                f"{r['rss_delta_bytes_per_vector']} B/vector"
            )
    return results


if __name__ == "__main__":
    main()
