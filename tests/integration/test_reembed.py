"""Model lifecycle on the real stack: several versions in the embedder, re-embed with
searches and writes running throughout, kill -9 of the gateway mid-job and resume."""

import os
import signal
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis

from services.common.errors import (
    FailedPreconditionError,
    NotFoundError,
    UnavailableError,
    VisearchError,
)
from services.common.model_registry import publish
from services.common.objectstore import S3ObjectStore
from services.common.proto_convert import vectors_from_proto
from tests.integration.conftest import DATASETS
from tests.integration.test_shard_recovery import wait_until_all_shards_answer
from tests.variant_model import build_variant
from visearch import localstack
from visearch.client import IngestItem
from visearch.v1 import embedder_pb2, embedder_pb2_grpc, indexer_pb2, indexer_pb2_grpc

pytestmark = pytest.mark.integration
COLLECTION = "lifecycle"
GALLERY = 24
LATE = 4


@pytest.fixture(scope="module")
def versions(stack, tmp_path_factory):
    """Two test versions (tiny 64-d ONNX graphs) published to the stack's registry."""
    pytest.importorskip("onnx")
    store = S3ObjectStore(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key)
    root = tmp_path_factory.mktemp("variants")
    for version, seed in (("variant-a", 1), ("variant-b", 2)):
        publish(store, "models", build_variant(root, version, dims=64, seed=seed))
    return stack.model_version, "variant-a", "variant-b"


@pytest.fixture(scope="module")
def images():
    paths = sorted((DATASETS / "ukbench1000" / "images").glob("*.jpg"))[: GALLERY + LATE]
    return {f"u-{path.stem}": path.read_bytes() for path in paths}


@pytest.fixture(scope="module")
def gallery(client, images):
    """The first GALLERY images ingested (default version); the rest are ingested later."""
    ids = list(images)[:GALLERY]
    for start in range(0, GALLERY, 8):
        batch = ids[start : start + 8]
        client.ingest(
            COLLECTION, [IngestItem(i, image=images[i]) for i in batch], create_collection=True
        )
    return ids


def process(stack, name):
    state = localstack.StackState.load(Path(stack.state_dir))
    return next(p for p in state.processes if p.name == name)


def embedder_stub(stack):
    channel = localstack.grpc_channel(stack, process(stack, "embedder").address)
    return channel, embedder_pb2_grpc.EmbedderStub(channel)


def embed(stack, images: list[bytes], version: str) -> np.ndarray:
    channel, stub = embedder_stub(stack)
    with channel:
        response = stub.EmbedGlobal(
            embedder_pb2.EmbedGlobalRequest(images=images, model_version=version), timeout=120
        )
    assert response.model_version == version or not version
    return vectors_from_proto(response.embeddings)


def embedded_by_version(stack) -> dict[str, int]:
    channel, stub = embedder_stub(stack)
    with channel:
        return dict(stub.Stats(embedder_pb2.EmbedderStatsRequest(), timeout=30).images_by_version)


def shard_namespaces(stack) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for i in range(stack.shards):
        with localstack.grpc_channel(stack, process(stack, f"indexer-{i}").address) as channel:
            stats = indexer_pb2_grpc.IndexerStub(channel).Stats(
                indexer_pb2.IndexStatsRequest(), timeout=30
            )
        for entry in stats.collections:
            if entry.collection.split("@")[0] == COLLECTION:
                sizes[entry.collection] = sizes.get(entry.collection, 0) + entry.size
    return sizes


def test_embedder_serves_versions_on_demand_and_refuses_unknown_ones(stack, versions):
    default, variant_a, _ = versions
    (image,) = [(DATASETS / "ukbench1000" / "images" / "ukbench00000.jpg").read_bytes()]
    assert embed(stack, [image], variant_a).shape == (1, 64)
    assert embed(stack, [image], "").shape[1] == embed(stack, [image], default).shape[1]
    channel, stub = embedder_stub(stack)
    with channel:
        with pytest.raises(grpc.RpcError) as info:
            stub.EmbedGlobal(
                embedder_pb2.EmbedGlobalRequest(images=[image], model_version="no-such-v"),
                timeout=30,
            )
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert "not in the registry" in info.value.details()
        loaded = stub.Stats(embedder_pb2.EmbedderStatsRequest(), timeout=30).loaded_versions
    assert loaded[0] == default and variant_a in loaded


def test_reembed_switches_with_searches_and_writes_running(
    stack, client, versions, images, gallery
):
    default, variant_a, _ = versions
    ids = list(images)
    late = ids[GALLERY:]
    assert client.stats(COLLECTION).collection.generation == 0
    expected = {
        version: dict(zip(ids, embed(stack, [images[i] for i in ids], version), strict=True))
        for version in (default, variant_a)
    }
    responses: list[tuple[str, str, list[tuple[str, float]]]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def search_loop() -> None:
        position = 0
        while not stop.is_set():
            query = gallery[position % GALLERY]
            position += 1
            try:
                result = client.search(COLLECTION, images[query], k=5, rerank="none")
                responses.append(
                    (result.model_version, query, [(h.id, h.score) for h in result.hits])
                )
            except BaseException as exc:  # noqa: BLE001 - asserted below
                errors.append(exc)

    searcher = threading.Thread(target=search_loop)
    searcher.start()
    phases = []
    try:
        for progress in client.reembed(
            COLLECTION, variant_a, batch_size=4, max_images_per_second=4, drop_grace_s=3.0
        ):
            phases.append(progress.phase)
            if phases.count("embedding") == 1:  # mid-job: new ids, and a delete
                client.ingest(COLLECTION, [IngestItem(i, image=images[i]) for i in late])
                client.delete(COLLECTION, [gallery[0]])
        time.sleep(1.0)  # searches after the switch too
    finally:
        stop.set()
        searcher.join()
    assert phases[0] == "started" and phases[-2:] == ["switched", "done"]
    assert not errors, errors[:3]
    seen = {version for version, _, _ in responses}
    assert seen == {default, variant_a}, seen
    for version, query, hits in responses:
        vectors = expected[version]
        assert hits, (version, query)
        for hit_id, score in hits:  # every score is this version's, in this version's index
            assert score == pytest.approx(float(vectors[query] @ vectors[hit_id]), abs=2e-3)
    info = client.stats(COLLECTION).collection
    assert (info.model_version, info.generation, info.pending_model_version) == (
        variant_a,
        1,
        "",
    )
    assert shard_namespaces(stack) == {f"{COLLECTION}@1": GALLERY + LATE - 1}
    for image_id in late:
        top = client.search(COLLECTION, images[image_id], k=1, rerank="none").hits[0]
        assert top.id == image_id and top.score == pytest.approx(1.0, abs=1e-4)
    hits = client.search(COLLECTION, images[gallery[0]], k=20, rerank="none").hits
    assert gallery[0] not in {h.id for h in hits}


def test_a_killed_reembed_resumes_without_redoing_batches(stack, client, versions, images, gallery):
    _, _, variant_b = versions
    before = client.stats(COLLECTION)
    total = before.images
    gateway = process(stack, "gateway")
    progress_seen: list = []
    failures: list[BaseException] = []

    def run_job() -> None:
        try:
            for progress in client.reembed(
                COLLECTION, variant_b, batch_size=3, max_images_per_second=3, drop_grace_s=0.5
            ):
                progress_seen.append(progress)
        except VisearchError as exc:
            failures.append(exc)

    job = threading.Thread(target=run_job)
    job.start()
    deadline = time.monotonic() + 120
    while not progress_seen or progress_seen[-1].batches_done < 3:
        assert time.monotonic() < deadline and job.is_alive(), (progress_seen, failures)
        time.sleep(0.05)
    os.kill(gateway.pid, signal.SIGKILL)
    job.join(timeout=60)
    assert failures and progress_seen[-1].phase == "embedding"
    checkpoint = redis.Redis.from_url(stack.redis_url)
    done_at_kill = checkpoint.scard(f"reembed:{COLLECTION}:done")
    assert done_at_kill >= 3
    localstack.restart(Path(stack.state_dir), "gateway")
    deadline = time.monotonic() + 60
    while True:  # the dead job's lease expires within VISEARCH_REEMBED_LEASE_S
        try:
            resumed = list(client.reembed(COLLECTION, variant_b, batch_size=3, drop_grace_s=0.5))
            break
        except (FailedPreconditionError, UnavailableError) as exc:
            assert time.monotonic() < deadline, exc
            time.sleep(1.0)
    assert resumed[0].phase == "resumed" and resumed[0].batches_skipped == done_at_kill
    assert resumed[-1].phase == "done"
    embedded = embedded_by_version(stack)[variant_b]
    # Every id once, plus the probe, plus at most the one batch in flight at the kill.
    assert total + 1 <= embedded <= total + 1 + 3, (embedded, total)
    info = client.stats(COLLECTION).collection
    generation = before.collection.generation + 1
    assert (info.model_version, info.generation) == (variant_b, generation)
    assert shard_namespaces(stack) == {f"{COLLECTION}@{generation}": total}
    # The drop is durable: a restarted shard does not bring the old generation back.
    localstack.restart(Path(stack.state_dir), "indexer-0")
    assert set(shard_namespaces(stack)) == {f"{COLLECTION}@{generation}"}
    wait_until_all_shards_answer(client, COLLECTION)
    some_id = gallery[-1]
    hits = client.search(
        COLLECTION, images[some_id], k=1, rerank="none", require_complete=True
    ).hits
    assert hits and hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_a_reembed_to_an_unknown_version_changes_nothing(client, versions, gallery):
    before = client.stats(COLLECTION).collection
    with pytest.raises(NotFoundError):
        list(client.reembed(COLLECTION, "no-such-version"))
    assert client.stats(COLLECTION).collection == before


def test_the_cli_switches_back_to_the_default_version(stack, client, versions, gallery):
    from typer.testing import CliRunner

    from visearch.cli import app

    default, variant_a, _ = versions
    if client.stats(COLLECTION).collection.model_version == default:  # run on its own
        list(client.reembed(COLLECTION, variant_a, drop_grace_s=0.5))
    before = client.stats(COLLECTION).collection
    result = CliRunner().invoke(
        app,
        ["reembed", "-c", COLLECTION, "--model", default, "--gateway", stack.gateway]
        + ["--state-dir", stack.state_dir]
        + ["--drop-grace", "0.5", "--batch-size", "8"],
    )
    assert result.exit_code == 0, result.output
    assert f"now uses {default}" in result.output
    info = client.stats(COLLECTION).collection
    assert (info.model_version, info.generation) == (default, before.generation + 1)
    assert set(shard_namespaces(stack)) == {f"{COLLECTION}@{info.generation}"}
