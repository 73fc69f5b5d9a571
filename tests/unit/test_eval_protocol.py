"""The generic eval protocol: metrics against hand-computed cases, CSVs, converters, training."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visearch import eval_datasets
from visearch.datasets import ImageEntry
from visearch.eval_protocol import (
    Query,
    parse_ks,
    read_gallery,
    read_queries,
    score_protocol,
    score_query,
    write_gallery,
    write_queries,
)
from visearch.eval_suite import TrainSpec, parse_query_csvs, train_command, train_on_gallery
from visearch.evaluation import score_rankings

DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
GALLERY = {f"{g}{i}": g for g in "ab" for i in range(4)}  # two objects, four photos each
NOWHERE = Path("/nonexistent.jpg")


def q(query_id: str, label: str, junk: tuple[str, ...] = ()) -> Query:
    return Query(query_id, NOWHERE, label, frozenset(junk))


def test_average_precision_precision_recall_and_ns_by_hand():
    # External query (not in the gallery), label a: relevant a0..a3; hits at ranks 1, 3, 5.
    s = score_query(["a0", "b0", "a1", "b1", "a2"], q("x", "a"), GALLERY, ks=(1, 5, 10))
    assert s.average_precision == pytest.approx((1 / 1 + 2 / 3 + 3 / 5) / 4)
    assert s.precision_at == {1: 1.0, 5: pytest.approx(3 / 5), 10: pytest.approx(3 / 10)}
    assert s.recall_at == {1: 0.25, 5: 0.75, 10: 0.75}
    assert s.hit_at == {1: 1.0, 5: 1.0, 10: 1.0}
    assert (s.ns, s.relevant, s.ns_group) == (2, 4, 4)  # a0, a1 in the top 4
    miss = score_query(["b0", "a3"], q("x", "a"), GALLERY, ks=(1,))
    assert miss.average_precision == pytest.approx((1 / 2) / 4)
    assert (miss.precision_at[1], miss.hit_at[1], miss.recall_at[1]) == (0.0, 0.0, 0.0)


def test_junk_counts_neither_as_hit_nor_miss():
    query = q("x", "a", junk=("a1", "b0"))
    s = score_query(["b0", "a1", "a0", "b1", "a2"], query, GALLERY, ks=(1, 2))
    # Junk dropped: [a0, b1, a2]; relevant {a0, a2, a3} (junk a1 leaves the denominator too).
    assert s.relevant == 3
    assert s.average_precision == pytest.approx((1 / 1 + 2 / 3) / 3)
    assert s.precision_at == {1: 1.0, 2: 0.5}
    assert s.ns == 2  # top 4 after junk: a0, b1, a2
    plain = score_query(["b0", "a1", "a0", "b1", "a2"], q("x", "a"), GALLERY, ks=(1,))
    assert plain.precision_at[1] == 0.0  # the same ranking without junk misses at rank 1


def test_own_image_is_dropped_for_map_and_counted_for_ns():
    s = score_query(["a0", "a1", "b0", "a2", "a3"], q("a0", "a"), GALLERY, ks=(1,))
    assert s.relevant == 3 and s.ns_group == 4
    assert s.average_precision == pytest.approx((1 / 1 + 2 / 3 + 3 / 4) / 3)
    assert s.ns == 3  # a0 (itself), a1, a2 among the top 4
    assert s.precision_at[1] == 1.0


def test_scores_match_the_legacy_ukbench_scorer():
    rng = np.random.default_rng(0)
    ids = list(GALLERY)
    rankings = {i: list(rng.permutation(ids)) for i in ids}
    legacy = score_rankings(rankings, GALLERY)
    new = score_protocol(rankings, [q(i, GALLERY[i]) for i in ids], GALLERY)
    assert new.map == pytest.approx(legacy.map)
    assert new.p_at_1 == pytest.approx(legacy.p_at_1)
    assert new.ns_score == pytest.approx(legacy.ns_score)
    assert new.ns_applies
    # Transformed copies (other ids): the original is a relevant result, as legacy's flag.
    copies = {f"{i}@t": r for i, r in rankings.items()}
    legacy_t = score_rankings(rankings, GALLERY, query_in_gallery=False)
    new_t = score_protocol(copies, [q(f"{i}@t", GALLERY[i]) for i in ids], GALLERY)
    assert new_t.map == pytest.approx(legacy_t.map) and new_t.ns_applies


def test_ns_applies_only_with_exactly_four_relevant():
    # SMVS standard: one cover per object, phone queries outside the gallery.
    covers = {"c1": "1", "c2": "2"}
    scores = score_protocol(
        {"p1": ["c1", "c2"], "p2": ["c1", "c2"]}, [q("p1", "1"), q("p2", "2")], covers
    )
    assert not scores.ns_applies
    assert scores.map == pytest.approx((1 + 1 / 2) / 2)
    assert scores.p_at_1 == 0.5
    assert scores.recall_at[1] == 0.5 and scores.hit_at[1] == 0.5


def test_queries_without_relevant_items_are_not_scored_and_missing_rankings_score_zero():
    queries = [q("x", "a"), q("y", "zzz"), q("z", "b")]
    scores = score_protocol({"x": ["a0", "a1", "a2", "a3"]}, queries, GALLERY)
    assert (scores.queries, scores.scored) == (3, 2)
    assert scores.map == pytest.approx(0.5)  # x perfect, z (no ranking) zero, y left out
    as_dict = scores.as_dict()
    assert as_dict["p_at"]["1"] == 0.5 and as_dict["scored_queries"] == 2


def test_parse_ks_and_query_csv_specs(tmp_path):
    assert parse_ks("10,1, 5") == [1, 5, 10]
    for bad in ("", "0", "a"):
        with pytest.raises(ValueError):
            parse_ks(bad)
    assert parse_query_csvs(["hard=x/q.csv", "y/plain.csv"]) == {
        "hard": Path("x/q.csv"),
        "plain": Path("y/plain.csv"),
    }
    with pytest.raises(ValueError):
        parse_query_csvs(["a/q.csv", "b/q.csv"])


def _image(path: Path, width: int = 40, height: int = 30) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(path)
    return path


def test_csv_round_trip_with_junk_and_bbox(tmp_path):
    gallery = [ImageEntry("g1", _image(tmp_path / "img" / "g1.jpg"), "a")]
    queries = [Query("q1", gallery[0].path, "a", frozenset({"g2", "g1"}), (5, 2, 25, 22))]
    g_csv = write_gallery(tmp_path / "gallery.csv", gallery)
    q_csv = write_queries(tmp_path / "queries.csv", queries)
    assert "img/g1.jpg" in g_csv.read_text()  # relative to the CSV's folder
    assert read_gallery(g_csv) == gallery
    (back,) = read_queries(q_csv)
    assert back == queries[0]
    with Image.open(io.BytesIO(back.image_bytes())) as crop:
        assert crop.size == (20, 20)
    (tmp_path / "bad.csv").write_text("id,path,label,bbox\nq,img/g1.jpg,a,1 2 3\n")
    with pytest.raises(ValueError, match="bbox"):
        read_queries(tmp_path / "bad.csv")
    (tmp_path / "dup.csv").write_text("id,path,label\ng,a.jpg,a\ng,b.jpg,a\n")
    with pytest.raises(ValueError, match="repeated"):
        read_gallery(tmp_path / "dup.csv")


def _paris_like(root: Path) -> Path:
    rows = ["filename,group,role,gt_status,query_id,query_bbox_x1y1x2y2,also_positive_for"]
    for name, group, role, status, bbox in [
        ("e1.jpg", "eiffel", "query", "positive", "0 0 20 10"),
        ("e2.jpg", "eiffel", "gallery", "positive", ""),
        ("e3.jpg", "eiffel", "gallery", "junk", ""),
        ("l1.jpg", "louvre", "gallery", "positive", ""),
        ("l2.jpg", "louvre", "gallery", "junk", ""),
        ("n1.jpg", "none", "gallery", "negative", ""),
    ]:
        _image(root / "images" / name)
        rows.append(f"{name},{group},{role},{status},,{bbox},")
    (root / "groundtruth.csv").write_text("\n".join(rows) + "\n")
    return root


def test_paris_converter_official_and_all_vs_all(tmp_path):
    root = _paris_like(tmp_path / "paris")
    assert eval_datasets.detect_protocol(root) == "paris"
    gallery, queries = eval_datasets.plain_protocol(root, "paris")
    assert [e.id for e in gallery] == ["e1", "e2", "e3", "l1", "l2", "n1"]
    (official,) = queries
    assert official.junk == {"e3"} and official.bbox == (0, 0, 20, 10)
    _, every = eval_datasets.plain_protocol(root, "paris-all")
    assert [(x.id, sorted(x.junk), x.bbox) for x in every] == [
        ("e1", ["e3"], None),
        ("e2", ["e3"], None),
        ("l1", ["l2"], None),
    ]
    labels = {e.id: e.label for e in gallery}
    # e1 queries: own image first (dropped), junk e3, then e2: AP 1 over one relevant.
    assert score_query(["e1", "e3", "e2"], official, labels).average_precision == 1.0


def test_write_protocol_with_transformed_copies(tmp_path):
    root = _paris_like(tmp_path / "paris")
    files = eval_datasets.convert(
        root, tmp_path / "proto", protocol="auto", query_sets=["plain", "transformed"]
    )
    assert files.protocol == "paris" and set(files.queries) == {"plain", "transformed"}
    (copy,) = read_queries(files.queries["transformed"])
    assert copy.id == "e1" + eval_datasets.TRANSFORMED_SUFFIX
    assert copy.bbox is None and copy.junk == {"e3"} and copy.path.exists()
    assert len(read_gallery(files.gallery)) == 6
    with pytest.raises(ValueError):
        eval_datasets.convert(root, tmp_path / "x", query_sets=["rotated"])


SMVS = DATASETS / "smvs_dvd_covers"
PARIS = DATASETS / "paris6k_subset"
UKBENCH = DATASETS / "ukbench1000"


@pytest.mark.skipif(not SMVS.exists(), reason=f"{SMVS} is absent")
def test_smvs_protocols_follow_its_readme():
    gallery, queries = eval_datasets.plain_protocol(SMVS, "auto")
    assert (len(gallery), len(queries)) == (100, 400)
    labels = {e.id: e.label for e in gallery}
    assert all(sum(1 for v in labels.values() if v == x.label) == 1 for x in queries)
    gallery, queries = eval_datasets.plain_protocol(SMVS, "smvs-all")
    assert (len(gallery), len(queries)) == (500, 500)
    perfect = {x.id: [g.id for g in gallery if g.label == x.label] for x in queries}
    scores = score_protocol(perfect, queries, {e.id: e.label for e in gallery})
    assert scores.map == 1.0 and scores.recall_at[5] == 1.0  # 4 others per query
    assert not scores.ns_applies  # groups of 5 with itself: not UKBench's top-4 count


@pytest.mark.skipif(not PARIS.exists(), reason=f"{PARIS} is absent")
def test_paris_protocol_has_the_eleven_official_queries_with_boxes_and_junk():
    gallery, queries = eval_datasets.plain_protocol(PARIS, "auto")
    assert len(gallery) == 250 and len(queries) == 11
    assert all(x.bbox is not None and x.junk for x in queries)
    labels = {e.id: e.label for e in gallery}
    assert all(labels[j] == x.label for x in queries for j in x.junk)


@pytest.mark.skipif(not UKBENCH.exists(), reason=f"{UKBENCH} is absent")
def test_ukbench_protocol_is_all_vs_all_with_ns():
    gallery, queries = eval_datasets.plain_protocol(UKBENCH, "auto", limit=8)
    assert [x.id for x in queries] == [e.id for e in gallery]
    perfect = {x.id: [g.id for g in gallery if g.label == x.label] for x in queries}
    scores = score_protocol(perfect, queries, {e.id: e.label for e in gallery})
    assert scores.ns_applies and scores.ns_score == 4.0


class FakeClient:
    def __init__(self) -> None:
        self.reembedded: list[tuple[str, str]] = []

    def reembed(self, collection: str, version: str):  # noqa: ANN201
        self.reembedded.append((collection, version))
        yield "progress"


def test_train_on_gallery_calls_train_then_reembeds_every_collection(tmp_path):
    spec = TrainSpec(tmp_path, ("--epochs", "2"), force=True)
    argv = train_command("c-rootsift", spec)
    assert argv[1:] == [
        "-m", "visearch.cli", "train", "-c", "c-rootsift", "--json",
        "--state-dir", str(tmp_path), "--epochs", "2", "--force",
    ]  # fmt: skip
    client = FakeClient()
    published = '{"version": "m-triplet256-abc", "published": true}'
    record = train_on_gallery(
        client, ["c-rootsift", "c-delf"], spec, lambda _argv: (0, "log\n" + published + "\n")
    )
    assert record["published"] is True and record["summary"]["version"] == "m-triplet256-abc"
    assert client.reembedded == [("c-rootsift", "m-triplet256-abc"), ("c-delf", "m-triplet256-abc")]
    refused = FakeClient()
    record = train_on_gallery(refused, ["c"], spec, lambda _argv: (3, '{"version": "x"}'))
    assert record["published"] is False and refused.reembedded == []
    with pytest.raises(RuntimeError, match="exit 1"):
        train_on_gallery(FakeClient(), ["c"], spec, lambda _argv: (1, "boom"))


def test_eval_command_writes_the_protocol_of_a_dataset_folder(tmp_path):
    from typer.testing import CliRunner

    from visearch.cli import app

    root = _paris_like(tmp_path / "paris")
    out = tmp_path / "proto"
    args = ["eval", str(root), "--queries", "plain,transformed", "--protocol-dir", str(out)]
    result = CliRunner().invoke(app, [*args, "--convert-only"])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.glob("*.csv")} == {
        "gallery.csv",
        "queries_plain.csv",
        "queries_transformed.csv",
    }
    again = ["eval", "--gallery", str(out / "gallery.csv"), "--convert-only"]
    again += ["--query-csv", f"official={out / 'queries_plain.csv'}"]
    result = CliRunner().invoke(app, again)
    assert result.exit_code == 0 and "queries official" in result.output
    assert CliRunner().invoke(app, ["eval", "--convert-only"]).exit_code == 2
