"""Texture descriptors: multi-radius uniform-LBP histograms and their storage form."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data
from skimage.feature import local_binary_pattern

from services.common.errors import InvalidArgumentError
from services.common.texture_features import (
    histogram_from_bytes,
    histogram_to_bytes,
    texture_key,
)
from services.embedder.texture import (
    TEXTURE_RADII,
    TEXTURE_TYPE,
    extract_texture,
    lbp_histogram,
    texture_dims,
)


@pytest.fixture(scope="module")
def gray() -> np.ndarray:
    return data.camera()[::2, ::2].copy()  # uint8 [256, 256]


def direct_histogram(gray: np.ndarray) -> np.ndarray:
    """The construction spelled out with scikit-image and np.histogram, radius by radius."""
    blocks = []
    for points, radius in TEXTURE_RADII:
        codes = local_binary_pattern(gray, points, radius, method="uniform")
        counts, _ = np.histogram(codes, bins=points + 2, range=(0, points + 2))
        blocks.append(counts / codes.size / len(TEXTURE_RADII))
    return np.concatenate(blocks)


def test_histogram_matches_scikit_image(gray):
    histogram = lbp_histogram(gray)
    assert histogram.dtype == np.float32
    assert histogram.shape == (texture_dims(),) == (54,)
    np.testing.assert_allclose(histogram, direct_histogram(gray), rtol=1e-6, atol=1e-7)


def test_each_radius_weighs_the_same(gray):
    histogram = lbp_histogram(gray)
    start = 0
    for points, _ in TEXTURE_RADII:
        assert histogram[start : start + points + 2].sum() == pytest.approx(1 / 3, abs=1e-6)
        start += points + 2


def test_uniform_patterns_are_rotation_invariant(gray):
    # P = 8, 16, 24 sample points map onto each other under a 90 degree turn.
    np.testing.assert_allclose(lbp_histogram(np.rot90(gray)), lbp_histogram(gray), atol=2e-3)


def test_different_textures_differ(gray):
    bricks = data.brick()[:256, :256]
    assert np.abs(lbp_histogram(bricks) - lbp_histogram(gray)).sum() > 0.1


def test_extract_texture_reduces_large_images_to_the_texture_side():
    rgb = data.astronaut()  # 512 x 512
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    expected = lbp_histogram(cv2.resize(gray, (320, 320), interpolation=cv2.INTER_AREA))
    np.testing.assert_allclose(extract_texture(rgb), expected, atol=1e-7)


def test_texture_type_names_the_radii():
    assert TEXTURE_TYPE == "lbp-u8r1-u16r2-u24r3"
    assert texture_key(TEXTURE_TYPE, "ab" * 32) == f"features/{TEXTURE_TYPE}/{'ab' * 32}.npy"


def test_storage_round_trip_and_corrupt_bytes(gray):
    histogram = lbp_histogram(gray)
    np.testing.assert_array_equal(histogram_from_bytes(histogram_to_bytes(histogram)), histogram)
    with pytest.raises(InvalidArgumentError):
        histogram_from_bytes(b"not an npy file")
    with pytest.raises(InvalidArgumentError):
        histogram_to_bytes(np.array([0.5, np.nan], dtype=np.float32))
