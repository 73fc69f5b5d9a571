"""Fusing a global similarity with geometric evidence into one re-ranking score.

Formula (``fused_score``)::

    excess = inliers - min_inliers
    bonus  = 0                                              if excess < 0
           = weight * (1 - exp(-excess / scale))            otherwise (0 at the threshold)
    score  = global_score + bonus

Why this shape and these constants:
- Below ``min_inliers`` (the geometry setting) coincidental fits are common, so they add
  nothing: weak evidence never overturns the global order.
- The bonus starts at 0 at the threshold (no cliff: 9 inliers is barely better than 8) and
  grows quickly, so a confident fit (tens of inliers) overturns the global order.
- It saturates at ``weight``: past ~60 inliers more points say nothing new about *whether*
  the candidate shows the same object (they mostly reflect texture and resolution), so among
  verified candidates the global similarity still breaks the tie.
- ``weight`` = 0.5 is larger than the usual global-score gap between a look-alike and a true
  match (cosine similarities of L2-normalised embeddings, where the top candidates of a query
  typically lie within ~0.3 of each other), so a confident fit wins; and it is smaller than
  1, so a verified candidate with a poor global score does not jump above a verified one with
  a much better global score.
- ``scale`` = 15 inliers: 15 inliers above the threshold give 63 % of the weight (0.32),
  30 above give 86 % (0.43). For scale: on UKBench at 1000 RootSIFT features (200 images,
  defaults), same-object pairs have a median of ~93 inliers and a 10th percentile of ~18
  (bonus 0.24), while no unrelated pair out of 39,200 reached 8 (max 7, 99th percentile 5).
  Harder photos (landmarks, wide baselines) give fewer inliers, which is why the bonus is
  already substantial at a few tens of inliers rather than at hundreds.

Calibration on the dev sets (bench/fusion_calibration.py, bench/results/fusion_calibration.json:
smvs_dvd_covers standard, paris6k_subset, ukbench1000 dev plain and transformed; global top 50):
with RootSIFT every one of the 240 settings tried (min inliers 6-30, scale 5-40, weight
0.1-1.0) was at least as good as no re-rank on every set and metric, and these defaults were
within 0.001 of the best mean, so they stay. Unrelated RootSIFT candidates reach 5 inliers at
the 99th percentile; 8 keeps a margin. DELF features get their own constants
(``rotation.DELF_FUSION``): fewer, coarser inliers.

Scores are assumed to be similarities (higher is better) with a spread of order 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from services.common.errors import ConfigError
from services.verifier.geometry import DEFAULT_MIN_INLIERS, GeometricEvidence

DEFAULT_GEOMETRY_WEIGHT = 0.5
DEFAULT_INLIER_SCALE = 15.0


@dataclass(frozen=True)
class FusionSettings:
    """Constants of the fused score (reasons in the module docstring).

    Attributes:
        weight: the bonus a saturated geometric fit adds to the global score.
        inlier_scale: inliers above ``min_inliers`` that give 63 % of ``weight``.
        min_inliers: inliers at or below which geometry adds nothing; keep it equal to
            GeometrySettings.min_inliers.
    """

    weight: float = DEFAULT_GEOMETRY_WEIGHT
    inlier_scale: float = DEFAULT_INLIER_SCALE
    min_inliers: int = DEFAULT_MIN_INLIERS

    def __post_init__(self) -> None:
        if self.weight < 0 or self.inlier_scale <= 0 or self.min_inliers < 0:
            raise ConfigError("fusion weight >= 0, inlier_scale > 0 and min_inliers >= 0")


def geometric_bonus(inliers: int, settings: FusionSettings) -> float:
    """The saturating bonus for an inlier count; 0.0 below min_inliers and at it."""
    excess = inliers - settings.min_inliers
    if excess <= 0:
        return 0.0
    return settings.weight * (1.0 - math.exp(-excess / settings.inlier_scale))


def fused_score(
    global_score: float, evidence: GeometricEvidence, settings: FusionSettings
) -> float:
    """Global similarity plus the geometric bonus (see the module docstring)."""
    return float(global_score) + geometric_bonus(evidence.inliers, settings)
