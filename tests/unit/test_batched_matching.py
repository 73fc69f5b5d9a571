"""Batched matching (geometry.match_batch) and the re-ranker built on it give the outcome
of verifying each candidate on its own (geometry.verify_pair / rotation.verify_grouped)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from services.common.local_features import LocalFeatures, feature_key
from services.common.objectstore import InMemoryObjectStore
from services.embedder.rootsift import extract_rootsift
from services.verifier.core import Candidate, FeatureCache, GeometricReranker
from services.verifier.fusion import FusionSettings
from services.verifier.geometry import (
    GeometrySettings,
    chunk_candidates,
    match_batch,
    match_descriptors,
    verify_pair,
)
from services.verifier.rotation import match_grouped, verify_grouped

# Inlier counts may differ by float rounding of one large product vs many small ones
# (a near-tie in the ratio test or the mutual check); in practice they are equal.
INLIER_TOLERANCE = 2


def unit_rows(rng: np.random.Generator, n: int, d: int = 32) -> np.ndarray:
    rows = rng.standard_normal((n, d)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def warp(image: np.ndarray, angle: float, scale: float) -> np.ndarray:
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, scale)
    return cv2.warpAffine(image, matrix, (width, height))


@pytest.fixture(scope="module")
def photos() -> list[LocalFeatures]:
    """RootSIFT of sample photos: the astronaut and four views of it, and other photos."""
    astronaut = data.astronaut()
    views = [warp(astronaut, angle, scale) for angle, scale in [(10, 0.9), (-25, 0.75)]]
    others = [data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry()]
    return [extract_rootsift(image) for image in [astronaut, *views, *others]]


def test_batched_matches_equal_matching_each_candidate_alone(photos):
    query, candidates = photos[0], photos[1:]
    batched = match_batch(query.descriptors, [c.descriptors for c in candidates], 0.85)
    for candidate, per_group in zip(candidates, batched, strict=True):
        alone = match_descriptors(query.descriptors, candidate.descriptors, 0.85)
        assert len(per_group) == 1
        np.testing.assert_array_equal(per_group[0].reshape(-1, 2), alone.reshape(-1, 2))
    assert len(batched[0][0]) > 100  # the views of the query do match


def test_batched_matching_of_non_unit_empty_and_single_row_candidates():
    rng = np.random.default_rng(3)
    query = rng.standard_normal((60, 16)).astype(np.float32)  # not unit: explicit distances
    base = rng.standard_normal((40, 16)).astype(np.float32)
    candidates = [
        np.concatenate([query[:20] + 0.01 * base[:20], base]),
        np.zeros((0, 16), np.float32),
        query[5:6] * 1.001,
        unit_rows(rng, 70, 16),
    ]
    batched = match_batch(query, candidates, 0.8)
    for candidate, per_group in zip(candidates, batched, strict=True):
        alone = match_descriptors(query, candidate, 0.8)
        np.testing.assert_array_equal(per_group[0].reshape(-1, 2), alone.reshape(-1, 2))
    assert len(batched[0][0]) >= 15 and len(batched[1][0]) == 0


def test_batched_grouped_matches_equal_match_grouped():
    rng = np.random.default_rng(4)
    candidates = [unit_rows(rng, n) for n in (90, 130, 1)]
    groups = []
    for size in (40, 0, 60):
        rows = unit_rows(rng, size)
        planted = rng.choice(90, size // 2, replace=False)
        rows[: size // 2] = candidates[0][planted] + 0.05 * unit_rows(rng, size // 2)
        groups.append(rows / np.linalg.norm(rows, axis=1, keepdims=True).clip(1e-12))
    query, sizes = np.concatenate(groups), tuple(len(g) for g in groups)
    batched = match_batch(query, candidates, 0.9, sizes)
    for candidate, per_group in zip(candidates, batched, strict=True):
        alone = match_grouped(query, candidate, 0.9, sizes)
        assert len(per_group) == len(sizes)
        for got, expected in zip(per_group, alone, strict=True):
            np.testing.assert_array_equal(got.reshape(-1, 2), expected.reshape(-1, 2))
    assert sum(len(p) for p in batched[0]) > 30


def test_chunks_bound_the_rows_of_one_product():
    assert chunk_candidates([1000, 1000, 1000, 1000, 1000], 4096) == [[0, 1, 2, 3], [4]]
    assert chunk_candidates([5000, 10, 10], 4096) == [[0], [1, 2]]
    assert chunk_candidates([], 4096) == []


def test_reranker_scores_equal_verifying_each_pair_alone(photos):
    """Old (one verify_pair per candidate) vs new (batched) on sample photos."""
    store = InMemoryObjectStore()
    for i, features in enumerate(photos):
        store.put(feature_key("rootsift", f"sha{i}"), features.to_npz())
    settings = GeometrySettings()
    query = photos[0]
    candidates = [Candidate(f"id{i}", f"sha{i}", 0.5 - 0.01 * i) for i in range(len(photos))]
    with GeometricReranker(
        store, settings, FusionSettings(), FeatureCache(), max_workers=2,
        single_threaded_blas=False,
    ) as reranker:  # fmt: skip
        new = {r.id: r for r in reranker.rerank(query, candidates)}
    for i, features in enumerate(photos):
        old = verify_pair(query, features, settings)
        assert abs(new[f"id{i}"].inliers - old.inliers) <= INLIER_TOLERANCE
        assert abs(new[f"id{i}"].matches - old.matches) <= INLIER_TOLERANCE
    assert new["id1"].inliers >= 50 and new["id4"].inliers < settings.min_inliers


def test_grouped_query_rerank_equals_verify_grouped():
    rng = np.random.default_rng(5)
    xy = rng.uniform(20, 600, (150, 2)).astype(np.float32)
    candidate = LocalFeatures("delf", xy, np.ones(150), unit_rows(rng, 150), 640, 640)
    turned = candidate.descriptors[:100] + 0.02 * unit_rows(rng, 100)
    turned /= np.linalg.norm(turned, axis=1, keepdims=True)
    descriptors = np.concatenate([unit_rows(rng, 80), turned])
    keypoints = np.concatenate([rng.uniform(0, 640, (80, 2)), xy[:100] * 0.9 + 5.0])
    query = LocalFeatures(
        "delf", keypoints.astype(np.float32), np.ones(180), descriptors, 640, 640,
        group_sizes=(80, 100), rotations=(0.0, 90.0),
    )  # fmt: skip
    store = InMemoryObjectStore()
    store.put(feature_key("delf", "c"), candidate.to_npz())
    settings = GeometrySettings(ratio=0.9, residual_px=20.0)
    fusion = FusionSettings()
    with GeometricReranker(store, settings, fusion, FeatureCache(), max_workers=2) as reranker:
        (result,) = reranker.rerank(query, [Candidate("c", "c", 0.4)])
    from services.verifier.rotation import settings_for

    geometry, _ = settings_for("delf", settings, fusion)
    expected, rotation = verify_grouped(query, candidate, geometry)
    assert abs(result.inliers - expected.inliers) <= INLIER_TOLERANCE
    assert result.inliers >= 50 and rotation == 90.0
