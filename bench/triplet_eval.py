"""Triplet-trained heads vs the raw backbone on held-out labels.

    python bench/triplet_eval.py ukbench [--views 7] [--epochs 20] [--dims 128,256,512]
    python bench/triplet_eval.py flowers [--per-class 0]  # docs: --per-class 120 --views 1
    python bench/triplet_eval.py timing [--per-class 100] [--threads 0]

ukbench: ukbench1000 split by group: heads trained on groups 0-174 (700 images, each with
``--views`` seeded augmented views: full-circle rotation, scale, crop, colour, blur, JPEG);
queries are the 300 images of groups 175-249, against a gallery of all 1,000 images. Two query
sets: the images themselves (excluded from their own ranking, 3 relevant) and a transformed copy
of each (visearch/transforms.py: rotation 0-360, scale 0.5-1.5, crop 60-90 %, JPEG 30-70,
seeded; 4 relevant, the untouched source included), and the same transformed queries with
their untouched source left out of the gallery ("rotated_other_views": 3 relevant, the other
photos of the object; a user's new photo is never in the gallery). Ablations at 256-d:
learned whitening alone, and PCA init + triplet. mAP over the whole ranking, P@1.

flowers: flowers5 split 80/20 per class (seeded); held-out images query each other (leave one
out, category level): P@5 and mAP of the raw backbone vs a triplet-trained head; writes
docs/flowers5_embeddings.png (PCA to 2-D of the held-out embeddings, before | after).

Backbone features come from the served ONNX model (models/global/...) through the training
cache (~/.cache/visearch/train-features). Writes bench/results/triplet_eval_<dataset>.json.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.training.evaluate import retrieval_scores  # noqa: E402
from services.training.features import (  # noqa: E402
    DECODE_LIMITS,
    Backbone,
    FeatureCache,
    TrainImage,
    view_features,
)
from services.training.pipeline import project, train_view_seeds  # noqa: E402
from services.training.train import TrainConfig, train_head  # noqa: E402
from visearch import transforms  # noqa: E402

DATASETS = ROOT.parent / "shared" / "datasets"
RESULTS = ROOT / "bench" / "results"
DEFAULT_CACHE = Path("~/.cache/visearch/train-features").expanduser()


def load_avg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def file_image(image_id: str, label: str, path: Path) -> TrainImage:
    data = path.read_bytes()
    return TrainImage(image_id, label, hashlib.sha256(data).hexdigest(), path.read_bytes)


def query_features(images: list[TrainImage], backbone: Backbone) -> np.ndarray:
    """float32 [n, 1280]: the issue-4 transformed copy of each image (visearch.transforms)."""
    from services.common.imaging import decode_rgb

    views = [
        decode_rgb(transforms.transform_image_bytes(im.load(), im.id)[0], DECODE_LIMITS)
        for im in images
    ]
    return backbone.embed(views)


def ukbench(args: argparse.Namespace, backbone: Backbone, cache: FeatureCache) -> dict:
    rows = list(csv.DictReader((DATASETS / "ukbench1000" / "groundtruth.csv").open()))
    images = [
        file_image(
            Path(r["filename"]).stem,
            r["group"],
            DATASETS / "ukbench1000" / "images" / r["filename"],
        )
        for r in rows
    ]
    labels = np.asarray([im.label for im in images])
    train_idx = np.flatnonzero(labels.astype(int) < 175)
    held_idx = np.flatnonzero(labels.astype(int) >= 175)
    t0 = time.perf_counter()
    seeds = train_view_seeds(args.views, args.seed)
    train_feats = view_features([images[i] for i in train_idx], seeds, backbone, cache)
    gallery = view_features(images, [0], backbone, cache)[:, 0]
    features_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rotated = query_features([images[i] for i in held_idx], backbone)
    queries_s = time.perf_counter() - t0

    def scores(transform) -> dict:
        g = transform(gallery)
        q_orig = retrieval_scores(g[held_idx], labels[held_idx], g, labels, held_idx)
        q_rot = retrieval_scores(transform(rotated), labels[held_idx], g, labels)
        q_other = retrieval_scores(transform(rotated), labels[held_idx], g, labels, held_idx)
        return {
            "original": q_orig.as_dict(),
            "rotated": q_rot.as_dict(),
            "rotated_other_views": q_other.as_dict(),
        }

    results = [{"model": "raw backbone", "dims": backbone.dims, **scores(lambda x: x)}]
    base = TrainConfig(
        epochs=args.epochs, hidden=args.hidden, seed=args.seed, margin=args.margin, lr=args.lr
    )
    runs = [
        (f"trained head ({base.init} init + triplet)", replace(base, dims=d)) for d in args.dims
    ]
    if 256 in args.dims and not args.hidden:  # ablations at 256-d
        runs += [
            ("learned whitening only (no triplet epochs)", replace(base, dims=256, epochs=0)),
            (
                "PCA init + triplet (60 epochs, lr 1e-3)",
                replace(base, dims=256, init="pca", epochs=60, lr=1e-3),
            ),
        ]
    for name, config in runs:
        head, stats = train_head(train_feats, labels[train_idx], config)
        results.append(
            {
                "model": name,
                "dims": config.dims,
                **scores(lambda x, h=head: project(h, x)),
                "train_s": round(stats.wall_s, 2),
                "config": config.as_dict(),
                "batches_dropped": stats.batches_dropped,
                "triplets_semi_hard": stats.triplets_semi_hard,
                "easy_pairs": stats.easy_pairs,
                "loss_first_last": [
                    round(stats.loss_first_epoch, 4),
                    round(stats.loss_last_epoch, 4),
                ],
            }
        )
        print(json.dumps(results[-1]), flush=True)
    print(json.dumps(results[0]), flush=True)
    return {
        "dataset": "ukbench1000",
        "split": "train groups 0-174 (700 images), queries groups 175-249 (300), gallery 1000",
        "views_per_train_image": args.views,
        "features_s": round(features_s, 1),
        "feature_cache": {"hits": cache.hits, "misses": cache.misses},
        "rotated_queries_s": round(queries_s, 1),
        "results": results,
    }


def flowers(args: argparse.Namespace, backbone: Backbone, cache: FeatureCache) -> dict:
    root = DATASETS / "flowers5"
    rows = list(csv.DictReader((root / "groundtruth.csv").open()))
    rng = np.random.default_rng(args.seed)
    train, held = [], []
    for label in sorted({r["label"] for r in rows}):
        mine = [r for r in rows if r["label"] == label]
        mine = [mine[i] for i in rng.permutation(len(mine))]
        if args.per_class:
            mine = mine[: args.per_class]
        cut = int(round(0.8 * len(mine)))
        for part, chunk in ((train, mine[:cut]), (held, mine[cut:])):
            part += [
                file_image(r["filename"], label, root / "images" / r["filename"]) for r in chunk
            ]
    t0 = time.perf_counter()
    train_feats = view_features(train, train_view_seeds(args.views, args.seed), backbone, cache)
    held_feats = view_features(held, [0], backbone, cache)[:, 0]
    features_s = time.perf_counter() - t0
    train_labels = np.asarray([im.label for im in train])
    held_labels = np.asarray([im.label for im in held])
    leave_one_out = np.arange(len(held))
    raw = retrieval_scores(held_feats, held_labels, held_feats, held_labels, leave_one_out)
    results = [{"model": "raw backbone", "dims": backbone.dims, **raw.as_dict()}]
    dims = args.dims[0] if len(args.dims) == 1 else 256
    config = TrainConfig(
        dims=dims, epochs=args.epochs, hidden=args.hidden, seed=args.seed, margin=args.margin,
        lr=args.lr,
    )  # fmt: skip
    head, stats = train_head(train_feats, train_labels, config)
    after = project(head, held_feats)
    trained = retrieval_scores(after, held_labels, after, held_labels, leave_one_out)
    results.append(
        {
            "model": f"trained head ({config.init} init + triplet)",
            "dims": dims,
            **trained.as_dict(),
            "train_s": round(stats.wall_s, 2),
            "batches_dropped": stats.batches_dropped,
        }
    )
    print(json.dumps(results), flush=True)
    picture = ROOT / "docs" / "flowers5_embeddings.png"
    draw_embeddings(
        picture,
        [(held_feats, "raw backbone (1280-d)"), (after, f"triplet head ({dims}-d)")],
        held_labels,
    )
    return {
        "dataset": "flowers5",
        "split": f"80/20 per class (seed {args.seed}), {len(train)} train / {len(held)} held out",
        "protocol": "held-out images query each other (leave one out); relevant = same class",
        "views_per_train_image": args.views,
        "features_s": round(features_s, 1),
        "feature_cache": {"hits": cache.hits, "misses": cache.misses},
        "results": results,
        "picture": str(picture.relative_to(ROOT)),
    }


COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def draw_embeddings(path: Path, panels: list[tuple[np.ndarray, str]], labels: np.ndarray) -> None:
    """PNG of each panel's embeddings (float32 [n, d]) projected to 2-D by PCA, by class."""
    import cv2
    from sklearn.decomposition import PCA

    classes = sorted(set(labels.tolist()))
    size, pad = 520, 30
    canvas = np.full((size + 2 * pad + 40, len(panels) * (size + pad) + pad, 3), 255, np.uint8)
    for p, (vectors, title) in enumerate(panels):
        xy = PCA(n_components=2, random_state=0).fit_transform(vectors)
        xy = (xy - xy.min(axis=0)) / np.maximum(np.ptp(xy, axis=0), 1e-9)
        x0 = pad + p * (size + pad)
        cv2.rectangle(canvas, (x0, pad + 30), (x0 + size, pad + 30 + size), (200, 200, 200), 1)
        cv2.putText(
            canvas, title, (x0, pad + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA
        )
        for (u, v), label in zip(xy, labels.tolist(), strict=True):
            rgb = COLOURS[classes.index(label) % len(COLOURS)]
            centre = (int(x0 + 8 + u * (size - 16)), int(pad + 38 + v * (size - 16)))
            cv2.circle(canvas, centre, 4, rgb[::-1], -1, cv2.LINE_AA)
    for c, name in enumerate(classes):
        x = pad + c * 120
        y = canvas.shape[0] - 15
        cv2.circle(canvas, (x + 6, y - 5), 6, COLOURS[c % len(COLOURS)][::-1], -1, cv2.LINE_AA)
        cv2.putText(
            canvas, name, (x + 18, y), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA
        )
    cv2.imwrite(str(path), canvas)


def timing(args: argparse.Namespace, backbone: Backbone, _: FeatureCache) -> dict:
    """Cold-cache feature throughput on ``--per-class`` ukbench images (default 100)."""
    import tempfile

    rows = list(csv.DictReader((DATASETS / "ukbench1000" / "groundtruth.csv").open()))
    n = args.per_class or 100
    images = [
        file_image(r["filename"], r["group"], DATASETS / "ukbench1000" / "images" / r["filename"])
        for r in rows[-n:]
    ]
    seeds = train_view_seeds(args.views, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        view_features(images, seeds, backbone, FeatureCache(Path(tmp), backbone.key))
        seconds = time.perf_counter() - t0
    views = len(images) * len(seeds)
    return {
        "dataset": "ukbench1000 (last images), cold feature cache",
        "images": len(images),
        "views_per_image": len(seeds),
        "seconds": round(seconds, 1),
        "views_per_s": round(views / seconds, 2),
        "extrapolated_1000_images_min": round(seconds * 1000 / len(images) / 60, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dataset", choices=["ukbench", "flowers", "timing"])
    parser.add_argument("--views", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument(
        "--dims", type=lambda s: [int(v) for v in s.split(",")], default=[128, 256, 512]
    )
    parser.add_argument("--hidden", type=int, default=0)
    parser.add_argument("--margin", type=float, default=TrainConfig.margin)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--per-class", type=int, default=0, help="flowers: images per class (0 = all)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    model_dir = sorted((ROOT / "models" / "global").glob("*/manifest.json"))[0].parent
    backbone = Backbone(model_dir, threads=args.threads)
    cache = FeatureCache(args.cache, backbone.key)
    before = load_avg()
    t0 = time.perf_counter()
    run = {"ukbench": ukbench, "flowers": flowers, "timing": timing}[args.dataset]
    report = run(args, backbone, cache)
    report.update(
        {
            "backbone": backbone.manifest.version,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "wall_s": round(time.perf_counter() - t0, 1),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "load_average_before": before,
            "load_average_after": load_avg(),
        }
    )
    out = args.out or RESULTS / f"triplet_eval_{args.dataset}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
