"""What `visearch train` costs on 1,000 images with its defaults, on this machine's CPU.

Runs the job's own pipeline in process (no stack): split (unseen labels + held-out photos of
known labels), trunk activations of every view, fine-tuning, held-out scores, then the refit on
every image, on ukbench1000 (250 labels x 4 photos). Reports wall and CPU seconds per stage
and the held-out scores; writes JSON.

    .venv/bin/python bench/training_time.py --out bench/results/training_time_ukbench1000.json
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

from services.common.model_registry import load_local
from services.models.build import BASE_VERSION
from services.training.features import FeatureCache, TrainImage
from services.training.job import encoder_and_trainer
from services.training.pipeline import refit_all, run_pipeline
from services.training.settings import PipelineSettings, TrainConfig

DATASET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ukbench1000"


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _images(root: Path) -> list[TrainImage]:
    rows = csv.DictReader((root / "groundtruth.csv").open(newline="", encoding="utf-8"))
    out = []
    for row in rows:
        data = (root / "images" / row["filename"]).read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        out.append(TrainImage(row["filename"], row["group"], sha, lambda d=data: d))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--model-dir", type=Path, default=Path("models/global") / BASE_VERSION)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    images = _images(args.dataset)
    threads = os.cpu_count() or 1
    settings = PipelineSettings(TrainConfig(threads=threads))
    manifest, _ = load_local(args.model_dir)
    stages: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as cache_root:
        wall, cpu = time.perf_counter(), _cpu_s()
        encoder, trainer = encoder_and_trainer(args.model_dir, settings.train.tail_blocks, threads)
        cache = FeatureCache(Path(cache_root), encoder.key)
        outcome = run_pipeline(images, encoder, settings, cache, trainer=trainer)
        stages["split_train_score"] = {
            "wall_s": round(time.perf_counter() - wall, 1),
            "cpu_s": round(_cpu_s() - cpu, 1),
            "features_wall_s": round(outcome.features_s, 1),
            "train_wall_s": round(outcome.train_s, 1),
        }
        wall, cpu = time.perf_counter(), _cpu_s()
        fitted = refit_all(images, encoder, settings, cache, trainer)
        stages["refit"] = {
            "wall_s": round(time.perf_counter() - wall, 1),
            "cpu_s": round(_cpu_s() - cpu, 1),
            "train_wall_s": round(fitted.stats.wall_s, 1),
        }
    total = {k: round(sum(s[k] for s in stages.values()), 1) for k in ("wall_s", "cpu_s")}
    report = {
        "benchmark": "training_time",
        "dataset": "ukbench1000 (1,000 images, 250 labels)",
        "model": manifest.version,
        "settings": {"train": settings.train.as_dict(), "views": settings.views,
                     "holdout": settings.holdout, "holdout_photos": settings.holdout_photos},
        "host": {"cpus": os.cpu_count(), "machine": platform.machine()},
        "stages": stages,
        "total": total,
        "metrics": outcome.metrics(),
        "sizes": {"train_images": outcome.train_images, "holdout_images": outcome.holdout_images},
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({"total": total, "stages": stages}))


if __name__ == "__main__":
    main()
