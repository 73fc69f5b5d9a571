"""Retrieval scores of embeddings: mAP and P@1 of queries against a gallery (exact search)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Scores:
    map: float
    p_at_1: float
    p_at_5: float
    queries: int

    def as_dict(self) -> dict[str, float | int]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def retrieval_scores(
    queries: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    exclude: np.ndarray | None = None,
) -> Scores:
    """Rank the whole gallery by cosine similarity for each query.

    Args:
        queries: float32 [q, d], unit rows. gallery: float32 [g, d], unit rows.
        query_labels: [q]; gallery_labels: [g]. Relevant = same label.
        exclude: int [q], a gallery index to drop from each query's ranking (the query itself),
            or -1 for none.

    Queries with no relevant gallery item are skipped (counted out of ``queries``).
    """
    sims = queries @ gallery.T
    if exclude is not None:
        rows = np.flatnonzero(exclude >= 0)
        sims[rows, exclude[rows]] = -np.inf
    aps, p1, p5 = [], [], []
    for i in range(sims.shape[0]):
        order = np.argsort(-sims[i], kind="stable")
        if exclude is not None and exclude[i] >= 0:
            order = order[order != exclude[i]]
        relevant = gallery_labels[order] == query_labels[i]
        total = int(relevant.sum())
        if total == 0:
            continue
        hits = np.cumsum(relevant)
        ranks = np.flatnonzero(relevant) + 1
        aps.append(float((hits[relevant] / ranks).mean()))
        p1.append(float(relevant[0]))
        p5.append(float(relevant[:5].mean()))
    if not aps:
        return Scores(0.0, 0.0, 0.0, 0)
    return Scores(float(np.mean(aps)), float(np.mean(p1)), float(np.mean(p5)), len(aps))
