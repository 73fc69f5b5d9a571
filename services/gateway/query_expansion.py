"""Query expansion at search time: alpha-QE and spatially verified QE. No grpc here.

Alpha query expansion (Radenović, Tolias, Chum, "Fine-tuning CNN image retrieval with no human
annotation", TPAMI 2018): search once, then search again with

    q' = normalise(q + sum_{i <= n} max(s_i, 0)^alpha * x_i)

over the n best results x_i and their cosine similarities s_i to the query q (the query's own
weight is 1 = s(q, q)^alpha). alpha = 0 is average query expansion (every result weighs 1);
a larger alpha leans on the closest results only.

Spatially verified query expansion (Chum et al., "Total Recall", ICCV 2007): after a geometric
re-rank, the results with more inliers than the verifier's minimum are trusted, so they are
averaged into the query with weight 1 each (their global similarity to a phone photo is often
low, which alpha weights would all but ignore). The verified results keep their place at the
top; the second search fills the rest of the list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from services.common.errors import InvalidArgumentError

DEFAULT_ALPHA = 3.0
MAX_TOP_N = 50
MAX_ALPHA = 10.0
# Verified results averaged into the query by spatially verified QE, best first. A cap on the
# work only: on the dev sets 1.2-7.5 were combined on average per query that had any
# (bench/results/query_expansion_verified*.json), so it rarely binds.
MAX_VERIFIED = 20
# A combined vector shorter than this is not a direction: the query is kept as it is.
MIN_NORM = 1e-6
# The verifier's default minimum inliers (services/verifier/geometry.py DEFAULT_MIN_INLIERS);
# stricter trust did not pay on the dev sets (bench/results/query_expansion_verified_depth100.json).
DEFAULT_VERIFIED_MIN_INLIERS = 8


@dataclass(frozen=True)
class QueryExpansion:
    """Query-expansion settings of a collection or of one search.

    top_n: results combined with the query by alpha-QE (0 = alpha-QE off).
    alpha: exponent on each result's similarity (0 = every result weighs 1).
    verified: after a geometric re-rank, search again with the query plus its verified results.
    """

    top_n: int = 0
    alpha: float = DEFAULT_ALPHA
    verified: bool = False

    @property
    def enabled(self) -> bool:
        return self.top_n > 0 or self.verified


OFF = QueryExpansion()
VERIFIED_ONLY = QueryExpansion(verified=True)


def check(settings: QueryExpansion, where: str = "query expansion") -> None:
    """Raises InvalidArgumentError with what to send instead."""
    if not 0 <= settings.top_n <= MAX_TOP_N:
        raise InvalidArgumentError(
            f"{where}: top_n must be in 0..{MAX_TOP_N} (0 = alpha query expansion off; "
            f"5 is a good start), got {settings.top_n}"
        )
    if not (math.isfinite(settings.alpha) and 0.0 <= settings.alpha <= MAX_ALPHA):
        raise InvalidArgumentError(
            f"{where}: alpha must be a number in 0..{MAX_ALPHA:g} (0 = plain average of the "
            f"top_n results, {DEFAULT_ALPHA:g} = the default), got {settings.alpha}"
        )


def expand(
    queries: np.ndarray, neighbours: np.ndarray, sims: np.ndarray, alpha: float
) -> np.ndarray:
    """Alpha-QE of a batch of queries.

    Args:
        queries: float32 [q, d], L2-normalised.
        neighbours: float32 [q, n, d], each query's n results (n may be 0).
        sims: float32 [q, n], their cosine similarities to the query; NaN marks a missing
            result (weight 0).
        alpha: the similarity exponent; 0 gives every present result weight 1.

    Returns:
        float32 [q, d], L2-normalised; a query whose combination has no length stays as is.
    """
    queries = np.asarray(queries, dtype=np.float32)
    sims = np.asarray(sims, dtype=np.float32)
    present = ~np.isnan(sims)
    weights = np.where(present, np.maximum(np.nan_to_num(sims), 0.0) ** alpha, 0.0)
    combined = queries + np.einsum("qn,qnd->qd", weights.astype(np.float32), neighbours)
    norms = np.linalg.norm(combined, axis=1, keepdims=True)
    expanded = np.where(norms > MIN_NORM, combined / np.maximum(norms, MIN_NORM), queries)
    return expanded.astype(np.float32)


def expand_one(
    query: np.ndarray, neighbours: np.ndarray, sims: np.ndarray, alpha: float
) -> np.ndarray:
    """query: float32 [d]; neighbours: float32 [n, d]; sims: float32 [n] -> float32 [d]."""
    dims = query.shape[-1]
    return expand(
        query.reshape(1, dims), neighbours.reshape(1, -1, dims), sims.reshape(1, -1), alpha
    )[0]


def is_verified(inliers: int, min_inliers: int) -> bool:
    """A re-ranked hit trusted by spatially verified QE: more inliers than the minimum (the
    fusion adds nothing at the minimum itself, services/verifier/fusion.py)."""
    return inliers > min_inliers
