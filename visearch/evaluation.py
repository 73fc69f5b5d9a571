"""Retrieval metrics: UKBench N-S score, mAP and precision@1 (query excluded)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RetrievalScores:
    ns_score: float
    map: float
    p_at_1: float
    queries: int


def score_rankings(
    rankings: dict[str, list[str]], labels: dict[str, str], query_in_gallery: bool = True
) -> RetrievalScores:
    """rankings: query id -> result ids best first (the query itself may appear).

    N-S: how many of the query's group (itself included) are in the top 4, averaged.
    mAP and P@1 drop the query from its own ranking; relevant = same label.
    query_in_gallery=False: the query is a transformed copy of the gallery item with its id;
    that item is then a relevant result like the rest of its group, not dropped.
    """
    group_sizes = Counter(labels.values())
    ns, average_precisions, p1 = [], [], []
    for query, ranked in rankings.items():
        label = labels[query]
        ns.append(sum(1 for r in ranked[:4] if labels.get(r) == label))
        others = [r for r in ranked if r != query] if query_in_gallery else list(ranked)
        relevant_total = group_sizes[label] - (1 if query_in_gallery else 0)
        if relevant_total <= 0:
            continue
        hits, precision_sum = 0, 0.0
        for rank, result in enumerate(others, start=1):
            if labels.get(result) == label:
                hits += 1
                precision_sum += hits / rank
        average_precisions.append(precision_sum / relevant_total)
        p1.append(1.0 if others and labels.get(others[0]) == label else 0.0)
    return RetrievalScores(
        ns_score=float(np.mean(ns)) if ns else 0.0,
        map=float(np.mean(average_precisions)) if average_precisions else 0.0,
        p_at_1=float(np.mean(p1)) if p1 else 0.0,
        queries=len(rankings),
    )


def percentiles_ms(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"p50": 0.0, "p95": 0.0}
    array = np.asarray(samples)
    return {
        "p50": round(float(np.percentile(array, 50)), 2),
        "p95": round(float(np.percentile(array, 95)), 2),
    }
