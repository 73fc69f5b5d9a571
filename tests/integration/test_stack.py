"""End to end on real parts: Valkey, SeaweedFS S3, ONNX Runtime, ScaNN, gRPC servers."""

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from minio import Minio
from PIL import Image

from services.common.errors import (
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from services.common.index_types import IndexOverrides
from visearch import demo, localstack
from visearch.client import IngestItem

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return demo.write_samples(tmp_path_factory.mktemp("samples"))


@pytest.fixture(scope="module")
def gallery(client, samples):
    items = [IngestItem(p.stem, image=p.read_bytes(), label=p.stem[7:]) for p in samples]
    results = client.ingest("gallery", items)
    assert len(results) == len(samples)
    return {p.stem: p for p in samples}


def minio_client(stack) -> Minio:
    return Minio(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key, secure=False)


def image_objects(stack) -> int:
    return sum(1 for _ in minio_client(stack).list_objects("images", recursive=True))


def test_every_service_is_serving_and_exports_metrics(stack):
    report = localstack.status(Path(stack.state_dir))
    assert report["running"]
    services = {s["name"]: s for s in report["services"]}
    assert {
        "valkey",
        "seaweedfs",
        "embedder",
        "indexer-0",
        "indexer-1",
        "verifier",
        "gateway",
    } <= set(services)
    for name in ("embedder", "indexer-0", "verifier", "gateway"):
        assert services[name]["serving"], name
        body = urllib.request.urlopen(services[name]["metrics"], timeout=5).read().decode()
        assert f"visearch_{name.split('-')[0]}_ready 1.0" in body


def test_rotated_cropped_copy_finds_its_original(client, gallery):
    query = demo.rotated_cropped_query(gallery["sample-coffee"])
    for mode in ("none", "geometric"):
        result = client.search("gallery", query, k=5, rerank=mode)
        assert result.hits[0].id == "sample-coffee", mode
        assert result.hits[0].label == "coffee"
        assert not result.partial
    geometric = client.search("gallery", query, k=3, rerank="geometric")
    assert geometric.hits[0].inliers >= 15
    assert "rerank" in geometric.timings_ms


def test_ingest_search_delete_cycle(client, samples):
    path = samples[0]
    client.ingest("cycle", [IngestItem("only-one", image=path.read_bytes(), label="x")])
    assert client.search("cycle", path.read_bytes(), k=1).hits[0].id == "only-one"
    assert client.get("cycle", "only-one").label == "x"
    assert client.delete("cycle", ["only-one"]) == (1, [])
    assert client.search("cycle", path.read_bytes(), k=5).hits == []
    with pytest.raises(NotFoundError):
        client.get("cycle", "only-one")
    assert client.stats("cycle").images == 0


def test_reingest_replaces(client, samples):
    first, second = samples[1], samples[2]
    client.ingest("replace", [IngestItem("same-id", image=first.read_bytes(), label="a")])
    results = client.ingest(
        "replace", [IngestItem("same-id", image=second.read_bytes(), label="b")]
    )
    assert results[0].replaced
    hits = client.search("replace", second.read_bytes(), k=5).hits
    assert [h.id for h in hits] == ["same-id"]
    assert hits[0].label == "b" and hits[0].score > 0.99
    stats = client.stats("replace")
    assert stats.images == 1
    assert sum(s.size for s in stats.shards) == 1


def test_bad_image_bytes_store_nothing(client, stack, samples):
    client.ingest("bad", [IngestItem("good", image=samples[3].read_bytes())])
    objects_before = image_objects(stack)
    with pytest.raises(InvalidArgumentError, match="item 'broken'.*cannot be decoded"):
        client.ingest(
            "bad",
            [
                IngestItem("fine", image=samples[4].read_bytes()),
                IngestItem("broken", image=b"\x89PNG\r\n\x1a\n garbage"),
            ],
        )
    assert image_objects(stack) == objects_before
    with pytest.raises(NotFoundError):
        client.get("bad", "fine")
    assert client.stats("bad").images == 1
    with pytest.raises(InvalidArgumentError, match="appears twice"):
        client.ingest("bad", [IngestItem("d", image=samples[4].read_bytes())] * 2)
    with pytest.raises(InvalidArgumentError, match="k must be"):
        client.search("bad", samples[3].read_bytes(), k=100_000)
    with pytest.raises(NotFoundError, match="does not exist"):
        client.search("no-such-collection", samples[3].read_bytes())


def test_a_stopped_shard_gives_partial_results(client, stack, gallery):
    # Earlier tests in the session may have restarted a shard: read the current pids.
    current = localstack.StackState.load(Path(stack.state_dir))
    shard = next(p for p in current.processes if p.name == "indexer-1")
    query = gallery["sample-rocket"].read_bytes()
    os.kill(shard.pid, signal.SIGSTOP)
    try:
        result = client.search("gallery", query, k=5, rerank="none", timeout_s=5.0)
        assert result.partial and result.missing_shards == [1]
        with pytest.raises(UnavailableError, match="did not answer"):
            client.search("gallery", query, rerank="none", require_complete=True, timeout_s=5.0)
    finally:
        os.kill(shard.pid, signal.SIGCONT)
    assert not client.search("gallery", query, k=5, rerank="none").partial


def test_cli_searches_a_manifest_as_json(stack, gallery, tmp_path):
    manifest = tmp_path / "queries.csv"
    manifest.write_text(
        "id,path,label\n"
        + "".join(f"q-{name},{gallery[name]},\n" for name in ("sample-coffee", "sample-moon"))
    )
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "visearch.cli",
            "search",
            "--collection",
            "gallery",
            "--manifest",
            str(manifest),
            "--k",
            "3",
            "--json",
            "--gateway",
            stack.gateway,
            "--state-dir",
            stack.state_dir,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = [json.loads(line) for line in completed.stdout.splitlines()]
    assert [line["query"] for line in lines] == ["q-sample-coffee", "q-sample-moon"]
    assert lines[0]["results"][0]["id"] == "sample-coffee"
    assert set(lines[0]) >= {"query", "results", "partial", "timings_ms"}


def test_images_by_object_key_and_size_limits(client, stack, samples):
    data = samples[5].read_bytes()
    minio_client(stack).put_object("uploads", "keys/photo.jpg", io.BytesIO(data), len(data))
    client.ingest("keys", [IngestItem("staged", object_key="uploads/keys/photo.jpg")])
    hits = client.search("keys", object_key="uploads/keys/photo.jpg", k=1).hits
    assert hits[0].id == "staged" and hits[0].score > 0.99
    with pytest.raises(NotFoundError, match="uploads/keys/missing.jpg"):
        client.ingest("keys", [IngestItem("nope", object_key="uploads/keys/missing.jpg")])
    too_big = b"\xff" * (20 * 1024 * 1024 + 1)
    with pytest.raises(ResourceExhaustedError, match="above the limit"):
        client.ingest("keys", [IngestItem("big", image=too_big)])
    assert client.stats("keys").images == 1


def test_a_deleted_image_is_erased_and_other_collections_cannot_name_it(client, stack, samples):
    buffer = io.BytesIO()  # bytes no other test ingests (those would keep them referenced)
    Image.open(samples[6]).convert("RGB").crop((3, 3, 200, 180)).save(buffer, format="JPEG")
    data = buffer.getvalue()
    (outcome,) = client.ingest("erase-a", [IngestItem("doomed", image=data)])
    client.ingest("erase-b", [IngestItem("other", image=samples[7].read_bytes())])
    key = f"images/{outcome.sha256}"
    with pytest.raises(NotFoundError, match="no image"):
        client.ingest("erase-b", [IngestItem("stolen", object_key=key)])
    assert client.search("erase-a", object_key=key, k=1).hits[0].id == "doomed"
    s3 = minio_client(stack)
    names = [o.object_name for o in s3.list_objects("features", recursive=True)]
    assert any(outcome.sha256 in name for name in names)
    client.delete("erase-a", ["doomed"])
    with pytest.raises(NotFoundError):
        client.get_image("erase-a", "doomed")
    deadline = time.monotonic() + 30  # VISEARCH_ERASE_AFTER_S=1 in tests/integration/conftest.py
    while time.monotonic() < deadline:
        left = [
            o.object_name
            for bucket in ("images", "features")
            for o in s3.list_objects(bucket, recursive=True)
            if outcome.sha256 in o.object_name
        ]
        if not left:
            break
        time.sleep(0.5)
    assert not left, f"still stored after the delete: {left}"


def test_search_filters_by_label_and_attribute(client, samples):
    items = [
        IngestItem(
            p.stem,
            image=p.read_bytes(),
            label="grey" if i % 2 else "colour",
            attributes={"set": "a" if i < 6 else "b"},
        )
        for i, p in enumerate(samples)
    ]
    client.ingest("filtered", items)
    query = samples[1].read_bytes()
    grey = client.search("filtered", query, k=20, label="grey", rerank="none").hits
    assert grey[0].id == samples[1].stem
    assert {h.label for h in grey} == {"grey"} and len(grey) == len(samples) // 2
    narrow = client.search(
        "filtered", query, k=20, label="colour", attributes={"set": "b"}, rerank="none"
    ).hits
    assert narrow and all(h.label == "colour" and h.attributes["set"] == "b" for h in narrow)
    assert client.search("filtered", query, label="nothing-has-this").hits == []


def test_collection_index_settings_round_trip(client, samples):
    info = client.create_collection(
        "tuned", default_rerank="geometric", index=IndexOverrides(exact_threshold=5000, reorder=300)
    )
    assert (info.exact_threshold, info.reorder, info.default_rerank) == (5000, 300, "geometric")
    client.ingest("tuned", [IngestItem("one", image=samples[0].read_bytes())])
    result = client.search("tuned", samples[0].read_bytes(), k=1)
    assert result.hits[0].id == "one" and result.hits[0].inliers > 0  # geometric by default
    with pytest.raises(InvalidArgumentError, match="leaves_to_search"):
        client.create_collection(
            "bad-index", index=IndexOverrides(num_leaves=4, leaves_to_search=8)
        )
