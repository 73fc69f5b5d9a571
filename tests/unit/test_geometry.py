"""Geometric verification: one-to-one matching, homography recovery, rejection of bad fits."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
from skimage import data

from services.common.local_features import LocalFeatures
from services.embedder.rootsift import extract_rootsift
from services.verifier.geometry import GeometrySettings, match_descriptors, verify_pair

CORNER_TOLERANCE_PX = 3.0


def known_homography(width: int, height: int) -> np.ndarray:
    """Rotation 30 deg and scale 0.8 about the centre, then a mild perspective."""
    angle = np.radians(30.0)
    cos, sin = 0.8 * np.cos(angle), 0.8 * np.sin(angle)
    to_centre = np.array([[1, 0, -width / 2], [0, 1, -height / 2], [0, 0, 1.0]])
    rotate_scale = np.array([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1.0]])
    perspective = np.array([[1, 0, 0], [0, 1, 0], [4e-4, -2e-4, 1.0]])
    back = np.array([[1, 0, width / 2], [0, 1, height / 2], [0, 0, 1.0]])
    return back @ perspective @ rotate_scale @ to_centre


def project(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    homogeneous = np.hstack([points, np.ones((len(points), 1))]) @ transform.T
    return homogeneous[:, :2] / homogeneous[:, 2:]


def corners(width: int, height: int) -> np.ndarray:
    return np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], float)


@pytest.fixture(scope="module")
def astronaut() -> LocalFeatures:
    return extract_rootsift(data.astronaut())


@pytest.fixture(scope="module")
def warped() -> tuple[LocalFeatures, np.ndarray]:
    image = data.astronaut()
    height, width = image.shape[:2]
    truth = known_homography(width, height)
    return extract_rootsift(cv2.warpPerspective(image, truth, (width, height))), truth


def test_recovers_known_homography(astronaut: LocalFeatures, warped):
    candidate, truth = warped
    settings = GeometrySettings()
    evidence = verify_pair(astronaut, candidate, settings)
    assert evidence.inliers >= 100
    assert evidence.inliers <= evidence.matches
    assert evidence.inlier_ratio > 0.5
    assert evidence.transform is not None and evidence.transform.shape == (3, 3)
    box = corners(512, 512)
    error = np.abs(project(evidence.transform, box) - project(truth, box)).max()
    assert error < CORNER_TOLERANCE_PX
    pairs = evidence.inlier_pairs
    assert pairs.shape == (evidence.inliers, 2) and pairs.dtype == np.int32
    residual = project(truth, astronaut.keypoints[pairs[:, 0]]) - candidate.keypoints[pairs[:, 1]]
    assert np.median(np.linalg.norm(residual, axis=1)) < 2.0


def test_affine_model_on_a_similarity_transform(astronaut: LocalFeatures):
    image = data.astronaut()
    truth = cv2.getRotationMatrix2D((256.0, 256.0), 20.0, 0.7)
    candidate = extract_rootsift(cv2.warpAffine(image, truth, (512, 512)))
    evidence = verify_pair(astronaut, candidate, GeometrySettings(model="affine"))
    assert evidence.inliers >= 100
    assert evidence.transform is not None
    np.testing.assert_allclose(evidence.transform[2], [0.0, 0.0, 1.0])
    np.testing.assert_allclose(evidence.transform[:2], truth, atol=0.5)


@pytest.mark.parametrize("photo", ["coffee", "chelsea", "rocket"])
def test_unrelated_photo_stays_below_min_inliers(astronaut: LocalFeatures, photo: str):
    settings = GeometrySettings()
    other = extract_rootsift(getattr(data, photo)())
    assert verify_pair(astronaut, other, settings).inliers < settings.min_inliers


def test_match_descriptors_is_one_to_one():
    rng = np.random.default_rng(1)
    candidate = rng.normal(size=(6, 16)).astype(np.float32)
    candidate /= np.linalg.norm(candidate, axis=1, keepdims=True)
    # Query rows 0-2 are all nearest to candidate 0 (the ratio test alone keeps all three);
    # row 2 is the closest, so it is the one mutual match. Row 3 is a copy of candidate 4.
    query = np.stack(
        [
            candidate[0] + 0.20 * rng.normal(size=16),
            candidate[0] + 0.15 * rng.normal(size=16),
            candidate[0] + 0.01 * rng.normal(size=16),
            candidate[4],
        ]
    ).astype(np.float32)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    pairs = match_descriptors(query, candidate, ratio=0.9)
    assert pairs.dtype == np.int32
    assert pairs.tolist() == [[2, 0], [3, 4]]
    assert len(np.unique(pairs[:, 1])) == len(pairs)


def test_match_descriptors_unique_on_real_features(astronaut: LocalFeatures, warped):
    pairs = match_descriptors(astronaut.descriptors, warped[0].descriptors, ratio=0.95)
    assert len(pairs) > 100
    assert len(np.unique(pairs[:, 0])) == len(pairs)
    assert len(np.unique(pairs[:, 1])) == len(pairs)


def test_ratio_test_rejects_ambiguous_matches():
    candidate = np.eye(4, dtype=np.float32)
    between = (candidate[0] + 0.9 * candidate[1])[None, :]  # about as near to rows 0 and 1
    between /= np.linalg.norm(between)
    assert len(match_descriptors(between, candidate, ratio=0.8)) == 0
    assert match_descriptors(candidate[2:3], candidate, ratio=0.8).tolist() == [[0, 2]]


def test_non_unit_descriptors_match_like_unit_ones(astronaut: LocalFeatures, warped):
    unit = match_descriptors(astronaut.descriptors, warped[0].descriptors, 0.85)
    scaled = match_descriptors(5 * astronaut.descriptors, 5 * warped[0].descriptors, 0.85)
    np.testing.assert_array_equal(unit, scaled)


def test_empty_inputs():
    empty = np.zeros((0, 128), np.float32)
    some = np.eye(3, 128, dtype=np.float32)
    assert match_descriptors(empty, some, 0.8).shape == (0, 2)
    assert match_descriptors(some, empty, 0.8).shape == (0, 2)
    assert len(match_descriptors(some, some[:1], 0.8)) == 1


def test_too_few_matches_give_zero_evidence(astronaut: LocalFeatures):
    _, distinct = np.unique(astronaut.keypoints, axis=0, return_index=True)
    rows = np.sort(distinct)[:3]  # three keypoints at distinct locations
    few = replace(
        astronaut,
        keypoints=astronaut.keypoints[rows],
        scores=astronaut.scores[rows],
        descriptors=astronaut.descriptors[rows],
    )
    evidence = verify_pair(astronaut, few, GeometrySettings())
    assert evidence.matches == 3
    assert evidence.inliers == 0 and evidence.transform is None
    assert evidence.inlier_pairs.shape == (0, 2)


def test_mirrored_geometry_is_rejected(astronaut: LocalFeatures):
    # Same descriptors, keypoints mirrored left-right: perfect matches, impossible geometry.
    mirrored_xy = astronaut.keypoints.copy()
    mirrored_xy[:, 0] = astronaut.image_width - 1 - mirrored_xy[:, 0]
    mirrored = replace(astronaut, keypoints=mirrored_xy)
    evidence = verify_pair(astronaut, mirrored, GeometrySettings())
    assert evidence.matches > 100
    assert evidence.inliers == 0 and evidence.transform is None


def test_collapsed_geometry_is_rejected(astronaut: LocalFeatures):
    # All candidate keypoints squeezed into a 1 % patch: a scale change no photo pair has.
    collapsed = replace(astronaut, keypoints=astronaut.keypoints * 0.01)
    assert verify_pair(astronaut, collapsed, GeometrySettings()).inliers == 0


def test_identity_on_same_features(astronaut: LocalFeatures):
    evidence = verify_pair(astronaut, astronaut, GeometrySettings())
    assert evidence.inliers > 0.9 * evidence.matches
    np.testing.assert_allclose(evidence.transform, np.eye(3), atol=1e-2)
