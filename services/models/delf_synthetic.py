"""Self-supervised training data for the DELF-style attention: synthetic warps of images that
ship with the installed dependencies (no dataset download, so every machine builds the model).

Images: the photographs and scans bundled in the scikit-image wheel (``skimage.data``; no
``pooch`` fetch) and scikit-learn's two sample photos (``load_sample_images``): people, animals,
objects, a rocket, printed text, a page, textures (brick, gravel, grass), microscopy and sky.
They are not retrieval images, and the attention is not taught what a class looks like: it is
taught *which locations survive a change of view*, which is what verification needs.

Matchability labels (``matchability_samples``): a random crop of a training image is resized to
a pyramid level (view A), and ``delf_whitening.random_view`` makes view B (rotation, scale,
mild perspective, brightness, blur, JPEG) with a known homography. Every grid cell of A whose
centre falls inside B is labelled 1 when its (whitened) descriptor's nearest neighbour among
all cells of B lies within ``CORRECT_RADIUS`` cells of where the homography puts it AND passes
a ratio test against the best cell outside ``EXCLUSION_RADIUS`` (Lowe's test, with the true
neighbourhood excluded), else 0. Cells on repeated structure (bricks, gravel, text lines) and
on flat regions fail the ratio test and get 0: exactly the inliers that verification must not
count on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from services.models.delf_whitening import PAIR_SIDES, random_view

STRIDE = 16
# skimage.data loaders of bundled natural / document / texture images (name: loader name).
SKIMAGE_IMAGES = (
    "astronaut",
    "brick",
    "camera",
    "cell",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "logo",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
)
MAX_TRAINING_SIDE = 800  # the 1411 px retina and 1000 px Hubble field are downscaled to this
CROP_FRACTION = (0.5, 1.0)  # side of the random crop taken before a view, per axis
CORRECT_RADIUS = 1.0  # grid cells: a nearest neighbour this close to the truth is correct
EXCLUSION_RADIUS = 2.0  # grid cells: the ratio test's runner-up lies farther than this
RATIO = 0.9  # Lowe ratio on Euclidean distances (the verifier's DELF ratio)
L2_EPS = 1e-12


def training_images() -> list[np.ndarray]:
    """The bundled images as [H,W,3] uint8 RGB (grey replicated, RGBA over white), long side
    at most MAX_TRAINING_SIDE, in a fixed order."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    images = []
    for name in SKIMAGE_IMAGES:
        images.append(getattr(data, name)())
    left, right, _ = data.stereo_motorcycle()
    images.extend([left, right])
    images.extend(load_sample_images().images)
    return [_as_rgb(image) for image in images]


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """Any bundled image → [H,W,3] uint8 RGB with long side ≤ MAX_TRAINING_SIDE."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = (np.clip(image.astype(np.float64), 0.0, 1.0) * 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] == 4:
        alpha = image[:, :, 3:].astype(np.float32) / 255.0
        image = (image[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    height, width = image.shape[:2]
    if max(height, width) > MAX_TRAINING_SIDE:
        factor = MAX_TRAINING_SIDE / max(height, width)
        size = (round(width * factor), round(height * factor))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image)


def random_crop(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A crop of CROP_FRACTION of each side at a random place ([h,w,3] uint8)."""
    height, width = image.shape[:2]
    ch = max(STRIDE * 4, round(height * rng.uniform(*CROP_FRACTION)))
    cw = max(STRIDE * 4, round(width * rng.uniform(*CROP_FRACTION)))
    ch, cw = min(ch, height), min(cw, width)
    y = int(rng.integers(0, height - ch + 1))
    x = int(rng.integers(0, width - cw + 1))
    return np.ascontiguousarray(image[y : y + ch, x : x + cw])


@dataclass(frozen=True, eq=False)
class MatchabilitySamples:
    """Cells of view A: raw features [n, C] float32 and labels [n] float32 in {0, 1}."""

    features: np.ndarray
    labels: np.ndarray


def cell_labels(
    first: np.ndarray, second: np.ndarray, target: np.ndarray, inside: np.ndarray
) -> np.ndarray:
    """Matchability of view A's cells against view B.

    Args:
        first: [n, D] float32 L2-unit descriptors of A's cells (row-major grid order).
        second: [rows, cols, D] float32 L2-unit descriptors of B's grid.
        target: [n, 2] float64 grid coordinates (x, y) in B where each A cell should land.
        inside: [n] bool, the target lies inside B.

    Returns:
        [n] float32: 1 where the nearest B cell is within CORRECT_RADIUS of the target and the
        ratio test against the best cell beyond EXCLUSION_RADIUS (from the nearest) passes.
    """
    rows, cols, dims = second.shape
    flat = second.reshape(-1, dims)
    similarity = first @ flat.T  # [n, m]
    nearest = similarity.argmax(axis=1)
    best = similarity[np.arange(len(first)), nearest]
    grid_y, grid_x = np.divmod(np.arange(rows * cols), cols)
    nearest_xy = np.stack([grid_x[nearest], grid_y[nearest]], axis=1).astype(np.float64)
    correct = np.linalg.norm(nearest_xy - target, axis=1) <= CORRECT_RADIUS
    cell_xy = np.stack([grid_x, grid_y], axis=1).astype(np.float64)
    far = np.linalg.norm(cell_xy[None, :, :] - nearest_xy[:, None, :], axis=2) > EXCLUSION_RADIUS
    runner_up = np.where(far, similarity, -np.inf).max(axis=1)
    d1_sq = np.maximum(2.0 - 2.0 * best, 0.0)
    d2_sq = np.maximum(2.0 - 2.0 * runner_up, 0.0)
    distinct = d1_sq < (RATIO * RATIO) * d2_sq
    return (inside & correct & distinct).astype(np.float32)


def matchability_samples(
    describe: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    whiten: Callable[[np.ndarray], np.ndarray],
    images: Sequence[np.ndarray],
    base_side: int,
    views_per_image: int,
    seed: int = 0,
) -> MatchabilitySamples:
    """Labelled cells from ``views_per_image`` (A, B) view pairs of every image.

    Args:
        describe: [H,W,3] uint8 RGB → (features [C, h, w] float32, attention [h, w] float32).
        whiten: raw features [n, C] float32 → [n, D] float32 L2-unit descriptors.
        images: training images, [H,W,3] uint8 RGB each.
        base_side: the pyramid's long side at scale 1.0.
        views_per_image: view pairs per image.
        seed: seeds every random choice.
    """
    rng = np.random.default_rng(seed)
    features, labels = [], []
    for image in images:
        for _ in range(views_per_image):
            crop = random_crop(image, rng)
            height, width = crop.shape[:2]
            factor = base_side * rng.choice(PAIR_SIDES) / max(height, width)
            size = (max(STRIDE, round(width * factor)), max(STRIDE, round(height * factor)))
            first = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
            second, homography = random_view(first, rng)
            first_map, _ = describe(first)
            second_map, _ = describe(second)
            channels, rows, cols = first_map.shape
            raw = first_map.reshape(channels, -1).T
            grid_y, grid_x = np.mgrid[0:rows, 0:cols]
            centres = np.stack([grid_x.ravel(), grid_y.ravel()], axis=1).astype(np.float64)
            target = cv2.perspectiveTransform(centres[None] * STRIDE, homography)[0] / STRIDE
            limits = np.array(second_map.shape[:0:-1]) - 1  # (cols - 1, rows - 1) of B
            inside = np.all((target >= 0) & (target <= limits), axis=1)
            b_rows, b_cols = second_map.shape[1:]
            second_desc = whiten(second_map.reshape(channels, -1).T).reshape(b_rows, b_cols, -1)
            labels.append(cell_labels(whiten(raw), second_desc, target, inside)[inside])
            features.append(raw[inside])
    return MatchabilitySamples(
        np.concatenate(features).astype(np.float32), np.concatenate(labels).astype(np.float32)
    )
