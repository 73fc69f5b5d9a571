"""Learned discriminative whitening of DELF-style local descriptors, from synthetic matches.

DELF reduces its descriptors with a PCA learned on unlabelled features. A PCA keeps the
directions of largest variance, which are not the ones that tell two places apart under a
change of viewpoint, blur or JPEG. Learned whitening (Mikolajczyk & Matas, "Improving
Descriptors for Fast Tree Matching by Optimal Linear Projection", ICCV 2007; Radenović et al.
use it for global CNN descriptors) uses pairs of descriptors of the same physical point:

1. ``C_S`` = covariance of matching-pair differences (how a point's descriptor varies across
   views). Projecting with ``C_S^-1/2`` shrinks those nuisance directions.
2. A PCA of all descriptors in that space keeps the ``dims`` directions along which different
   points differ most.

The projection ``C_S^-1/2 · V`` [C, dims] replaces the PCA and runs exactly as before
(``services.embedder.delf.PcaWhitening``): L2-normalise, subtract the mean, project,
L2-normalise.

Matching pairs need no labels (``warped_pairs``): a training image at a random pyramid scale,
and the same image under a random homography (rotation within ±45°, since queries are
described at 90° steps; scale 0.8-1.25, the gap between pyramid levels; mild perspective),
brightness and contrast change, blur and JPEG. The point under each of the image's most
attentive grid cells is followed through the homography, and the second image's feature map
is read there (bilinearly). On the unseen UKBench test queries (groups 175-249,
bench/local_features_eval.py) it raised DELF re-ranking from N-S 3.840 to 3.947 on plain
queries and from 3.547 to 3.707 on transformed ones (first model version: plain PCA, with the
verifier settings of that version).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

STRIDE = 16
PAIR_SIDES = (0.5, 0.7071, 1.0)  # pyramid levels the first view is taken at
MAX_ROTATION_DEG = 45.0
SCALE_RANGE = (0.8, 1.25)
PERSPECTIVE = 3e-4  # |h31|, |h32| of the homography, per pixel
BRIGHTNESS = (0.7, 1.3)  # contrast factor
OFFSET = 20.0  # brightness offset, grey levels
BLUR_PROBABILITY = 0.5
BLUR_SIGMA = (0.3, 1.5)
JPEG_QUALITY = (30, 90)
POINTS_PER_IMAGE = 150  # most attentive grid cells followed per image
L2_EPS = 1e-12


@dataclass(frozen=True, eq=False)
class LearnedWhitening:
    """mean [C] float64 and projection [C, D] float64 (see the module docstring)."""

    mean: np.ndarray
    projection: np.ndarray
    pairs: int
    shrinkage: float

    def to_json(self) -> dict[str, object]:
        return {
            "method": "learned_whitening",
            "mean": self.mean.tolist(),
            "projection": self.projection.tolist(),
            "pairs": self.pairs,
            "shrinkage": self.shrinkage,
        }


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), L2_EPS)


def learn_whitening(
    anchors: np.ndarray, positives: np.ndarray, dims: int, shrinkage: float = 0.01
) -> LearnedWhitening:
    """Learned whitening from matching descriptor pairs.

    Args:
        anchors: [n, C] float raw descriptors (not necessarily normalised).
        positives: [n, C] float descriptors of the same points in other views.
        dims: output dimensions D ≤ C.
        shrinkage: ridge added to ``C_S`` as a fraction of its mean eigenvalue.

    Returns:
        LearnedWhitening with mean [C] and projection [C, D].
    """
    a, b = _unit(anchors), _unit(positives)
    if a.shape != b.shape or len(a) <= a.shape[1]:
        raise ValueError(f"need more matching pairs than dimensions, got {a.shape} / {b.shape}")
    both = np.concatenate([a, b])
    mean = both.mean(axis=0)
    differences = a - b
    within = differences.T @ differences / len(differences)
    within += shrinkage * np.trace(within) / len(within) * np.eye(len(within))
    values, vectors = np.linalg.eigh(within)
    inverse_root = vectors @ np.diag(values**-0.5) @ vectors.T
    whitened = (both - mean) @ inverse_root
    spread_values, spread_vectors = np.linalg.eigh(np.cov(whitened, rowvar=False))
    order = np.argsort(spread_values)[::-1][:dims]
    components = spread_vectors[:, order]
    # A deterministic sign per output (eigh's sign is arbitrary across platforms).
    components *= np.sign(components[np.abs(components).argmax(axis=0), np.arange(dims)])
    return LearnedWhitening(mean, inverse_root @ components, len(a), shrinkage)


def _bilinear(feature_map: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """[C, h, w] map read at [n, 2] grid coordinates (x, y) inside it → [n, C]."""
    _, h, w = feature_map.shape
    x0 = np.floor(xy[:, 0]).astype(int)
    y0 = np.floor(xy[:, 1]).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    ax, ay = xy[:, 0] - x0, xy[:, 1] - y0
    top = feature_map[:, y0, x0] * (1 - ax) + feature_map[:, y0, x1] * ax
    bottom = feature_map[:, y1, x0] * (1 - ax) + feature_map[:, y1, x1] * ax
    return (top * (1 - ay) + bottom * ay).T


def random_view(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A photometrically and geometrically changed copy of ``image`` ([H,W,3] uint8 RGB).

    Returns (view [H',W',3] uint8, homography [3,3] float64 from image to view pixels).
    """
    height, width = image.shape[:2]
    angle = rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG)
    scale = float(np.exp(rng.uniform(*np.log(SCALE_RANGE))))
    similarity = cv2.getRotationMatrix2D((width / 2, height / 2), angle, scale)
    homography = np.vstack([similarity, [0, 0, 1]])
    perspective = np.eye(3)
    perspective[2, :2] = rng.uniform(-PERSPECTIVE, PERSPECTIVE, 2)
    homography = perspective @ homography
    corners = np.array([[[0, 0], [width, 0], [width, height], [0, height]]], np.float64)
    warped = cv2.perspectiveTransform(corners, homography)[0]
    low = warped.min(axis=0)
    homography = np.array([[1, 0, -low[0]], [0, 1, -low[1]], [0, 0, 1]]) @ homography
    size = np.ceil(warped.max(axis=0) - low).astype(int)
    view = cv2.warpPerspective(image, homography, (int(size[0]), int(size[1])))
    view = view.astype(np.float32) * rng.uniform(*BRIGHTNESS) + rng.uniform(-OFFSET, OFFSET)
    view = np.clip(view, 0, 255).astype(np.uint8)
    if rng.random() < BLUR_PROBABILITY:
        view = cv2.GaussianBlur(view, (0, 0), rng.uniform(*BLUR_SIGMA))
    quality = int(rng.integers(*JPEG_QUALITY))
    _, encoded = cv2.imencode(".jpg", view, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED), homography


def warped_pairs(
    describe: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    images: Sequence[np.ndarray],
    base_side: int,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw descriptors of the same points in two views of every training image.

    Args:
        describe: [H,W,3] uint8 RGB → (features [C, h, w] float32, attention [h, w] float32),
            the per-scale network on a stride-16 grid (cell (i, j) centred on pixel (16j, 16i)).
        images: training images, [H,W,3] uint8 RGB each.
        base_side: the pyramid's long side at scale 1.0.
        seed: seeds every random choice.

    Returns:
        (anchors [n, C] float32, positives [n, C] float32).
    """
    rng = np.random.default_rng(seed)
    anchors, positives = [], []
    for image in images:
        height, width = image.shape[:2]
        factor = base_side * rng.choice(PAIR_SIDES) / max(height, width)
        size = (max(STRIDE, round(width * factor)), max(STRIDE, round(height * factor)))
        first = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        second, homography = random_view(first, rng)
        first_map, attention = describe(first)
        second_map, _ = describe(second)
        rows, cols = first_map.shape[1:]
        grid_y, grid_x = np.mgrid[0:rows, 0:cols]
        centres = np.stack([grid_x.ravel(), grid_y.ravel()], axis=1).astype(np.float64) * STRIDE
        chosen = np.argsort(-attention.ravel(), kind="stable")[:POINTS_PER_IMAGE]
        target = cv2.perspectiveTransform(centres[chosen][None], homography)[0] / STRIDE
        inside = np.all((target >= 0) & (target <= np.array(second_map.shape[:0:-1]) - 1), axis=1)
        anchors.append(first_map.reshape(len(first_map), -1)[:, chosen[inside]].T)
        positives.append(_bilinear(second_map, target[inside]))
    return np.concatenate(anchors).astype(np.float32), np.concatenate(positives).astype(np.float32)
