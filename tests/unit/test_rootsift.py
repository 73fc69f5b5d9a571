"""RootSIFT extraction: shapes, unit rows, original-pixel keypoints, empty images."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from services.common.errors import InvalidArgumentError
from services.embedder.rootsift import extract_rootsift, root_sift


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()  # [512, 512, 3] uint8 RGB


def test_shapes_and_dtypes(astronaut: np.ndarray):
    features = extract_rootsift(astronaut, max_features=300)
    assert features.feature_type == "rootsift"
    assert 100 < features.count <= 300
    assert features.keypoints.shape == (features.count, 2)
    assert features.scores.shape == (features.count,)
    assert features.descriptors.shape == (features.count, 128)
    for array in (features.keypoints, features.scores, features.descriptors):
        assert array.dtype == np.float32
    assert (features.image_width, features.image_height) == (512, 512)
    assert np.all(np.diff(features.scores) <= 0), "strongest keypoints first"


def test_rows_are_l2_unit_and_non_negative(astronaut: np.ndarray):
    descriptors = extract_rootsift(astronaut).descriptors
    np.testing.assert_allclose(np.linalg.norm(descriptors, axis=1), 1.0, atol=1e-5)
    assert descriptors.min() >= 0.0


def test_root_sift_is_sqrt_of_l1_normalised():
    sift = np.array([[1.0, 3.0, 0.0, 4.0]], dtype=np.float32)
    np.testing.assert_allclose(root_sift(sift), np.sqrt(sift / 8.0), rtol=1e-6)


def test_deterministic(astronaut: np.ndarray):
    first = extract_rootsift(astronaut)
    second = extract_rootsift(astronaut)
    np.testing.assert_array_equal(first.keypoints, second.keypoints)
    np.testing.assert_array_equal(first.descriptors, second.descriptors)


def test_keypoints_are_in_original_pixels_when_downscaled(astronaut: np.ndarray):
    # A 2x nearest-neighbour upscale, area-downscaled back by 2 inside the extractor, is the
    # original image again: same descriptors, keypoints scaled by 2 about pixel centres.
    upscaled = cv2.resize(astronaut, (1024, 1024), interpolation=cv2.INTER_NEAREST)
    small = extract_rootsift(astronaut, max_side=512)
    large = extract_rootsift(upscaled, max_side=512)
    assert (large.image_width, large.image_height) == (1024, 1024)
    assert large.count == small.count > 0
    np.testing.assert_allclose(large.descriptors, small.descriptors, atol=1e-6)
    np.testing.assert_allclose(large.keypoints, (small.keypoints + 0.5) * 2.0 - 0.5, atol=1e-3)
    assert large.keypoints.max() > 600, "coordinates span the original 1024 px image"


def test_never_upscales(astronaut: np.ndarray):
    features = extract_rootsift(astronaut, max_side=4096)
    reference = extract_rootsift(astronaut, max_side=512)
    np.testing.assert_array_equal(features.keypoints, reference.keypoints)


def test_non_square_downscale_keeps_coordinates_in_bounds():
    image = data.coffee()  # [400, 600, 3]
    features = extract_rootsift(image, max_side=300)
    assert features.count > 0
    assert features.keypoints[:, 0].max() < 600 and features.keypoints[:, 1].max() < 400
    assert features.keypoints[:, 0].max() > 300, "mapped back beyond the working size"


def test_flat_image_has_no_keypoints():
    features = extract_rootsift(np.full((240, 320, 3), 128, dtype=np.uint8))
    assert features.count == 0
    assert features.keypoints.shape == (0, 2)
    assert features.scores.shape == (0,)
    assert features.descriptors.shape == (0, 128)
    assert (features.image_width, features.image_height) == (320, 240)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((10, 10), np.uint8),
        np.zeros((10, 10, 3), np.float32),
        np.zeros((0, 5, 3), np.uint8),
    ],
    ids=["gray", "float", "empty"],
)
def test_rejects_bad_input(image: np.ndarray):
    with pytest.raises(InvalidArgumentError):
        extract_rootsift(image)
