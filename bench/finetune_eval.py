"""How the training defaults were chosen: head only vs fine-tuned last blocks, triplet vs ArcFace.

Dev protocol (SMVS DVD covers, the packshot case): train on the 100 clean covers (one image per
label, augmented views as positives), then query with the 400 phone photos against the covers
(P@1, mAP). Every configuration uses the product code (services/training): trunk activations
from :class:`TrunkRunner`, training by :func:`finetune_tail` or the head-only path.

    .venv/bin/python bench/finetune_eval.py --out bench/results/finetune_eval_smvs.json \\
        --configs head:triplet tail2:triplet tail2:arcface tail4:arcface
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from services.common.model_registry import ModelManifest
from services.training.evaluate import retrieval_scores
from services.training.features import FeatureCache, TrainImage, TrunkRunner, view_features
from services.training.finetune import TailEmbedding, embed_activations, finetune_tail
from services.training.pipeline import train_view_seeds
from services.training.settings import TrainConfig
from services.training.torch_backbone import torch_global_model

DATASET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "smvs_dvd_covers"


def _images(root: Path, role: str) -> list[TrainImage]:
    rows = list(csv.DictReader((root / "groundtruth.csv").open(newline="", encoding="utf-8")))
    out = []
    for row in rows:
        if row["role"] != role:
            continue
        path = root / "images" / row["filename"]
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        out.append(TrainImage(row["filename"], row["group"], sha, lambda d=data: d))
    return out


def _parse(spec: str) -> tuple[int, str]:
    """``head:triplet`` → (0, "triplet"); ``tail2:arcface`` → (2, "arcface")."""
    part, loss = spec.split(":")
    return (0 if part == "head" else int(part.removeprefix("tail"))), loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--model-dir", type=Path, default=Path("models/global/mobilenetv2-gem-v1"))
    parser.add_argument("--weights-cache", type=Path, default=None)
    parser.add_argument("--configs", nargs="+", default=["head:triplet", "tail2:triplet"])
    parser.add_argument("--views", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cache", type=Path, default=Path("bench/.cache/finetune"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    manifest = ModelManifest.from_json((args.model_dir / "manifest.json").read_text("utf-8"))
    model, gem_p = torch_global_model(manifest, args.weights_cache)
    gallery, queries = _images(args.dataset, "gallery"), _images(args.dataset, "query")
    g_labels = np.asarray([im.label for im in gallery])
    q_labels = np.asarray([im.label for im in queries])
    base = TrainConfig(epochs=args.epochs, seed=args.seed, threads=os.cpu_count() or 1)
    results: list[dict[str, object]] = []
    by_split: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}
    for spec in args.configs:
        tail_blocks, loss = _parse(spec)
        split = model.backbone.num_blocks - max(tail_blocks, 1)
        if tail_blocks == 0:
            split = model.backbone.num_blocks  # trunk = whole backbone: the head-only case
        if split not in by_split:
            t0 = time.perf_counter()
            runner = TrunkRunner(manifest, model, split)
            cache = FeatureCache(args.cache, runner.key)
            train = view_features(gallery, train_view_seeds(args.views, args.seed), runner, cache)
            query = view_features(queries, [0], runner, cache)[:, 0]
            by_split[split] = (train, query, time.perf_counter() - t0)
        train, query, features_s = by_split[split]
        raw = TailEmbedding(model, split, None, gem_p)
        before = retrieval_scores(
            embed_activations(raw, query), q_labels, embed_activations(raw, train[:, 0]), g_labels
        )
        config = replace(base, tail_blocks=tail_blocks, loss=loss)
        if tail_blocks == 0:
            config = replace(config, tail_lr_scale=0.0)
        embedding, stats = finetune_tail(
            model, split, train, g_labels, config, gem_p, device=args.device
        )
        after = retrieval_scores(
            embed_activations(embedding, query),
            q_labels,
            embed_activations(embedding, train[:, 0]),
            g_labels,
        )
        row = {
            "config": spec,
            "tail_blocks": tail_blocks,
            "loss": loss,
            "split": split,
            "before": before.as_dict(),
            "after": after.as_dict(),
            "train_s": round(stats.wall_s, 1),
            "features_s": round(features_s, 1),
            "loss_first_last": [round(stats.loss_first_epoch, 4), round(stats.loss_last_epoch, 4)],
        }
        print(json.dumps(row), flush=True)
        results.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "finetune_eval",
        "dataset": "smvs_dvd_covers standard (train on 100 covers, 400 phone queries)",
        "model": manifest.version,
        "views": args.views,
        "epochs": args.epochs,
        "device": args.device,
        "host": {"cpus": os.cpu_count(), "machine": platform.machine()},
        "results": results,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
