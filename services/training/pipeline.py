"""Storage-free training pipeline: split by label, features, train, evaluate before/after."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from services.training.evaluate import Scores, retrieval_scores
from services.training.features import Backbone, FeatureCache, TrainImage, view_features
from services.training.head import ProjectionHead
from services.training.train import TrainConfig, TrainStats, train_head

EVAL_SEED_BASE = 900_000  # augmented query views for evaluation never coincide with training views


@dataclass(frozen=True)
class PipelineSettings:
    train: TrainConfig
    views: int = 7  # augmented views per training image, besides the image itself
    eval_views: int = 1  # augmented query views per held-out image
    holdout: float = 0.2  # fraction of labels held out


def train_view_seeds(views: int, seed: int) -> list[int]:
    """View seeds of a training image: 0 (itself) then ``views`` augmented ones."""
    return [0] + [seed * 1000 + v for v in range(1, views + 1)]


def eval_view_seeds(views: int, seed: int) -> list[int]:
    """View seeds of a held-out image: 0 (itself) then ``views`` augmented query views."""
    return [0] + [EVAL_SEED_BASE + seed * 1000 + v for v in range(1, views + 1)]


def data_digest(images: Sequence[TrainImage]) -> str:
    """sha256 over the sorted (id, label, image sha256) triples: names the training data."""
    digest = hashlib.sha256()
    for image in sorted(images, key=lambda im: im.id):
        digest.update(f"{image.id}\t{image.label}\t{image.sha256}\n".encode())
    return digest.hexdigest()


def split_by_label(
    images: Sequence[TrainImage], holdout: float, seed: int
) -> tuple[list[TrainImage], list[TrainImage]]:
    """(train, held out): a seeded ``holdout`` fraction of the labels (at least one) held out."""
    labels = sorted({im.label for im in images})
    rng = np.random.default_rng(seed)
    order = [labels[i] for i in rng.permutation(len(labels))]
    n_held = min(len(labels) - 1, max(1, math.ceil(holdout * len(labels)))) if holdout > 0 else 0
    held = set(order[:n_held])
    return [im for im in images if im.label not in held], [im for im in images if im.label in held]


def holdout_scores(features: np.ndarray, labels: np.ndarray) -> dict[str, Scores]:
    """Scores on held-out images: features float32 [n, 1 + eval_views, d], unit rows.

    Gallery: the images themselves (view 0). ``original`` queries are the images (each
    excluded from its own ranking); ``augmented`` queries are the augmented views (the source
    image is in the gallery and relevant). ``all`` pools both.
    """
    n, n_views, _ = features.shape
    gallery = features[:, 0]
    q_orig = retrieval_scores(gallery, labels, gallery, labels, np.arange(n))
    if n_views > 1:
        queries = features[:, 1:].reshape(-1, features.shape[2])
        q_labels = np.repeat(labels, n_views - 1)
        q_aug = retrieval_scores(queries, q_labels, gallery, labels)
    else:
        q_aug = Scores(0.0, 0.0, 0.0, 0)
    total = q_orig.queries + q_aug.queries

    def pooled(field: str) -> float:
        if total == 0:
            return 0.0
        return (
            getattr(q_orig, field) * q_orig.queries + getattr(q_aug, field) * q_aug.queries
        ) / total

    return {
        "original": q_orig,
        "augmented": q_aug,
        "all": Scores(pooled("map"), pooled("p_at_1"), pooled("p_at_5"), total),
    }


def project(head: ProjectionHead, features: np.ndarray) -> np.ndarray:
    """float32 [..., in_dims] → float32 [..., dims] through the head."""
    flat = features.reshape(-1, features.shape[-1])
    return head.embed(flat).reshape(*features.shape[:-1], head.dims)


@dataclass(frozen=True)
class PipelineOutcome:
    head: ProjectionHead
    stats: TrainStats
    before: dict[str, Scores]
    after: dict[str, Scores]
    train_images: int
    train_labels: int
    holdout_images: int
    holdout_labels: int
    features_s: float
    train_s: float

    @property
    def improved(self) -> bool:
        """Not worse than the raw backbone on held-out labels (pooled mAP)."""
        return self.after["all"].map >= self.before["all"].map

    def metrics(self) -> dict[str, object]:
        return {
            "primary": "holdout mAP (original + augmented queries)",
            "before": {k: v.as_dict() for k, v in self.before.items()},
            "after": {k: v.as_dict() for k, v in self.after.items()},
        }


def run_pipeline(
    images: Sequence[TrainImage],
    backbone: Backbone,
    settings: PipelineSettings,
    cache: FeatureCache | None,
    progress: Callable[[int], None] | None = None,
) -> PipelineOutcome:
    """Split, compute (cached) view features, train, score held-out labels before and after."""
    seed = settings.train.seed
    train, held = split_by_label(images, settings.holdout, seed)
    t0 = time.perf_counter()
    train_feats = view_features(
        train, train_view_seeds(settings.views, seed), backbone, cache, progress=progress
    )
    held_feats = view_features(
        held, eval_view_seeds(settings.eval_views, seed), backbone, cache, progress=progress
    )
    features_s = time.perf_counter() - t0
    train_labels = np.asarray([im.label for im in train])
    held_labels = np.asarray([im.label for im in held])
    head, stats = train_head(train_feats, train_labels, settings.train)
    return PipelineOutcome(
        head=head,
        stats=stats,
        before=holdout_scores(held_feats, held_labels),
        after=holdout_scores(project(head, held_feats), held_labels),
        train_images=len(train),
        train_labels=len(set(train_labels.tolist())),
        holdout_images=len(held),
        holdout_labels=len(set(held_labels.tolist())),
        features_s=features_s,
        train_s=stats.wall_s,
    )


def config_digest(settings: PipelineSettings, digest: str, parent: str) -> str:
    """sha256 of everything that determines the trained model."""
    payload = json.dumps(
        {
            "data": digest,
            "parent": parent,
            "train": settings.train.as_dict(),
            "views": settings.views,
            "eval_views": settings.eval_views,
            "holdout": settings.holdout,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()
