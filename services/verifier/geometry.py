"""Geometric verification of two images' local features (RootSIFT or any L2 descriptor).

Pipeline (``verify_pair``):
1. One-to-one tentative matches: Lowe's ratio test query -> candidate AND mutual nearest
   neighbours. Many-to-one ratio-test matches let one candidate keypoint (a repeated texture,
   a logo) collect several query keypoints; that inflates inlier counts of wrong candidates and
   made re-ranking worse in a reference run on UKBench, while one-to-one matches improved it.
2. Both point sets are rescaled so each image's long side is ``reference_side`` pixels, so that
   the residual threshold means the same thing for a 640 px thumbnail and a 4000 px photo.
3. A robust fit (OpenCV USAC, MAGSAC++ by default) of a homography or an affine transform.
4. Implausible fits are rejected (mirror images, folded or non-convex projections, extreme
   scale or anisotropy), so a weird fit on a handful of coincidental matches does not count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from services.common.errors import ConfigError, InvalidArgumentError
from services.common.local_features import LocalFeatures

MODEL_HOMOGRAPHY = "homography"
MODEL_AFFINE = "affine"
MIN_MATCHES_FOR_MODEL = {MODEL_HOMOGRAPHY: 4, MODEL_AFFINE: 3}

# Lowe's ratio (nearest / second-nearest distance). Lowe's 0.8 is for the ratio test alone; the
# mutual-NN check already removes most ambiguous matches, so the ratio can be a bit looser
# (0.85 kept more true inliers than 0.8 at no extra false fits; 0.9 doubled unrelated pairs'
# tentative matches, i.e. fit time and chance fits, for no gain).
DEFAULT_RATIO = 0.85
# Reprojection threshold in pixels at a long side of REFERENCE_SIDE (the extraction size).
# Loose enough for mildly non-planar objects (bottles, boxes) under a homography; 3, 6 and 10 px
# separated same/different objects about equally, 10 px let more chance fits reach 6-8 inliers.
DEFAULT_RESIDUAL_PX = 6.0
REFERENCE_SIDE = 640
# Unrelated pairs never reach the confidence stop, so max_trials bounds their cost.
DEFAULT_MAX_TRIALS = 1000
DEFAULT_CONFIDENCE = 0.999
# Fewer inliers than this is not evidence: coincidental fits of 4-6 points are common (on
# UKBench, 0.07 % of unrelated pairs reach 6 inliers, none of 39,200 reached 8).
DEFAULT_MIN_INLIERS = 8
# Plausibility of a fitted transform (linear scale and anisotropy of its local Jacobian).
MAX_SCALE_CHANGE = 10.0
MAX_ANISOTROPY = 8.0
MIN_PERSPECTIVE_DENOMINATOR = 1e-3  # projective w at the query's corners must stay positive
UNIT_NORM_TOLERANCE = 1e-3
DUPLICATE_DECIMALS = 2  # matches at the same (query xy, candidate xy) to 0.01 px are one match

# Candidate descriptor rows per batched product (match_batch): [n, MATCH_CHUNK_ROWS] float32
# similarities, 16 MiB for a 1,000-row query; about four candidates of 1,000 RootSIFT
# features, so each candidate's passes over its slice stay in cache, and a re-rank of 50
# candidates gives a dozen chunks to spread over the verifier's workers.
MATCH_CHUNK_ROWS = 4096

EMPTY_PAIRS = np.zeros((0, 2), dtype=np.int32)
NEXT_CORNER = np.array([1, 2, 3, 0])


@dataclass(frozen=True)
class GeometrySettings:
    """Matching and robust-fitting parameters (see the module constants for the reasons).

    Attributes:
        ratio: Lowe ratio on Euclidean distances, in (0, 1].
        model: "homography" (planar or distant scenes; products, landmarks) or "affine".
        method: OpenCV robust method flag, cv2.USAC_MAGSAC by default.
        residual_px: inlier threshold in pixels at a long side of ``reference_side``.
        reference_side: the long side both images are normalised to before fitting.
        max_trials: maximum robust-fit iterations.
        confidence: robust-fit stopping confidence, in (0, 1).
        min_inliers: inliers needed for the evidence to count (used by fusion, too).
    """

    ratio: float = DEFAULT_RATIO
    model: str = MODEL_HOMOGRAPHY
    method: int = cv2.USAC_MAGSAC
    residual_px: float = DEFAULT_RESIDUAL_PX
    reference_side: int = REFERENCE_SIDE
    max_trials: int = DEFAULT_MAX_TRIALS
    confidence: float = DEFAULT_CONFIDENCE
    min_inliers: int = DEFAULT_MIN_INLIERS

    def __post_init__(self) -> None:
        if self.model not in MIN_MATCHES_FOR_MODEL:
            raise ConfigError(f"geometry model must be one of {list(MIN_MATCHES_FOR_MODEL)}")
        if not 0.0 < self.ratio <= 1.0 or not 0.0 < self.confidence < 1.0:
            raise ConfigError("ratio must be in (0, 1] and confidence in (0, 1)")
        if self.residual_px <= 0 or self.reference_side <= 0 or self.max_trials <= 0:
            raise ConfigError("residual_px, reference_side and max_trials must be positive")
        if self.min_inliers < MIN_MATCHES_FOR_MODEL[self.model]:
            raise ConfigError(f"min_inliers must be >= {MIN_MATCHES_FOR_MODEL[self.model]}")


@dataclass(frozen=True, eq=False)  # arrays: identity equality and hash
class GeometricEvidence:
    """Result of verifying a query against one candidate.

    Attributes:
        matches: number of one-to-one tentative matches.
        inliers: matches consistent with the fitted transform (0 when it was rejected).
        inlier_ratio: inliers / matches (0.0 without matches).
        transform: [3, 3] float64 mapping query pixels to candidate pixels (original image
            coordinates; an affine fit has last row [0, 0, 1]), or None.
        inlier_pairs: [k, 2] int32 (query index, candidate index) of the inliers.
    """

    matches: int = 0
    inliers: int = 0
    inlier_ratio: float = 0.0
    transform: np.ndarray | None = None
    inlier_pairs: np.ndarray = field(default_factory=lambda: EMPTY_PAIRS.copy())


def nearest_two(similarity: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of similarity (float32 [n, m], higher is nearer): the column of the nearest
    candidate (int [n]), its similarity and the runner-up's (float32 [n] each; -inf without one).
    """
    rows = np.arange(similarity.shape[0])
    nearest = similarity.argmax(axis=1)
    best = similarity[rows, nearest]
    if similarity.shape[1] > 1:
        similarity[rows, nearest] = -np.inf
        second = similarity.max(axis=1)
        similarity[rows, nearest] = best
    else:
        second = np.full(similarity.shape[0], -np.inf, dtype=np.float32)
    return nearest, best, second


def match_descriptors(query: np.ndarray, candidate: np.ndarray, ratio: float) -> np.ndarray:
    """One-to-one matches: ratio test query -> candidate plus mutual nearest neighbours.

    Args:
        query: [n, d] float32 descriptors.
        candidate: [m, d] float32 descriptors.
        ratio: Lowe ratio on Euclidean distances (nearest < ratio * second nearest).

    Returns:
        [k, 2] int32 (query index, candidate index), sorted by query index; no index repeats
        in either column. Exact (brute force by matrix product); with L2-unit rows (RootSIFT)
        the product is the similarity itself, otherwise distances are formed explicitly.
    """
    n, m = len(query), len(candidate)
    if n == 0 or m == 0:
        return EMPTY_PAIRS.copy()
    query = np.asarray(query, dtype=np.float32)
    candidate = np.asarray(candidate, dtype=np.float32)
    q_sq = np.einsum("ij,ij->i", query, query)
    c_sq = np.einsum("ij,ij->i", candidate, candidate)
    unit = _all_unit(q_sq) and _all_unit(c_sq)
    # similarity: higher is nearer. Unit rows: s = q.c and d^2 = 2 - 2s; otherwise s = -d^2.
    similarity = query @ candidate.T
    if not unit:
        similarity *= 2.0
        similarity -= q_sq[:, None]
        similarity -= c_sq[None, :]

    nearest, best, second = nearest_two(similarity)
    d1_sq = _squared_distance(best, unit)
    d2_sq = _squared_distance(second, unit)
    passed = np.flatnonzero(d1_sq < (ratio * ratio) * d2_sq)
    if passed.size == 0:
        return EMPTY_PAIRS.copy()
    # Mutual check: the row's similarity must be its column's maximum (max along axis 0 is
    # much faster than argmax along it). Exact ties could leave a column twice: keep the first.
    columns = nearest[passed]
    mutual = best[passed] >= similarity.max(axis=0)[columns]
    passed, columns = passed[mutual], columns[mutual]
    _, first = np.unique(columns, return_index=True)
    first.sort()
    return np.stack([passed[first], columns[first]], axis=1).astype(np.int32)


def chunk_candidates(counts: list[int], max_rows: int = MATCH_CHUNK_ROWS) -> list[list[int]]:
    """Consecutive candidate positions grouped so that each group's descriptor rows
    (``counts``: rows per candidate) total at most ``max_rows``; a larger candidate alone."""
    chunks: list[list[int]] = []
    rows = 0
    for position, count in enumerate(counts):
        if chunks and rows + count <= max_rows:
            chunks[-1].append(position)
            rows += count
        else:
            chunks.append([position])
            rows = count
    return chunks


def match_batch(
    query: np.ndarray,
    candidates: list[np.ndarray],
    ratio: float,
    group_sizes: tuple[int, ...] = (),
) -> list[list[np.ndarray]]:
    """One-to-one matches of a query against several candidates, from ONE matrix product.

    The candidates' descriptors are stacked and multiplied with the query's once
    ([n, d] x [d, sum m_i]); then, on each candidate's column slice, the same ratio test and
    mutual-nearest-neighbour check as ``match_descriptors`` (one group, ``group_sizes``
    empty) or ``rotation.match_grouped`` (each row group alone, L2-unit rows). The result
    is that of matching each candidate on its own, up to float rounding of the product.

    Args:
        query: [n, d] float32 descriptors (rows in consecutive groups of ``group_sizes``).
        candidates: one [m_i, d] float32 array per candidate, all with the query's d.
        ratio: Lowe ratio on Euclidean distances.
        group_sizes: row group sizes of the query (sum n), or () for one group.

    Returns:
        Per candidate, one [k, 2] int32 (query row, candidate row) array per group (one
        without groups), sorted by query row, no index repeated within a group.
    """
    groups = group_sizes or (len(query),)
    out: list[list[np.ndarray]] = [[EMPTY_PAIRS.copy() for _ in groups] for _ in candidates]
    present = [i for i, c in enumerate(candidates) if len(c)]
    if len(query) == 0 or not present:
        return out
    query = np.asarray(query, dtype=np.float32)
    counts = np.array([len(candidates[i]) for i in present])
    width = int(counts.max())
    # Each candidate padded to `width` rows, so that the similarities reshape to
    # [n, candidates, width] and every per-candidate pass runs on contiguous rows.
    stacked = np.zeros((len(present) * width, query.shape[1]), dtype=np.float32)
    for slot, i in enumerate(present):
        stacked[slot * width : slot * width + counts[slot]] = candidates[i]
    similarity = (query @ stacked.T).reshape(len(query), len(present), width)
    unit = np.ones(len(present), dtype=bool)
    if not group_sizes:  # like match_descriptors: s = -d^2 unless both sides are unit rows
        q_sq = np.einsum("ij,ij->i", query, query)
        for slot, count in enumerate(counts):
            block = stacked[slot * width : slot * width + count]
            c_sq = np.einsum("ij,ij->i", block, block)
            unit[slot] = _all_unit(q_sq) and _all_unit(c_sq)
            if not unit[slot]:
                view = similarity[:, slot, :count]
                view *= 2.0
                view -= q_sq[:, None]
                view -= c_sq[None, :]
    for slot, count in enumerate(counts):
        similarity[:, slot, count:] = -np.inf  # padding is never a neighbour
    sizes = np.asarray(groups, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    # column_best[g, c, j]: the best similarity of candidate c's row j within query group g.
    column_best = np.full((len(sizes), len(present), width), np.inf, dtype=np.float32)
    for g, (first_row, size) in enumerate(zip(starts, sizes, strict=True)):
        if size:
            column_best[g] = similarity[first_row : first_row + size].max(axis=0)
    # Nearest and second-nearest candidate row of every query row, per candidate: [n, c].
    nearest = similarity.argmax(axis=2)
    at_nearest = nearest[:, :, None]
    best = np.take_along_axis(similarity, at_nearest, axis=2)[:, :, 0]
    np.put_along_axis(similarity, at_nearest, -np.inf, axis=2)
    second = similarity.max(axis=2)
    d1_sq = np.where(unit, _squared_distance(best, True), _squared_distance(best, False))
    d2_sq = np.where(unit, _squared_distance(second, True), _squared_distance(second, False))
    passed = d1_sq < (ratio * ratio) * d2_sq
    group_of_row = np.repeat(np.arange(len(sizes)), sizes)
    slots = np.arange(len(present))
    passed &= best >= column_best[group_of_row[:, None], slots[None, :], nearest]
    for slot, i in enumerate(present):
        for g, (first_row, size) in enumerate(zip(starts, sizes, strict=True)):
            rows = np.flatnonzero(passed[first_row : first_row + size, slot]) + first_row
            if rows.size == 0:
                continue
            columns = nearest[rows, slot]
            _, first = np.unique(columns, return_index=True)  # exact ties: keep the first row
            first.sort()
            out[i][g] = np.stack([rows[first], columns[first]], axis=1).astype(np.int32)
    return out


def verify_pair(
    query: LocalFeatures, candidate: LocalFeatures, settings: GeometrySettings
) -> GeometricEvidence:
    """Match two images' local features and fit a transform robustly.

    Returns zero evidence (with the match count) when there are too few matches for the model
    or when the fitted transform is implausible.
    """
    if query.count and candidate.count and query.dims != candidate.dims:
        raise InvalidArgumentError(
            f"descriptor dims differ: query {query.dims}, candidate {candidate.dims}"
        )
    pairs = match_descriptors(query.descriptors, candidate.descriptors, settings.ratio)
    return fit_pairs(query, candidate, pairs, settings)


def fit_pairs(
    query: LocalFeatures, candidate: LocalFeatures, pairs: np.ndarray, settings: GeometrySettings
) -> GeometricEvidence:
    """Robust fit of tentative matches ``pairs`` ([k, 2] int32 query row, candidate row).

    Fewer matches than ``min_inliers`` are not fitted: their inliers could not count as
    evidence, and unrelated candidates (most of a re-rank list) would each cost a full run of
    ``max_trials`` robust-fit iterations for nothing.
    """
    pairs = _drop_duplicate_locations(pairs, query.keypoints, candidate.keypoints)
    matches = len(pairs)
    if matches < max(MIN_MATCHES_FOR_MODEL[settings.model], settings.min_inliers):
        return GeometricEvidence(matches=matches)

    query_norm = _normaliser(query, settings.reference_side)
    candidate_norm = _normaliser(candidate, settings.reference_side)
    src = _apply(query_norm, query.keypoints[pairs[:, 0]])
    dst = _apply(candidate_norm, candidate.keypoints[pairs[:, 1]])
    transform, mask = _fit(src, dst, settings)
    if transform is None or mask is None:
        return GeometricEvidence(matches=matches)
    inlier_mask = mask.ravel().astype(bool)
    query_box = _apply(query_norm, _corners(query), np.float64)
    if not _plausible(transform, query_box, src[inlier_mask]):
        return GeometricEvidence(matches=matches)

    inliers = int(inlier_mask.sum())
    original = np.diag(1.0 / np.diag(candidate_norm)) @ transform @ query_norm
    return GeometricEvidence(
        matches=matches,
        inliers=inliers,
        inlier_ratio=inliers / matches,
        transform=original / original[2, 2],
        inlier_pairs=pairs[inlier_mask],
    )


def _all_unit(squared_norms: np.ndarray) -> bool:
    return bool(np.all(np.abs(squared_norms - 1.0) < UNIT_NORM_TOLERANCE))


def _squared_distance(similarity: np.ndarray, unit: bool) -> np.ndarray:
    distance_sq = 2.0 - 2.0 * similarity if unit else -similarity
    return np.maximum(distance_sq, 0.0)


def _drop_duplicate_locations(
    pairs: np.ndarray, query_xy: np.ndarray, candidate_xy: np.ndarray
) -> np.ndarray:
    """SIFT emits one keypoint per dominant orientation; keep one match per location pair."""
    if len(pairs) < 2:
        return pairs
    locations = np.hstack([query_xy[pairs[:, 0]], candidate_xy[pairs[:, 1]]])
    locations = np.ascontiguousarray(np.round(locations, DUPLICATE_DECIMALS) + 0.0)  # no -0.0
    rows = locations.view(np.dtype((np.void, locations.itemsize * 4))).ravel()
    _, first = np.unique(rows, return_index=True)
    return pairs[np.sort(first)]


def _normaliser(features: LocalFeatures, reference_side: int) -> np.ndarray:
    """[3, 3] float64 scaling original pixels so that the long side is reference_side."""
    scale = reference_side / max(features.image_width, features.image_height)
    return np.diag([scale, scale, 1.0])


def _apply(
    transform: np.ndarray, points: np.ndarray, dtype: type[np.floating] = np.float32
) -> np.ndarray:
    """[3, 3] transform applied to [k, 2] points -> [k, 2] (projective division)."""
    homogeneous = np.hstack([points, np.ones((len(points), 1))]) @ transform.T
    return (homogeneous[:, :2] / homogeneous[:, 2:]).astype(dtype)


def _corners(features: LocalFeatures) -> np.ndarray:
    """[4, 2] image corners, clockwise in image coordinates (y down)."""
    w, h = features.image_width - 1.0, features.image_height - 1.0
    return np.array([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]])


def _fit(
    src: np.ndarray, dst: np.ndarray, settings: GeometrySettings
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Robust fit on [k, 2] float32 points -> ([3, 3] float64 or None, [k, 1] uint8 mask)."""
    if settings.model == MODEL_HOMOGRAPHY:
        transform, mask = cv2.findHomography(
            src,
            dst,
            method=settings.method,
            ransacReprojThreshold=settings.residual_px,
            maxIters=settings.max_trials,
            confidence=settings.confidence,
        )
    else:
        affine, mask = cv2.estimateAffine2D(
            src,
            dst,
            method=settings.method,
            ransacReprojThreshold=settings.residual_px,
            maxIters=settings.max_trials,
            confidence=settings.confidence,
        )
        transform = None if affine is None else np.vstack([affine, [0.0, 0.0, 1.0]])
    if transform is None or transform.shape != (3, 3) or not np.all(np.isfinite(transform)):
        return None, None
    return transform.astype(np.float64), mask


def _plausible(transform: np.ndarray, query_box: np.ndarray, inlier_src: np.ndarray) -> bool:
    """Reject mirror, folded, non-convex, degenerate or extreme fits (normalised coordinates).

    Args:
        transform: [3, 3] float64 query -> candidate in normalised coordinates.
        query_box: [4, 2] query image corners (normalised), clockwise with y down.
        inlier_src: [k, 2] query inlier points (normalised); the Jacobian is taken at their mean.
    """
    if abs(transform[2, 2]) < MIN_PERSPECTIVE_DENOMINATOR:
        return False
    h = transform / transform[2, 2]
    corners_w = np.hstack([query_box, np.ones((4, 1))]) @ h[2]
    if np.any(corners_w < MIN_PERSPECTIVE_DENOMINATOR):
        return False  # the query's image plane crosses the horizon: a folded projection
    projected = _apply(h, query_box, np.float64)
    edges = projected[NEXT_CORNER] - projected
    following = edges[NEXT_CORNER]
    turns = edges[:, 0] * following[:, 1] - edges[:, 1] * following[:, 0]
    if np.any(turns <= 0):
        return False  # mirrored (orientation flips) or non-convex quadrilateral
    if len(inlier_src) == 0:
        return False
    largest, smallest = _singular_values(_jacobian(h, inlier_src.mean(axis=0)))
    if smallest <= 0:
        return False
    scale = np.sqrt(largest * smallest)
    return bool(
        1.0 / MAX_SCALE_CHANGE <= scale <= MAX_SCALE_CHANGE and largest / smallest <= MAX_ANISOTROPY
    )


def _singular_values(matrix: np.ndarray) -> tuple[float, float]:
    """Singular values (largest, smallest) of a [2, 2] matrix, in closed form."""
    frobenius_sq = float(np.sum(matrix * matrix))
    det = float(abs(matrix[0, 0] * matrix[1, 1] - matrix[0, 1] * matrix[1, 0]))
    gap = np.sqrt(max(frobenius_sq * frobenius_sq - 4.0 * det * det, 0.0))
    largest = np.sqrt((frobenius_sq + gap) / 2.0)
    return float(largest), float(det / largest) if largest > 0 else 0.0


def _jacobian(h: np.ndarray, point: np.ndarray) -> np.ndarray:
    """[2, 2] derivative of the homography h ([3, 3], h[2, 2] = 1) at a [2] point."""
    w = h[2, 0] * point[0] + h[2, 1] * point[1] + 1.0
    mapped = (h[:2, :2] @ point + h[:2, 2]) / w
    return (h[:2, :2] - np.outer(mapped, h[2, :2])) / w
