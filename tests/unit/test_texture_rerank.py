"""TextureReranker: SVC label vote over the candidates' stored LBP histograms."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from skimage import data

from services.common.errors import ConfigError
from services.common.objectstore import InMemoryObjectStore
from services.common.texture_features import histogram_to_bytes, texture_key
from services.embedder.texture import TEXTURE_TYPE, lbp_histogram
from services.verifier.texture import (
    LABEL_BONUS,
    HistogramCache,
    TextureCandidate,
    TextureReranker,
    TextureSettings,
)

TILE = 96


def tiles(image: np.ndarray, count: int) -> list[np.ndarray]:
    """`count` histograms of distinct TILE x TILE crops of a grey image."""
    step = (image.shape[1] - TILE) // count
    return [lbp_histogram(image[:TILE, i * step : i * step + TILE].copy()) for i in range(count)]


@pytest.fixture(scope="module")
def textures() -> dict[str, list[np.ndarray]]:
    """Crops of two clearly different textures: bricks and grass."""
    return {"brick": tiles(data.brick(), 6), "grass": tiles(data.grass(), 6)}


@pytest.fixture
def store(textures) -> InMemoryObjectStore:
    store = InMemoryObjectStore()
    for label, histograms in textures.items():
        for i, histogram in enumerate(histograms):
            store.put(texture_key(TEXTURE_TYPE, f"{label}{i}"), histogram_to_bytes(histogram))
    return store


@pytest.fixture
def reranker(store) -> Iterator[TextureReranker]:
    reranker = TextureReranker(store, TextureSettings(min_global_score=0.3), HistogramCache())
    yield reranker
    reranker.close()


def candidate(sha: str, score: float, label: str | None = None) -> TextureCandidate:
    return TextureCandidate(f"id-{sha}", sha, score, label if label is not None else sha[:-1])


def test_predicted_label_comes_first_in_global_order(reranker, textures):
    # The global order favours bricks; the query (a held-out grass crop) is grass.
    candidates = [
        candidate("brick0", 0.95),
        candidate("brick1", 0.93),
        candidate("grass0", 0.90),
        candidate("brick2", 0.88),
        candidate("grass1", 0.85),
        candidate("grass2", 0.80),
        candidate("brick3", 0.70),
    ]
    query = textures["grass"][5]
    results = reranker.rerank(query, TEXTURE_TYPE, candidates)
    assert [r.id for r in results] == [
        "id-grass0",
        "id-grass1",
        "id-grass2",
        "id-brick0",
        "id-brick1",
        "id-brick2",
        "id-brick3",
    ]
    assert {r.predicted_label for r in results} == {"grass"}
    assert results[0].label_margin > 0
    assert results[0].score == pytest.approx(0.90 + LABEL_BONUS)
    assert results[3].score == pytest.approx(0.95)  # the others keep their global score
    assert "predicts 'grass'" in results[0].reason and "same label" in results[0].reason
    assert "label 'brick'" in results[3].reason


def test_one_label_keeps_the_global_order_and_says_why(reranker, textures):
    candidates = [candidate("brick0", 0.9), candidate("brick1", 0.8), candidate("grass0", 0.2)]
    results = reranker.rerank(textures["grass"][5], TEXTURE_TYPE, candidates)
    # grass0 is below min_global_score, so only one label trains: no vote.
    assert [r.id for r in results] == ["id-brick0", "id-brick1", "id-grass0"]
    assert [r.score for r in results] == pytest.approx([0.9, 0.8, 0.2])
    assert all(r.predicted_label == "" for r in results)
    assert all("carry 1 label(s), need 2; global order kept" in r.reason for r in results)


def test_unlabelled_and_featureless_candidates_do_not_train(reranker, textures):
    candidates = [
        candidate("brick0", 0.9),
        candidate("grass0", 0.8, label=""),  # no label
        candidate("missing0", 0.7, label="grass"),  # no stored histogram
    ]
    results = reranker.rerank(textures["grass"][5], TEXTURE_TYPE, candidates)
    assert [r.id for r in results] == ["id-brick0", "id-grass0", "id-missing0"]
    assert "1 candidates above global 0.30 carry 1 label(s)" in results[0].reason


def test_the_query_own_copy_does_not_vote(reranker, textures):
    # Only the query's own image (same content hash) is grass: excluded, one label remains.
    candidates = [candidate("grass0", 1.0), candidate("brick0", 0.9), candidate("brick1", 0.8)]
    results = reranker.rerank(textures["grass"][0], TEXTURE_TYPE, candidates, "grass0")
    assert all(r.predicted_label == "" for r in results)
    with_copy = reranker.rerank(textures["grass"][0], TEXTURE_TYPE, candidates)
    assert with_copy[0].predicted_label == "grass"


def test_three_labels_margin_is_the_gap_to_the_runner_up(reranker, textures, store):
    bark = tiles(data.camera(), 3)
    for i, histogram in enumerate(bark):
        store.put(texture_key(TEXTURE_TYPE, f"bark{i}"), histogram_to_bytes(histogram))
    candidates = [
        candidate(f"{label}{i}", 0.9 - i * 0.01)
        for label in ("brick", "grass", "bark")
        for i in range(3)
    ]
    results = reranker.rerank(textures["brick"][5], TEXTURE_TYPE, candidates)
    assert results[0].predicted_label == "brick"
    assert [r.id for r in results[:3]] == ["id-brick0", "id-brick1", "id-brick2"]
    assert results[0].label_margin > 0


def test_settings_are_validated():
    with pytest.raises(ConfigError):
        TextureSettings(min_global_score=2.0)
    with pytest.raises(ConfigError):
        TextureSettings(kernel="cubic")
    with pytest.raises(ConfigError):
        TextureSettings(svc_c=0.0)
