"""Fusion of the global score with geometric evidence: properties over random inputs."""

from __future__ import annotations

import numpy as np
import pytest

from services.verifier.fusion import FusionSettings, fused_score, geometric_bonus
from services.verifier.geometry import GeometricEvidence, GeometrySettings
from services.verifier.rotation import DELF_FUSION, settings_for

TRIALS = 300
CANDIDATES = 50  # the gateway's default re-rank depth
SETTINGS = {
    "rootsift": FusionSettings(),
    "delf": DELF_FUSION,
    "random_a": FusionSettings(weight=2.0, inlier_scale=3.0, min_inliers=5),
    "random_b": FusionSettings(weight=0.05, inlier_scale=100.0, min_inliers=30),
}


def fused_order(global_scores: np.ndarray, inliers: np.ndarray, settings: FusionSettings):
    """The verifier's order (GeometricReranker.rerank): fused score descending, ties keep the
    input order; the input is the global order (best first)."""
    scores = [
        fused_score(float(g), GeometricEvidence(inliers=int(n)), settings)
        for g, n in zip(global_scores, inliers, strict=True)
    ]
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def random_candidates(rng: np.random.Generator, settings: FusionSettings):
    """Global scores (cosines, sorted best first, some exact ties) and inlier counts that
    cluster around the threshold, where mistakes would happen."""
    global_scores = np.sort(np.round(rng.uniform(-0.2, 1.0, CANDIDATES), 2))[::-1]
    near = rng.integers(0, 2 * settings.min_inliers + 2, CANDIDATES)
    many = rng.integers(0, 400, CANDIDATES)
    inliers = np.where(rng.random(CANDIDATES) < 0.7, near, many)
    return global_scores, inliers


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_too_few_inliers_never_rank_above_a_higher_global_score(name):
    settings = SETTINGS[name]
    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(TRIALS):
        global_scores, inliers = random_candidates(rng, settings)
        order = fused_order(global_scores, inliers, settings)
        position = {candidate: rank for rank, candidate in enumerate(order)}
        for weak in np.flatnonzero(inliers < settings.min_inliers):
            better = np.flatnonzero(global_scores > global_scores[weak])
            checked += len(better)
            assert all(position[b] < position[weak] for b in better), (
                name,
                global_scores[weak],
                inliers[weak],
            )
    assert checked > 10_000  # the property was exercised, not vacuously true


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_at_the_threshold_the_bonus_is_zero_and_it_never_decreases(name):
    settings = SETTINGS[name]
    bonuses = [geometric_bonus(n, settings) for n in range(0, 500)]
    assert all(b == 0.0 for b in bonuses[: settings.min_inliers + 1])
    assert all(later >= earlier for earlier, later in zip(bonuses, bonuses[1:], strict=False))
    assert max(bonuses) <= settings.weight


@pytest.mark.parametrize("feature_type", ["rootsift", "delf"])
def test_a_confident_match_overturns_the_global_order(feature_type):
    """Tens of inliers above the threshold beat a look-alike whose global score is higher by
    the typical gap between a look-alike and a true match (0.1 in cosine)."""
    _, fusion = settings_for(feature_type, GeometrySettings(), FusionSettings())
    confident = fusion.min_inliers + 40
    global_scores = np.array([0.80, 0.70])  # look-alike first, true match second
    order = fused_order(global_scores, np.array([0, confident]), fusion)
    assert order == [1, 0]
    # ...and a handful of inliers at the threshold does not.
    order = fused_order(global_scores, np.array([0, fusion.min_inliers]), fusion)
    assert order == [0, 1]


def test_a_bonus_below_the_threshold_would_be_caught():
    """The property test can fail: a fusion that rewards sub-threshold inliers breaks it."""

    def leaky(n: int, settings: FusionSettings) -> float:
        return settings.weight * (1.0 - np.exp(-n / settings.inlier_scale))

    settings = FusionSettings()
    global_scores = np.array([0.80, 0.79])
    inliers = np.array([0, settings.min_inliers - 1])
    scores = [g + leaky(int(n), settings) for g, n in zip(global_scores, inliers, strict=True)]
    assert scores[1] > scores[0]  # the leaky fusion would rank the weak candidate first
    order = fused_order(global_scores, inliers, settings)
    assert order == [0, 1]  # the real one does not
