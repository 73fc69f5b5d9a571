"""Batch composition and semi-hard triplet mining (FaceNet, Schroff et al. 2015).

For an anchor a and a positive p (same label), a negative n (other label) is *semi-hard* when
``d(a,p) < d(a,n) < d(a,p) + margin``: farther than the positive, yet inside the margin, so
the loss is positive without chasing the hardest negatives (which collapses training).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Triplets:
    """Mined triplets: ``indices`` int64 [t, 3] (anchor, positive, negative) into the batch."""

    indices: np.ndarray
    semi_hard: int  # triplets whose negative is semi-hard
    fallback: int  # no negative beyond d(a,p): the farthest negative was used instead
    easy_pairs: int  # every negative beyond the margin: no loss, pair skipped


def semi_hard_triplets(dist: np.ndarray, labels: np.ndarray, margin: float) -> Triplets:
    """Mine one triplet per (anchor, positive) pair of a batch.

    Args:
        dist: float [n, n] pairwise distances.
        labels: [n] labels (any comparable dtype).
        margin: the triplet margin.

    Per ordered pair (a, p), a != p, same label: the negative is the semi-hard one closest to
    the anchor (smallest d(a,n) with d(a,n) > d(a,p) and d(a,n) < d(a,p) + margin). If every
    negative is beyond the margin the pair is skipped (zero loss). If no negative is farther
    than the positive, the farthest negative is used (as TensorFlow's semi-hard loss does).
    """
    n = dist.shape[0]
    same = labels[:, None] == labels[None, :]
    anchors, positives = np.nonzero(same & ~np.eye(n, dtype=bool))
    negative = ~same[anchors]  # [pairs, n]
    has_negative = negative.any(axis=1)
    anchors, positives, negative = (
        anchors[has_negative],
        positives[has_negative],
        negative[has_negative],
    )
    d_an = dist[anchors]  # [pairs, n]
    d_ap = dist[anchors, positives][:, None]
    beyond = negative & (d_an > d_ap)
    inside = beyond & (d_an < d_ap + margin)
    semi = inside.any(axis=1)
    fallback = ~beyond.any(axis=1)
    semi_neg = np.where(inside, d_an, np.inf).argmin(axis=1)
    far_neg = np.where(negative, d_an, -np.inf).argmax(axis=1)
    keep = semi | fallback
    chosen = np.where(semi, semi_neg, far_neg)
    indices = np.stack([anchors, positives, chosen], axis=1)[keep].astype(np.int64)
    return Triplets(
        indices.reshape(-1, 3), int(semi.sum()), int(fallback.sum()), int((~keep).sum())
    )


def has_positive_pair(labels: np.ndarray) -> bool:
    """True when at least two entries share a label."""
    return len(np.unique(labels)) < len(labels)


@dataclass(frozen=True)
class EpochBatches:
    """Batches of sample indices, each holding at least one positive pair."""

    batches: list[np.ndarray]
    dropped: int  # batches without a positive pair


def epoch_batches(
    labels: np.ndarray,
    image_ids: np.ndarray,
    batch_size: int,
    per_label: int,
    rng: np.random.Generator,
) -> EpochBatches:
    """One epoch of batches over samples (one sample = one view of one image).

    Each label contributes groups of up to ``per_label`` samples, each from a different image
    (one random view each) while the label has unused images; a label with a single image gives
    two views of it (an augmented copy is a positive too). Groups are shuffled and packed into
    batches of at most ``batch_size``; a batch with no positive pair (a leftover of lone
    samples) is dropped and counted.

    Args:
        labels: [n] label of each sample.
        image_ids: [n] image of each sample (views of one image share it).
    """
    by_label: dict[object, dict[object, list[int]]] = defaultdict(lambda: defaultdict(list))
    for index, (label, image) in enumerate(zip(labels.tolist(), image_ids.tolist(), strict=True)):
        by_label[label][image].append(index)
    groups: list[list[int]] = []
    for label in sorted(by_label, key=str):
        views_of = by_label[label]
        images = list(views_of)
        rng.shuffle(images)
        picks = [int(rng.choice(views_of[im])) for im in images]
        if len(images) == 1 and len(views_of[images[0]]) > 1:
            picks = [int(i) for i in rng.choice(views_of[images[0]], size=2, replace=False)]
        groups += [picks[i : i + per_label] for i in range(0, len(picks), per_label)]
    rng.shuffle(groups)
    batches: list[np.ndarray] = []
    current: list[int] = []
    dropped = 0

    def flush() -> None:
        nonlocal dropped, current
        if current:
            batch = np.asarray(current, dtype=np.int64)
            if has_positive_pair(labels[batch]):
                batches.append(batch)
            else:
                dropped += 1
        current = []

    for group in groups:
        if current and len(current) + len(group) > batch_size:
            flush()
        current.extend(group)
    flush()
    return EpochBatches(batches, dropped)
