"""`visearch eval` plumbing: mode specs, query sets, labelled data, transformed-query scores."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from visearch import datasets
from visearch.client import Hit, SearchResult
from visearch.eval_suite import (
    EvalMode,
    collection_feature_types,
    parse_modes,
    parse_query_sets,
    texture_summary,
)
from visearch.evaluation import score_rankings
from visearch.jobs import QueryResult

LABELS = {f"{g}{i}": g for g in "ab" for i in range(4)}


def test_all_four_modes_parse():
    modes = parse_modes("none,geometric:rootsift,geometric:delf,texture")
    assert [m.name for m in modes] == ["none", "geometric:rootsift", "geometric:delf", "texture"]
    assert collection_feature_types(modes) == ["rootsift", "delf"]
    assert parse_modes("geometric") == [EvalMode("geometric", "rootsift")]
    assert collection_feature_types(parse_modes("none,texture")) == ["rootsift"]
    for bad in ("sift", "texture:delf", ""):
        with pytest.raises(ValueError):
            parse_modes(bad)


def test_query_sets():
    assert parse_query_sets("plain, transformed") == ["plain", "transformed"]
    with pytest.raises(ValueError):
        parse_query_sets("rotated")


def test_transformed_queries_count_their_original_as_relevant():
    # A transformed copy of a0 finds a0 (its untouched original) first, then a1, b0, a2, a3.
    rankings = {"a0": ["a0", "a1", "b0", "a2", "a3"]}
    plain = score_rankings(rankings, LABELS)
    transformed = score_rankings(rankings, LABELS, query_in_gallery=False)
    assert transformed.p_at_1 == plain.p_at_1 == 1.0
    assert transformed.ns_score == plain.ns_score == 3.0
    assert plain.map == pytest.approx((1 / 1 + 2 / 3 + 3 / 4) / 3)  # a0 dropped
    assert transformed.map == pytest.approx((1 + 1 + 3 / 4 + 4 / 5) / 4)
    assert score_rankings({"a0": ["b0", "a0"]}, LABELS, query_in_gallery=False).p_at_1 == 0.0


def test_labelled_dataset_takes_the_first_n_per_label(tmp_path):
    (tmp_path / "images" / "rose").mkdir(parents=True)
    (tmp_path / "images" / "tulip").mkdir(parents=True)
    rows = ["filename,label"]
    for label in ("rose", "tulip"):
        for i in range(3):
            name = f"{label}/{i}.jpg"
            Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "images" / name)
            rows.append(f"{name},{label}")
    (tmp_path / "groundtruth.csv").write_text("\n".join(rows) + "\n")
    entries = datasets.labelled(tmp_path, per_label=2)
    assert [(e.id, e.label) for e in entries] == [
        ("rose_0", "rose"),
        ("rose_1", "rose"),
        ("tulip_0", "tulip"),
        ("tulip_1", "tulip"),
    ]
    assert all(e.path.exists() for e in entries)


def _result(predicted: str) -> SearchResult:
    hit = Hit("x", 1.0, "a", {}, 1.0, 0, "", "", predicted_label=predicted)
    return SearchResult([hit], False, [], {}, "m")


def test_texture_summary_counts_votes_and_correct_votes():
    results = [
        QueryResult("a0", _result("a"), 1.0),
        QueryResult("a1", _result("b"), 1.0),
        QueryResult("b0", _result(""), 1.0),  # fell back: fewer than two labels
    ]
    assert texture_summary(results, LABELS) == {"vote_rate": 0.6667, "vote_accuracy": 0.5}
