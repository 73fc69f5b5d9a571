"""GeometricReranker and FeatureCache with an in-memory object store."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import cv2
import numpy as np
import pytest
from skimage import data

from services.common.errors import ConfigError
from services.common.local_features import LocalFeatures, feature_key
from services.common.objectstore import InMemoryObjectStore
from services.embedder.rootsift import extract_rootsift
from services.verifier.core import Candidate, FeatureCache, GeometricReranker
from services.verifier.fusion import FusionSettings
from services.verifier.geometry import GeometrySettings


def similarity_warp(image: np.ndarray, angle: float, scale: float) -> np.ndarray:
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, scale)
    return cv2.warpAffine(image, matrix, (width, height))


def subset(features: LocalFeatures, rows: np.ndarray) -> LocalFeatures:
    return replace(
        features,
        keypoints=features.keypoints[rows],
        scores=features.scores[rows],
        descriptors=features.descriptors[rows],
    )


@pytest.fixture(scope="module")
def query() -> LocalFeatures:
    return extract_rootsift(data.astronaut())


@pytest.fixture(scope="module")
def store(query: LocalFeatures) -> InMemoryObjectStore:
    store = InMemoryObjectStore()
    true_match = extract_rootsift(similarity_warp(data.astronaut(), 25.0, 0.75))
    look_alike = extract_rootsift(data.coffee())
    # Weak: five keypoints of the query, shifted by 10 px; a consistent but tiny fit.
    _, distinct = np.unique(query.keypoints, axis=0, return_index=True)
    weak = subset(query, np.sort(distinct)[:5])
    weak = replace(weak, keypoints=weak.keypoints + 10.0)
    for sha, features in [("true", true_match), ("lookalike", look_alike), ("weak", weak)]:
        store.put(feature_key("rootsift", sha), features.to_npz())
    store.put(feature_key("rootsift", "corrupt"), b"definitely not an npz archive")
    return store


@pytest.fixture
def reranker(store: InMemoryObjectStore) -> Iterator[GeometricReranker]:
    with GeometricReranker(
        store,
        GeometrySettings(),
        FusionSettings(),
        FeatureCache(max_bytes=64 * 1024 * 1024),
        max_workers=4,
        single_threaded_blas=False,
    ) as reranker:
        yield reranker


def test_confident_geometry_overturns_a_global_look_alike(reranker, query):
    candidates = [Candidate("lookalike", "lookalike", 0.80), Candidate("true", "true", 0.55)]
    ranked = reranker.rerank(query, candidates)
    assert [r.id for r in ranked] == ["true", "lookalike"]
    best = ranked[0]
    assert best.inliers >= 50 and best.matches >= best.inliers
    assert best.score > 0.80 and best.global_score == pytest.approx(0.55)
    assert best.reason.startswith("global 0.55 + ") and "inliers (homography" in best.reason
    assert ranked[1].score == pytest.approx(0.80), "no evidence: the global score is kept"


def test_weak_evidence_does_not_overturn_the_global_order(reranker, query):
    candidates = [Candidate("lookalike", "lookalike", 0.80), Candidate("weak", "weak", 0.78)]
    ranked = reranker.rerank(query, candidates)
    assert [r.id for r in ranked] == ["lookalike", "weak"]
    weak = ranked[1]
    assert 0 < weak.matches < GeometrySettings().min_inliers
    assert weak.score == pytest.approx(0.78)
    need = GeometrySettings().min_inliers
    assert weak.inliers == 0 and f"too few to fit (need {need})" in weak.reason  # not fitted


def test_missing_and_corrupt_features_keep_the_global_score(reranker, query):
    candidates = [
        Candidate("missing", "no-such-sha", 0.90),
        Candidate("corrupt", "corrupt", 0.70),
        Candidate("true", "true", 0.60),
    ]
    ranked = {r.id: r for r in reranker.rerank(query, candidates)}
    assert ranked["missing"].score == pytest.approx(0.90)
    assert ranked["missing"].reason == "no local features"
    assert ranked["missing"].inliers == ranked["missing"].matches == 0
    assert ranked["corrupt"].score == pytest.approx(0.70)
    assert ranked["corrupt"].reason == "unreadable local features"
    assert ranked["true"].score > 0.90


def test_features_of_another_model_version_are_never_matched(reranker, query):
    """A learned query is matched only against features stored under its own model version:
    the "true" candidate's features exist, but unversioned (another extractor), so it is not
    verified and the reason says to re-ingest."""
    versioned = replace(query, model_version="learned-v2")
    (result,) = reranker.rerank(versioned, [Candidate("true", "true", 0.55)])
    assert result.inliers == 0 and result.score == pytest.approx(0.55)
    assert "of model learned-v2" in result.reason and "re-ingest" in result.reason


def test_ties_keep_the_global_order(reranker, query):
    candidates = [Candidate(f"c{i}", f"missing{i}", 0.5) for i in range(6)]
    assert [r.id for r in reranker.rerank(query, candidates)] == [c.id for c in candidates]
    assert reranker.rerank(query, []) == []


def test_features_are_read_through_the_cache(query, store):
    cache = FeatureCache(max_bytes=64 * 1024 * 1024)
    key = feature_key("rootsift", "true")
    with GeometricReranker(
        store, GeometrySettings(), FusionSettings(), cache, single_threaded_blas=False
    ) as reranker:
        reranker.rerank(query, [Candidate("true", "true", 0.5)])
        assert key in cache
        hits = cache.hits
        reranker.rerank(query, [Candidate("true", "true", 0.5)])
        assert cache.hits == hits + 1


def test_min_inliers_must_agree():
    with pytest.raises(ConfigError):
        GeometricReranker(
            InMemoryObjectStore(),
            GeometrySettings(min_inliers=8),
            FusionSettings(min_inliers=12),
            FeatureCache(),
        )


def tiny_features(count: int) -> LocalFeatures:
    return LocalFeatures(
        feature_type="rootsift",
        keypoints=np.zeros((count, 2), np.float32),
        scores=np.zeros(count, np.float32),
        descriptors=np.zeros((count, 128), np.float32),
        image_width=10,
        image_height=10,
    )


def test_lru_evicts_least_recently_used_by_bytes():
    entry = tiny_features(100)
    size = entry.nbytes + 512  # arrays plus the per-entry overhead
    cache = FeatureCache(max_bytes=2 * size + 10)
    cache.put("a", entry)
    cache.put("b", entry)
    assert cache.get("a") is entry  # "a" is now the most recent
    cache.put("c", entry)
    assert "b" not in cache and "a" in cache and "c" in cache
    assert cache.bytes_used == 2 * size


def test_lru_counts_bytes_not_entries():
    cache = FeatureCache(max_bytes=tiny_features(1000).nbytes + 512)
    for name in "abcd":
        cache.put(name, tiny_features(10))
    assert len(cache) == 4
    cache.put("big", tiny_features(1000))
    assert len(cache) == 1 and "big" in cache
    cache.put("too-big", tiny_features(2000))
    assert "too-big" not in cache and "big" in cache
    cache.put("big", tiny_features(10))  # replacing an entry updates the byte count
    assert cache.bytes_used == tiny_features(10).nbytes + 512
