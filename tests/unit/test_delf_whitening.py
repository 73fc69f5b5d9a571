"""Learned whitening of local descriptors and the synthetic views it learns from."""

import cv2
import numpy as np
import pytest

from services.embedder.delf import PcaWhitening
from services.models.delf_whitening import learn_whitening, random_view, warped_pairs

SIGNAL_DIMS, NUISANCE_DIMS = 8, 12


def views_of_points(rng: np.random.Generator, points: int) -> tuple[np.ndarray, np.ndarray]:
    """Two views [points, 20] of each point: the identity lives in 8 low-variance dimensions,
    while 12 high-variance dimensions change from view to view (lighting, blur ...)."""
    identity = rng.standard_normal((points, SIGNAL_DIMS))
    views = []
    for _ in range(2):
        nuisance = 4.0 * rng.standard_normal((points, NUISANCE_DIMS))
        noise = 0.2 * rng.standard_normal((points, SIGNAL_DIMS))
        views.append(np.hstack([identity + noise, nuisance]))
    return views[0], views[1]


def nearest_neighbour_accuracy(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.mean((first @ second.T).argmax(axis=1) == np.arange(len(first))))


def test_learned_whitening_keeps_what_identifies_a_point_and_drops_what_a_view_changes():
    rng = np.random.default_rng(0)
    train_a, train_b = views_of_points(rng, 4000)
    whitening = learn_whitening(train_a, train_b, dims=SIGNAL_DIMS)
    assert whitening.projection.shape == (SIGNAL_DIMS + NUISANCE_DIMS, SIGNAL_DIMS)
    project = PcaWhitening.from_manifest({"pca": whitening.to_json()})

    test_a, test_b = views_of_points(rng, 500)
    out_a, out_b = project(test_a.astype(np.float32)), project(test_b.astype(np.float32))
    assert out_a.shape == (500, SIGNAL_DIMS) and out_a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out_a, axis=1), 1.0, atol=1e-5)

    def unit(rows: np.ndarray) -> np.ndarray:
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    raw = nearest_neighbour_accuracy(unit(test_a), unit(test_b))
    learned = nearest_neighbour_accuracy(out_a, out_b)
    assert raw < 0.1 and learned > 0.85, (raw, learned)


def test_learned_whitening_needs_more_pairs_than_dimensions():
    rows = np.ones((5, 20))
    with pytest.raises(ValueError, match="more matching pairs"):
        learn_whitening(rows, rows, dims=4)


@pytest.mark.parametrize("seed", range(5))
def test_random_view_homography_maps_image_points_into_the_view(seed):
    image = np.zeros((240, 320, 3), np.uint8)
    x, y = 200, 70
    image[y - 3 : y + 4, x - 3 : x + 4] = 255
    view, homography = random_view(image, np.random.default_rng(seed))
    expected = cv2.perspectiveTransform(np.array([[[x, y]]], np.float64), homography)[0, 0]
    grey = cv2.GaussianBlur(view.mean(axis=2).astype(np.float32), (0, 0), 2.0)
    found = np.unravel_index(grey.argmax(), grey.shape)[::-1]
    assert np.hypot(*(np.asarray(found) - expected)) <= 2.5


def test_warped_pairs_follow_the_most_attentive_cells_through_the_warp():
    """A 'network' whose feature at a cell is the pixel under it: a smooth colour ramp makes
    the pair of a point nearly equal, whatever the warp (brightness aside)."""
    ys, xs = np.mgrid[0:240, 0:320]
    ramp = np.stack([xs * 255 // 320, ys * 255 // 240, np.full_like(xs, 128)], axis=2)

    def describe(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cells = image[::16, ::16].astype(np.float32).transpose(2, 0, 1)  # [3, h, w]
        return cells, cells[0]  # attention: prefer the right side of the image

    anchors, positives = warped_pairs(describe, [ramp.astype(np.uint8)] * 4, 320, seed=1)
    assert anchors.shape == positives.shape and anchors.shape[1] == 3 and len(anchors) > 100
    unit_a = anchors / np.linalg.norm(anchors, axis=1, keepdims=True)
    unit_b = positives / np.linalg.norm(positives, axis=1, keepdims=True)
    assert np.median(np.sum(unit_a * unit_b, axis=1)) > 0.97
