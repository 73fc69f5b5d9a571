"""Shard durability on real Redis (Valkey) and a real S3 server, and kill -9 of a shard process."""

import io
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image

from services.common.errors import VisearchError
from services.common.index_types import IndexOverrides, ItemMeta, SearchFilter
from services.common.metadata import ImageMeta, RedisMetadataStore
from services.common.objectstore import S3ObjectStore
from services.common.proto_convert import vector_from_proto, vectors_to_proto
from services.common.sharding import shard_of
from services.indexer.core import Shard
from services.indexer.durability import ObjectSnapshotStore, RedisWriteAheadLog
from services.indexer.vector_index import MIN_SCANN_VECTORS
from tests.unit.test_searcher_snapshot import assert_same_results, scann_shard, vectors_of
from tests.unit.test_shard_durability import assert_same_answers, run_workload, unit
from visearch import demo, localstack
from visearch.client import IngestItem
from visearch.v1 import indexer_pb2, indexer_pb2_grpc

pytestmark = pytest.mark.integration


def test_recovery_on_real_redis_and_s3(durable_shard):
    shard_id = int(uuid.uuid4().int % 1000) + 100

    def make_shard():
        return durable_shard(shard_id)

    rng = np.random.default_rng(2)
    original = make_shard()
    alive = run_workload(original, rng, rounds=12, snapshot_at=(5,))
    # Metadata and index settings, in the snapshot and in the log after it.
    original.upsert("a", ["m1"], unit(rng, 1), [ItemMeta("tagged", {"k": "v"})])
    original.snapshot("a")
    original.upsert(
        "a", ["m2"], unit(rng, 1), [ItemMeta("tagged")], IndexOverrides(exact_threshold=77)
    )
    alive["a"]["m1"] = alive["a"]["m2"] = None
    restarted = make_shard()
    report = restarted.recover()
    assert report.from_snapshots == 2
    assert_same_answers(restarted, original, alive, rng)
    tagged, _ = restarted.search("a", unit(rng, 1), 10, SearchFilter("tagged"))
    assert sorted(n.id for n in tagged[0]) == ["m1", "m2"]
    assert [
        n.id for n in restarted.search("a", unit(rng, 1), 10, SearchFilter("", {"k": "v"}))[0][0]
    ] == ["m1"]
    assert restarted.stats("a")[0].size == original.stats("a")[0].size
    assert restarted._collections["a"].index.exact_threshold == 77


def test_only_the_newest_two_snapshots_are_kept(durable_shard, storage):
    """Each snapshot deletes the folders older than the previous one; recovery is unchanged."""
    _, s3_endpoint = storage
    store = S3ObjectStore(s3_endpoint, storage.s3_access_key, storage.s3_secret_key)
    shard_id = int(uuid.uuid4().int % 1000) + 2100
    shard = durable_shard(shard_id)
    rng = np.random.default_rng(4)
    seqs = []
    for round_ in range(4):
        shard.upsert("a", [f"v{round_}"], unit(rng, 1))
        seqs.append(shard.snapshot("a"))
    prefix = f"snapshots/a/{shard_id}/"
    folders = {key[len(prefix) :].split("/")[0] for key in store.list(prefix)}
    assert folders == set(seqs[-2:])
    restarted = durable_shard(shard_id)
    assert restarted.recover().from_snapshots == 1
    found, _ = restarted.search("a", unit(rng, 1), 10)
    assert sorted(hit.id for hit in found[0]) == [f"v{i}" for i in range(4)]


def test_scann_searcher_snapshot_on_real_redis_and_s3(storage):
    """The serialized searcher round-trips through S3; a damaged object costs a rebuild."""
    redis_url, s3_endpoint = storage
    client = redis.Redis.from_url(redis_url)
    store = S3ObjectStore(s3_endpoint, storage.s3_access_key, storage.s3_secret_key)
    shard_id = int(uuid.uuid4().int % 1000) + 1100
    wal = RedisWriteAheadLog(client, shard_id)
    snaps = ObjectSnapshotStore(store, "snapshots", client, shard_id)
    rng = np.random.default_rng(3)
    original = scann_shard(wal, snaps, rng)
    prefix = f"snapshots/c/{shard_id}/"
    assert any("/scann/scann_assets.pbtxt" in key for key in store.list(prefix))

    restarted = Shard(0, MIN_SCANN_VECTORS, wal, snaps)
    restarted.recover()
    index = restarted._collections["c"].index
    assert index.method == "scann" and index.rebuilds == 0 and not index.rebuilding
    assert_same_results(restarted, original, unit(rng, 20, 16))

    dataset = next(key for key in store.list(prefix) if key.endswith("/scann/int8_dataset.npy"))
    store.put(dataset, b"damaged")
    rebuilt = Shard(0, MIN_SCANN_VECTORS, wal, snaps)
    rebuilt.recover()
    index = rebuilt._collections["c"].index
    index.wait_for_build()
    assert index.rebuilds == 1 and index.method == "scann"
    ids = ["v100", "fresh9", "late2"]
    found, _ = rebuilt.search("c", vectors_of(original, ids), 1)
    assert [r[0].id for r in found] == ids
    snaps.drop("c")
    wal.drop("c")
    assert not list(store.list(prefix))


def crops(samples: list[Path], count: int) -> list[bytes]:
    """Distinct JPEGs: sample photos cut at different offsets."""
    out = []
    for i in range(count):
        rgb = np.asarray(Image.open(samples[i % len(samples)]).convert("RGB"))
        off = 4 * (i // len(samples))
        buffer = io.BytesIO()
        Image.fromarray(rgb[off : rgb.shape[0] - off, off:]).save(buffer, format="JPEG")
        out.append(buffer.getvalue())
    return out


def wait_until_all_shards_answer(client, collection: str, timeout_s: float = 30.0) -> None:
    """The gateway reconnects to a restarted shard within its reconnect backoff."""
    deadline = time.monotonic() + timeout_s
    while not all(s.available for s in client.stats(collection).shards):
        assert time.monotonic() < deadline, "a restarted shard is still unreachable"
        time.sleep(0.2)


def test_kill_9_of_a_shard_loses_nothing_acknowledged(client, stack, tmp_path):
    images = crops(demo.write_samples(tmp_path / "samples"), 37)
    extra_image = images.pop()
    acknowledged: dict[str, bytes] = {}
    deleted: set[str] = set()
    killed = threading.Event()
    # Earlier tests in the session may have restarted indexer-0: read its current pid.
    current = localstack.StackState.load(Path(stack.state_dir))
    shard = next(p for p in current.processes if p.name == "indexer-0")

    def ingest_stream():
        for i, data in enumerate(images):
            image_id = f"k-{i}"
            try:
                client.ingest("durable", [IngestItem(image_id, image=data)], timeout_s=20)
                acknowledged[image_id] = data
            except VisearchError:
                pass  # not acknowledged: the shard was down
            if i % 5 == 4 and acknowledged:
                victim = sorted(acknowledged)[0]
                acknowledged.pop(victim)
                try:
                    client.delete("durable", [victim], timeout_s=20)
                    deleted.add(victim)
                except VisearchError:
                    pass  # outcome unknown: asserted neither way
            if i == 12:
                os.kill(shard.pid, signal.SIGKILL)
                killed.set()
            if i == 20:
                localstack.restart(Path(stack.state_dir), "indexer-0")

    ingest_stream()
    assert killed.is_set()
    wait_until_all_shards_answer(client, "durable")
    for image_id, data in acknowledged.items():
        hits = client.search("durable", data, k=3, rerank="none", require_complete=True).hits
        assert hits and hits[0].id == image_id and hits[0].score > 0.999, image_id
    for image_id in deleted:
        query = images[int(image_id.split("-")[1])]
        hits = client.search("durable", query, k=10, rerank="none").hits
        assert image_id not in {h.id for h in hits}
    # Snapshot the shard, then kill it again: snapshot + log replay keeps everything.
    restarted = localstack.StackState.load(Path(stack.state_dir))
    address = next(p.address for p in restarted.processes if p.name == "indexer-0")
    with localstack.grpc_channel(restarted, address) as channel:
        covered = indexer_pb2_grpc.IndexerStub(channel).Snapshot(indexer_pb2.SnapshotRequest())
    assert "durable" in covered.covered_seq
    client.ingest("durable", [IngestItem("after-snapshot", image=extra_image)])
    os.kill(next(p.pid for p in restarted.processes if p.name == "indexer-0"), signal.SIGKILL)
    localstack.restart(Path(stack.state_dir), "indexer-0")
    wait_until_all_shards_answer(client, "durable")
    acknowledged["after-snapshot"] = extra_image
    for image_id, data in acknowledged.items():
        assert client.search("durable", data, k=1, rerank="none").hits[0].id == image_id


RECOVERY_VECTORS = 50_000


def test_a_recovering_shard_is_missing_never_silently_short(client, stack, tmp_path):
    """A shard with 50k vectors is killed and restarted while searches run: every answer is
    the full answer or says partial, naming that shard (never a short answer from a shard
    that is still replaying its log)."""
    state = localstack.StackState.load(Path(stack.state_dir))
    (query,) = crops(demo.write_samples(tmp_path / "samples"), 1)
    client.ingest("recovering", [IngestItem("seed", image=query)])
    address = next(p.address for p in state.processes if p.name == "indexer-0")
    rng = np.random.default_rng(5)
    ids = [f"r-{i}" for i in range(RECOVERY_VECTORS * 3) if shard_of(f"r-{i}", 2) == 0]
    ids = ids[:RECOVERY_VECTORS]
    metadata = RedisMetadataStore(stack.redis_url)
    with localstack.grpc_channel(state, address) as channel:
        stub = indexer_pb2_grpc.IndexerStub(channel)
        page = stub.Fetch(indexer_pb2.FetchRequest(collection="recovering", limit=10))
        dims = len(vector_from_proto(page.vectors[0])) if page.vectors else None
        if dims is None:  # the seed went to shard 1
            other = next(p.address for p in state.processes if p.name == "indexer-1")
            with localstack.grpc_channel(state, other) as channel_1:
                page = indexer_pb2_grpc.IndexerStub(channel_1).Fetch(
                    indexer_pb2.FetchRequest(collection="recovering", limit=10)
                )
            dims = len(vector_from_proto(page.vectors[0]))
        for start in range(0, len(ids), 2000):
            chunk = ids[start : start + 2000]
            vectors = unit(rng, len(chunk), dims)
            stub.Upsert(
                indexer_pb2.UpsertRequest(
                    collection="recovering", ids=chunk, vectors=vectors_to_proto(vectors)
                ),
                timeout=120,
            )
            metadata.put_images(
                "recovering",
                [ImageMeta(i, "0" * 64, "", state.model_version, 0, 0.0) for i in chunk],
            )
    reference = client.search("recovering", query, k=10, rerank="none", require_complete=True)
    expected = [h.id for h in reference.hits]
    assert len(expected) == 10
    answers: list[tuple[bool, list[int], list[str]]] = []
    stop = threading.Event()

    def searcher():
        while not stop.is_set():
            try:
                found = client.search("recovering", query, k=10, rerank="none", timeout_s=10)
            except VisearchError:
                continue
            answers.append((found.partial, found.missing_shards, [h.id for h in found.hits]))

    thread = threading.Thread(target=searcher)
    thread.start()
    try:
        time.sleep(1.0)
        shard = next(p for p in state.processes if p.name == "indexer-0")
        os.kill(shard.pid, signal.SIGKILL)
        localstack.restart(Path(stack.state_dir), "indexer-0", only_if_dead=True)
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join()
    partial = [a for a in answers if a[0]]
    complete = [a for a in answers if not a[0]]
    assert partial and complete, (len(partial), len(complete))
    assert all(missing == [0] for _, missing, _ in partial)
    assert all(hits == expected for _, _, hits in complete), "a complete answer was short"
