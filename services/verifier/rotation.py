"""Geometric verification of a query extracted at several in-plane rotations (DELF features).

CNN descriptors are not rotation invariant, so the embedder describes the query at several
rotations (``LocalFeatures.group_sizes`` / ``rotations``, keypoints all in the original query's
pixels). Verification against one candidate (``verify_grouped``):
1. One matrix product for all groups at once: [Σn, d] x [d, m] similarities.
2. Per row (every row belongs to one group): nearest / second-nearest candidate → Lowe ratio
   test. Per group: each candidate column's best row *within that group*
   (``np.maximum.reduceat`` over the group's row block) → mutual nearest neighbours. So each
   group gets exactly the one-to-one matches it would get alone, for one product.
3. Only the ``fit_groups`` groups with the most tentative matches get a robust fit (a wrong
   rotation yields few, scattered matches), and the fit with the most inliers is kept.
A query without groups goes through ``geometry.verify_pair`` unchanged.

Geometry and fusion settings for DELF (``DELF_GEOMETRY``) differ from RootSIFT's: keypoints
sit on a stride-16 grid of an image whose long side is 384 px at scale 1.0, i.e. ~27 px at the
640 px reference side, so the residual threshold is larger (DELF's own ``image_reranking``
uses 20 px on its ~1024 px images).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from services.common.errors import InvalidArgumentError
from services.common.local_features import LocalFeatures
from services.verifier.fusion import FusionSettings
from services.verifier.geometry import (
    EMPTY_PAIRS,
    GeometricEvidence,
    GeometrySettings,
    fit_pairs,
    nearest_two,
    verify_pair,
)

DEFAULT_FIT_GROUPS = 2
# DELF settings. Ratio and residual: chosen on the UKBench dev queries by
# bench/delf_settings_grid.py (bench/results/delf_settings_grid_dev.json): ratio 0.9 and a
# residual of 20 px (~0.75 grid cells at the 640 px reference side; DELF's own image_reranking
# uses 20 px). Min inliers, inlier scale and weight: calibrated for delf-mobilenetv2-v3 on every
# dev set (smvs_dvd_covers standard, paris6k_subset, ukbench1000 dev plain and transformed) by
# bench/fusion_calibration.py (bench/results/fusion_calibration.json):
# - min inliers 8: unrelated candidates reach 8 DELF inliers in 1 % of the top-50 pairs on
#   paris6k (99th percentile 7.9; 6.0 on SMVS), so fewer is weak evidence and adds nothing;
# - inlier scale 5: true DELF matches are few (SMVS phone photo vs its cover: median 13, vs 156
#   with RootSIFT), so the bonus must be substantial after a handful of inliers above the
#   threshold (8 + 5 inliers give 63 % of the weight);
# - weight 0.3: of the 240 (min inliers, scale, weight) settings, this one had the best mean
#   over the sets' metrics among those at least as good as no re-rank on every set and metric.
#   Against the former scale 20: SMVS P@1 0.5425 -> 0.5675, UKBench transformed N-S
#   3.796 -> 3.841, the other sets unchanged or +0.001.
DELF_RESIDUAL_PX = 20.0
DELF_RATIO = 0.9
DELF_MIN_INLIERS = 8
DELF_INLIER_SCALE = 5.0
DELF_WEIGHT = 0.3
DELF_GEOMETRY = GeometrySettings(
    ratio=DELF_RATIO, residual_px=DELF_RESIDUAL_PX, min_inliers=DELF_MIN_INLIERS
)
DELF_FUSION = FusionSettings(
    weight=DELF_WEIGHT, inlier_scale=DELF_INLIER_SCALE, min_inliers=DELF_MIN_INLIERS
)


def match_grouped(
    query: np.ndarray, candidate: np.ndarray, ratio: float, group_sizes: tuple[int, ...]
) -> list[np.ndarray]:
    """One-to-one matches of every query row group against the candidate.

    Args:
        query: [N, d] float32 L2-unit rows, consecutive groups of ``group_sizes`` rows.
        candidate: [m, d] float32 L2-unit rows.
        ratio: Lowe ratio on Euclidean distances.
        group_sizes: sizes of the row groups (sum N).

    Returns:
        One [k_g, 2] int32 array per group of (query row in the FULL query, candidate row),
        sorted by query row, no index repeated within a group.
    """
    n, m = len(query), len(candidate)
    if n == 0 or m == 0:
        return [EMPTY_PAIRS.copy() for _ in group_sizes]
    similarity = query @ candidate.T  # unit rows: d² = 2 - 2 s
    nearest, best, second = nearest_two(similarity)
    d1_sq = np.maximum(2.0 - 2.0 * best, 0.0)
    d2_sq = np.maximum(2.0 - 2.0 * second, 0.0)
    passed = d1_sq < (ratio * ratio) * d2_sq
    sizes = np.asarray(group_sizes, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    nonempty = sizes > 0
    column_best = np.full((len(sizes), m), np.inf, dtype=similarity.dtype)
    column_best[nonempty] = np.maximum.reduceat(similarity, starts[nonempty], axis=0)
    group_of_row = np.repeat(np.arange(len(sizes)), sizes)
    passed &= best >= column_best[group_of_row, nearest]
    out = []
    for start, size in zip(starts, sizes, strict=True):
        block = np.flatnonzero(passed[start : start + size]) + start
        columns = nearest[block]
        _, first = np.unique(columns, return_index=True)  # exact ties: keep the first row
        first.sort()
        out.append(np.stack([block[first], columns[first]], axis=1).astype(np.int32))
    return out


def verify_grouped(
    query: LocalFeatures,
    candidate: LocalFeatures,
    settings: GeometrySettings,
    fit_groups: int = DEFAULT_FIT_GROUPS,
) -> tuple[GeometricEvidence, float | None]:
    """Best geometric evidence over the query's rotation groups, and that group's rotation.

    Without groups: ``verify_pair`` and rotation None.
    """
    if not query.group_sizes:
        return verify_pair(query, candidate, settings), None
    if query.count and candidate.count and query.dims != candidate.dims:
        raise InvalidArgumentError(
            f"descriptor dims differ: query {query.dims}, candidate {candidate.dims}"
        )
    per_group = match_grouped(
        query.descriptors, candidate.descriptors, settings.ratio, query.group_sizes
    )
    return fit_matches(query, candidate, per_group, settings, fit_groups)


def fit_matches(
    query: LocalFeatures,
    candidate: LocalFeatures,
    per_group: list[np.ndarray],
    settings: GeometrySettings,
    fit_groups: int = DEFAULT_FIT_GROUPS,
) -> tuple[GeometricEvidence, float | None]:
    """Evidence from tentative matches already found (``per_group``: one [k, 2] int32 array
    per query group, or one array for a query without groups), as ``verify_grouped``
    would give it: without groups the fit of the one set and rotation None; with groups
    the best fit of the ``fit_groups`` groups with the most matches, and its rotation."""
    if not query.group_sizes:
        return fit_pairs(query, candidate, per_group[0], settings), None
    order = sorted(range(len(per_group)), key=lambda g: (-len(per_group[g]), g))
    best, best_rotation = GeometricEvidence(matches=len(per_group[order[0]])), None
    for g in order[:fit_groups]:
        evidence = fit_pairs(query, candidate, per_group[g], settings)
        if evidence.inliers > best.inliers:
            best, best_rotation = evidence, query.rotations[g]
    return best, best_rotation


def settings_for(
    feature_type: str, geometry: GeometrySettings, fusion: FusionSettings
) -> tuple[GeometrySettings, FusionSettings]:
    """For "delf": the service's settings with DELF's ratio, residual, min inliers, inlier
    scale and weight; for other types the service's settings unchanged."""
    if feature_type != "delf":
        return geometry, fusion
    delf_geometry = replace(
        geometry,
        ratio=DELF_GEOMETRY.ratio,
        residual_px=DELF_GEOMETRY.residual_px,
        min_inliers=DELF_GEOMETRY.min_inliers,
    )
    delf_fusion = replace(
        fusion,
        weight=DELF_FUSION.weight,
        inlier_scale=DELF_FUSION.inlier_scale,
        min_inliers=DELF_FUSION.min_inliers,
    )
    return delf_geometry, delf_fusion
