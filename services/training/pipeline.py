"""Storage-free training pipeline: split, features, train, evaluate before/after.

Two held-out sets judge a model: *unseen labels* (a fraction of the labels, never trained on:
does the embedding generalise to products added later?) and *known labels* (the retail case:
new photos of products that are in the gallery; a fraction of the photos of every label that
has several, and, for catalogues of one image per label, unseen augmented views of the
training images). Two ways to train: a head on frozen backbone features (``tail_blocks=0``)
or the backbone's last blocks with the head (:mod:`services.training.finetune`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from services.training.evaluate import Scores, retrieval_scores
from services.training.features import Encoder, FeatureCache, TrainImage, view_features
from services.training.head import ProjectionHead
from services.training.settings import PipelineSettings, TrainConfig
from services.training.train import TrainStats, train_head

if TYPE_CHECKING:
    from torch import nn

EVAL_SEED_BASE = 900_000  # augmented query views for evaluation never coincide with training views


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


def split_photos(
    images: Sequence[TrainImage], fraction: float, seed: int
) -> tuple[list[TrainImage], list[TrainImage]]:
    """(train, held out): of each label with >= 2 images, a seeded ``fraction`` of its photos
    (rounded, at least one when the fraction is > 0) held out; at least one stays in train."""
    by_label: dict[str, list[TrainImage]] = {}
    for image in sorted(images, key=lambda im: im.id):
        by_label.setdefault(image.label, []).append(image)
    rng = np.random.default_rng(seed + 1)
    train: list[TrainImage] = []
    held: list[TrainImage] = []
    for label in sorted(by_label):
        group = by_label[label]
        n_held = 0
        if len(group) >= 2 and fraction > 0:
            n_held = min(len(group) - 1, max(1, round(fraction * len(group))))
        order = rng.permutation(len(group))
        held += [group[i] for i in order[:n_held]]
        train += [group[i] for i in order[n_held:]]
    return train, held


def pooled_scores(parts: Sequence[Scores]) -> Scores:
    """Query-weighted mean of several score sets."""
    total = sum(p.queries for p in parts)
    if total == 0:
        return Scores(0.0, 0.0, 0.0, 0)

    def mean(field: str) -> float:
        return sum(getattr(p, field) * p.queries for p in parts) / total

    return Scores(mean("map"), mean("p_at_1"), mean("p_at_5"), total)


def known_label_scores(
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    photos: np.ndarray,
    photo_labels: np.ndarray,
    views: np.ndarray,
) -> dict[str, Scores]:
    """Scores of new photos of gallery labels: gallery float32 [g, d] (training images);
    ``photos`` float32 [p, d] held-out photos; ``views`` float32 [g, v, d] unseen augmented
    views of the gallery images (each has its source image in the gallery)."""
    q_photos = (
        retrieval_scores(photos, photo_labels, gallery, gallery_labels)
        if len(photos)
        else Scores(0.0, 0.0, 0.0, 0)
    )
    flat = views.reshape(-1, views.shape[-1])
    view_labels = np.repeat(gallery_labels, views.shape[1])
    q_views = retrieval_scores(flat, view_labels, gallery, gallery_labels)
    return {"photos": q_photos, "views": q_views, "all": pooled_scores([q_photos, q_views])}


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
    return {"original": q_orig, "augmented": q_aug, "all": pooled_scores([q_orig, q_aug])}


def project(head: ProjectionHead, features: np.ndarray) -> np.ndarray:
    """float32 [..., in_dims] → float32 [..., dims] through the head."""
    flat = features.reshape(-1, features.shape[-1])
    return head.embed(flat).reshape(*features.shape[:-1], head.dims)


@dataclass(frozen=True)
class Fitted:
    """A trained embedding: ``embed`` maps encoder outputs [..., *shape] → float32 [..., dims]."""

    head: ProjectionHead
    backbone: nn.Module | None  # the fine-tuned torch global model, None when head only
    stats: TrainStats
    embed: Callable[[np.ndarray], np.ndarray]


class Trainer(Protocol):
    """Trains on encoder outputs; ``raw`` gives the untrained backbone's vectors of them."""

    def raw(self, encoded: np.ndarray) -> np.ndarray: ...

    def fit(self, encoded: np.ndarray, labels: np.ndarray, config: TrainConfig) -> Fitted: ...


class HeadTrainer:
    """A head on frozen backbone vectors (the encoder is the served ONNX model)."""

    def raw(self, encoded: np.ndarray) -> np.ndarray:
        return encoded

    def fit(self, encoded: np.ndarray, labels: np.ndarray, config: TrainConfig) -> Fitted:
        head, stats = train_head(encoded, labels, config)
        return Fitted(head, None, stats, lambda x: project(head, x))


@dataclass(frozen=True)
class HeldOut:
    """Encoder outputs of everything the scores are computed on."""

    unseen: np.ndarray  # [n_unseen, 1 + eval_views, ...] images of held-out labels
    unseen_labels: np.ndarray
    known: np.ndarray  # [n_known, ...] held-out photos of training labels
    known_labels: np.ndarray
    train: np.ndarray  # [n_train, ...] the training images themselves (the gallery)
    train_views: np.ndarray  # [n_train, eval_views, ...] unseen augmented views of them
    train_labels: np.ndarray


def scores_of(embed: Callable[[np.ndarray], np.ndarray], held: HeldOut) -> dict[str, Scores]:
    """Every score set of one embedding; ``all`` pools unseen and known labels (primary)."""
    out: dict[str, Scores] = {}
    parts = []
    if len(held.unseen):
        unseen = holdout_scores(embed(held.unseen), held.unseen_labels)
        out |= {"unseen_original": unseen["original"], "unseen_augmented": unseen["augmented"]}
        out["unseen"] = unseen["all"]
        parts.append(unseen["all"])
    known = known_label_scores(
        embed(held.train), held.train_labels, embed(held.known), held.known_labels,
        embed(held.train_views),
    )  # fmt: skip
    out |= {"known_photos": known["photos"], "known_views": known["views"], "known": known["all"]}
    parts.append(known["all"])
    out["all"] = pooled_scores(parts)
    return out


@dataclass(frozen=True)
class PipelineOutcome:
    fitted: Fitted
    before: dict[str, Scores]
    after: dict[str, Scores]
    train_images: int
    train_labels: int
    holdout_images: int
    holdout_labels: int
    features_s: float
    train_s: float

    @property
    def head(self) -> ProjectionHead:
        return self.fitted.head

    @property
    def stats(self) -> TrainStats:
        return self.fitted.stats

    @property
    def improved(self) -> bool:
        """Not worse than the raw backbone on the held-out photos and labels (pooled mAP)."""
        return self.after["all"].map >= self.before["all"].map

    def metrics(self) -> dict[str, object]:
        return {
            "primary": "held-out mAP: unseen labels + new photos/views of known labels",
            "before": {k: v.as_dict() for k, v in self.before.items()},
            "after": {k: v.as_dict() for k, v in self.after.items()},
        }


def run_pipeline(
    images: Sequence[TrainImage],
    encoder: Encoder,
    settings: PipelineSettings,
    cache: FeatureCache | None,
    progress: Callable[[int], None] | None = None,
    trainer: Trainer | None = None,
) -> PipelineOutcome:
    """Split, encode (cached) views, train, score held-out photos and labels before and after.

    ``trainer`` defaults to :class:`HeadTrainer` (``encoder`` = the served ONNX backbone).
    """
    trainer = trainer or HeadTrainer()
    seed = settings.train.seed
    rest, unseen = split_by_label(images, settings.holdout, seed)
    train, known = split_photos(rest, settings.holdout_photos, seed)
    eval_seeds = eval_view_seeds(settings.eval_views, seed)
    t0 = time.perf_counter()

    def encode(part: Sequence[TrainImage], seeds: Sequence[int]) -> np.ndarray:
        return view_features(part, seeds, encoder, cache, progress=progress)

    train_encoded = encode(train, train_view_seeds(settings.views, seed))
    train_labels = np.asarray([im.label for im in train])
    held = HeldOut(
        unseen=encode(unseen, eval_seeds),
        unseen_labels=np.asarray([im.label for im in unseen]),
        known=encode(known, eval_seeds[:1])[:, 0],
        known_labels=np.asarray([im.label for im in known]),
        train=train_encoded[:, 0],
        train_views=encode(train, eval_seeds[1:]),
        train_labels=train_labels,
    )
    features_s = time.perf_counter() - t0
    fitted = trainer.fit(train_encoded, train_labels, settings.train)
    return PipelineOutcome(
        fitted=fitted,
        before=scores_of(trainer.raw, held),
        after=scores_of(fitted.embed, held),
        train_images=len(train),
        train_labels=len(set(train_labels.tolist())),
        holdout_images=len(unseen) + len(known),
        holdout_labels=len({im.label for im in unseen}),
        features_s=features_s,
        train_s=fitted.stats.wall_s,
    )


def refit_all(
    images: Sequence[TrainImage],
    encoder: Encoder,
    settings: PipelineSettings,
    cache: FeatureCache | None,
    trainer: Trainer | None = None,
    progress: Callable[[int], None] | None = None,
) -> Fitted:
    """Train again, with the same settings, on every image (after the held-out check passed)."""
    trainer = trainer or HeadTrainer()
    seeds = train_view_seeds(settings.views, settings.train.seed)
    encoded = view_features(images, seeds, encoder, cache, progress=progress)
    return trainer.fit(encoded, np.asarray([im.label for im in images]), settings.train)


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
            "holdout_photos": settings.holdout_photos,
            "refit": settings.refit,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()
