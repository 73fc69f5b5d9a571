"""Texture re-rank, explained hits, GetImage, `search --show` and `eval` on the real stack."""

from __future__ import annotations

import io

import cv2
import pytest
from PIL import Image
from typer.testing import CliRunner

from services.common.imaging import sha256_hex
from tests.integration.conftest import DATASETS
from visearch import datasets, show, transforms
from visearch.cli import app
from visearch.client import IngestItem
from visearch.eval_suite import parse_modes, run_suite

pytestmark = [pytest.mark.integration, pytest.mark.dataset]
UKBENCH = DATASETS / "ukbench1000"
needs_ukbench = pytest.mark.skipif(not UKBENCH.exists(), reason=f"{UKBENCH} is absent")


@pytest.fixture(scope="module")
def groups(client):
    """Three UKBench objects, four photos each, label = object."""
    entries = datasets.ukbench(UKBENCH, 12)
    items = [IngestItem(e.id, image=e.path.read_bytes(), label=e.label) for e in entries]
    client.create_collection("texture-groups", texture_features=True)
    client.ingest("texture-groups", items)
    return entries


def reencoded(path, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.open(path).convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@needs_ukbench
def test_texture_mode_votes_and_explains(client, groups):
    # Two photos of one object, each stored three times (re-encoded) under its own label: every
    # candidate is far above the global-similarity threshold and two labels train the SVC.
    views = {"front": groups[4].path, "side": groups[5].path}
    items = [
        IngestItem(f"{label}-{quality}", image=reencoded(path, quality), label=label)
        for label, path in views.items()
        for quality in (95, 90, 85)
    ]
    info = client.create_collection("texture-views", default_rerank="texture")
    assert info.texture_features  # a texture default turns them on
    client.ingest("texture-views", items)
    result = client.search("texture-views", reencoded(views["side"], 80), k=6, rerank="texture")
    assert len(result.hits) == 6
    predicted = {h.predicted_label for h in result.hits}
    assert predicted == {"side"}  # the query is the side view, re-encoded once more
    assert [h.label for h in result.hits] == ["side"] * 3 + ["front"] * 3
    assert all(h.label_margin > 0 for h in result.hits)
    assert "texture SVC on 6 candidates / 2 labels predicts" in result.hits[0].reason
    assert {"texture", "rerank"} <= set(result.timings_ms)


@needs_ukbench
def test_texture_mode_with_one_label_keeps_the_global_order(client, groups):
    items = [IngestItem(e.id, image=e.path.read_bytes(), label="same") for e in groups[:6]]
    client.create_collection("texture-one-label", texture_features=True)
    client.ingest("texture-one-label", items)
    query = groups[1].path.read_bytes()
    plain = client.search("texture-one-label", query, k=6, rerank="none")
    texture = client.search("texture-one-label", query, k=6, rerank="texture")
    assert [h.id for h in texture.hits] == [h.id for h in plain.hits]
    assert all(h.predicted_label == "" for h in texture.hits)
    assert all("need 2; global order kept" in h.reason for h in texture.hits)


@needs_ukbench
def test_get_image_returns_the_ingested_bytes(client, groups):
    data = client.get_image("texture-groups", groups[5].id)
    assert data == groups[5].path.read_bytes()
    assert sha256_hex(data) == client.get("texture-groups", groups[5].id).sha256


@needs_ukbench
def test_search_show_draws_results_and_inlier_lines(stack, groups, tmp_path):
    query = tmp_path / "query.jpg"
    query.write_bytes(transforms.transform_image_bytes(groups[2].path.read_bytes(), "q")[0])
    out = tmp_path / "show.png"
    runner = CliRunner()
    args = ["search", "-c", "texture-groups", str(query), "--k", "4", "--rerank", "geometric"]
    result = runner.invoke(
        app, [*args, "--show", str(out), "--gateway", stack.gateway, "--state-dir", stack.state_dir]
    )
    assert result.exit_code == 0, result.output
    picture = cv2.imread(str(out))
    height, width = picture.shape[:2]
    rows = (height - show.TILE - show.CAPTION) // (show.PAIR_SIDE + show.CAPTION)
    assert rows >= 1  # the object's other photos verify
    assert (width, height) == show.layout_size(4, rows)
    b, g, r = (picture[show.TILE + show.CAPTION :, :, i].astype(int) for i in range(3))
    assert ((g - r > 60) & (g - b > 60)).sum() > 500  # inlier lines


@needs_ukbench
def test_eval_suite_on_plain_and_transformed_queries(client):
    entries = datasets.ukbench(UKBENCH, 8)
    report = run_suite(
        client, entries, parse_modes("none,texture"), ["plain", "transformed"], k=8, workers=2
    )
    runs = {(r["queries"], r["mode"]): r for r in report["runs"]}
    assert set(runs) == {(q, m) for q in ("plain", "transformed") for m in ("none", "texture")}
    assert runs[("plain", "none")]["p_at_1"] == 1.0  # two objects, four photos each
    for run in runs.values():
        assert 0.0 <= run["map"] <= 1.0 and 0.0 <= run["ns_score"] <= 4.0
        assert run["latency_ms"]["p50"] > 0
    assert set(runs[("transformed", "texture")]["texture"]) == {"vote_rate", "vote_accuracy"}
