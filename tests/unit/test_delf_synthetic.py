"""Self-supervised DELF attention data: bundled images and matchability labels."""

from __future__ import annotations

import numpy as np

from services.models.delf_synthetic import MAX_TRAINING_SIDE, cell_labels, training_images

DIMS = 40


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def test_training_images_ship_with_the_dependencies():
    images = training_images()
    assert len(images) >= 20
    for image in images:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert max(image.shape[:2]) <= MAX_TRAINING_SIDE


def test_matchable_cells_are_distinct_and_land_where_the_warp_says():
    rng = np.random.default_rng(0)
    rows, cols = 6, 8
    second = unit(rng.normal(size=(rows, cols, DIMS)))
    # A's cells: 0 = B(2, 3) exactly; 1 = B(4, 1) but the warp says it lands at (6, 5) (wrong
    # place); 2 = a repeated pattern, equally close to B(1, 1) and B(6, 4) (far apart);
    # 3 = B(0, 0) but its target lies outside B.
    repeated = unit(second[1, 1] + second[4, 6])
    first = np.stack([second[2, 3], second[4, 1], repeated, second[0, 0]])
    target = np.array([[3.0, 2.0], [5.0, 6.0], [1.0, 1.0], [0.0, 0.0]])
    inside = np.array([True, True, True, False])
    labels = cell_labels(first, second, target, inside)
    assert labels.tolist() == [1.0, 0.0, 0.0, 0.0]
    # Half a cell off is still the right place.
    assert cell_labels(first[:1], second, target[:1] + 0.5, inside[:1]).tolist() == [1.0]
