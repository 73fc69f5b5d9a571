import pytest

from visearch.evaluation import percentiles_ms, score_rankings

LABELS = {f"{g}{i}": g for g in "ab" for i in range(4)}


def test_perfect_rankings_score_four():
    rankings = {q: [q] + [o for o in LABELS if LABELS[o] == LABELS[q] and o != q] for q in LABELS}
    scores = score_rankings(rankings, LABELS)
    assert scores.ns_score == 4.0
    assert scores.map == 1.0
    assert scores.p_at_1 == 1.0


def test_partial_rankings():
    # Query a0 finds itself, one relevant at rank 2 (of others: rank 1), then junk, then one more.
    rankings = {"a0": ["a0", "a1", "b0", "b1", "a2"]}
    scores = score_rankings(rankings, LABELS)
    assert scores.ns_score == 2.0
    # Others: a1 (rank 1), b0, b1, a2 (rank 4); 3 relevant in total.
    assert scores.map == pytest.approx((1 / 1 + 2 / 4) / 3)
    assert scores.p_at_1 == 1.0


def test_wrong_first_result():
    scores = score_rankings({"a0": ["b0", "a0"]}, LABELS)
    assert scores.p_at_1 == 0.0
    assert scores.ns_score == 1.0


def test_percentiles():
    assert percentiles_ms([1.0, 2.0, 3.0, 4.0])["p50"] == 2.5
    assert percentiles_ms([]) == {"p50": 0.0, "p95": 0.0}
