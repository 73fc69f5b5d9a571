"""Resharding on a real stack (Valkey, SeaweedFS S3, embedder, indexer processes, gateway):
searches keep seeing everything while ids move, deletes stay deleted, ids end up once."""

import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.common.errors import VisearchError
from services.common.sharding import shard_of
from tests.integration.test_shard_recovery import crops
from visearch import demo, localstack
from visearch.cli import app
from visearch.client import IngestItem, VisearchClient
from visearch.v1 import indexer_pb2, indexer_pb2_grpc

pytestmark = pytest.mark.integration
COLLECTION = "moving"


@pytest.fixture(scope="module")
def reshard_stack(tmp_path_factory, models_dir):
    """2 shards per new collection on 3 indexers; the job pauses between small pages so
    the reshard window lasts long enough for writes to land inside it."""
    state_dir = tmp_path_factory.mktemp("reshard-stack")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VISEARCH_RESHARD_PAGE_SIZE", "1")
        patch.setenv("VISEARCH_RESHARD_PAGE_PAUSE_S", "0.4")
        state = localstack.up(state_dir, shards=2, models_dir=models_dir, indexers=3, tls=True)
        try:
            with localstack.connect(state, timeout_s=120) as client:
                yield state, client
        finally:
            localstack.down(state_dir)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return crops(demo.write_samples(tmp_path_factory.mktemp("samples")), 40)


def placement(state_dir: str) -> Counter:
    """How many times each id of the collection is held, over every indexer (Indexer.Fetch)."""
    state = localstack.StackState.load(Path(state_dir))
    held: Counter = Counter()
    for process in state.processes:
        if not process.name.startswith("indexer-"):
            continue
        shard = int(process.name.split("-")[1])
        with localstack.grpc_channel(state, process.address) as channel:
            stub = indexer_pb2_grpc.IndexerStub(channel)
            token = ""
            while True:
                page = stub.Fetch(
                    indexer_pb2.FetchRequest(
                        collection=COLLECTION, page_token=token, limit=1000, ids_only=True
                    ),
                    timeout=30,
                )
                held.update((image_id, shard) for image_id in page.ids)
                token = page.next_page_token
                if not token:
                    break
    return held


def assert_exactly_once(state_dir: str, live: set[str], shards: int) -> None:
    held = placement(state_dir)
    ids = Counter(image_id for image_id, _ in held.elements())
    assert set(ids) == live, (sorted(set(ids) - live), sorted(live - set(ids)))
    assert all(count == 1 for count in ids.values()), [i for i, c in ids.items() if c > 1]
    assert all(shard == shard_of(image_id, shards) for image_id, shard in held)


def wait_done(client: VisearchClient, timeout_s: float = 300.0):
    deadline = time.monotonic() + timeout_s
    while True:
        status = client.reshard_status(COLLECTION)
        if not status.running and status.phase in ("done", "failed", "none"):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.2)


def test_reshard_while_searching_ingesting_and_deleting(reshard_stack, images):
    state, client = reshard_stack
    initial = {f"m-{i}": images[i] for i in range(30)}
    spare = {f"m-{i}": images[i] for i in range(30, 40)}
    client.ingest(COLLECTION, [IngestItem(i, image=data) for i, data in initial.items()])
    assert client.stats(COLLECTION).collection.shards == 2
    deleted = {"m-1", "m-2", "m-5", "m-8"}
    stable = set(initial) - deleted  # never touched during the reshard
    confirmed_gone: set[str] = set()
    errors: list[str] = []
    searches = {"n": 0}
    stop = threading.Event()

    def search_loop():
        probes = sorted(stable)
        while not stop.is_set():
            probe = probes[searches["n"] % len(probes)]
            try:
                hits = client.search(
                    COLLECTION, initial[probe], k=100, rerank="none", require_complete=True
                ).hits
            except VisearchError as exc:
                errors.append(f"search failed: {exc}")
                continue
            ids = [h.id for h in hits]
            if len(ids) != len(set(ids)):
                errors.append(f"duplicates: {sorted(i for i in ids if ids.count(i) > 1)}")
            if stable - set(ids):
                errors.append(f"missing: {sorted(stable - set(ids))}")
            if confirmed_gone & set(ids):
                errors.append(f"deleted came back: {sorted(confirmed_gone & set(ids))}")
            if hits[0].id != probe:
                errors.append(f"{probe} not first: {hits[0].id}")
            searches["n"] += 1

    searcher = threading.Thread(target=search_loop)
    searcher.start()
    try:
        status = client.reshard(COLLECTION, 3)
        assert status.to_shards == 3
        in_window = 0
        for image_id in sorted(deleted):
            client.delete(COLLECTION, [image_id])
            confirmed_gone.add(image_id)
            in_window += client.stats(COLLECTION).collection.target_shards == 3
        for image_id, data in spare.items():
            client.ingest(COLLECTION, [IngestItem(image_id, image=data)])
            in_window += client.stats(COLLECTION).collection.target_shards == 3
        status = wait_done(client)
    finally:
        stop.set()
        searcher.join()
    assert status.phase == "done" and status.error == "", status
    assert in_window >= 3, "too few writes landed inside the reshard window"
    assert searches["n"] >= 5 and not errors, errors[:5]
    live = set(initial) - deleted | set(spare)
    assert_exactly_once(state.state_dir, live, 3)
    stats = client.stats(COLLECTION)
    assert (stats.collection.shards, stats.collection.target_shards) == (3, 0)
    assert stats.images == len(live) == sum(s.size for s in stats.shards)
    for image_id in deleted:
        hits = client.search(COLLECTION, initial[image_id], k=100, rerank="none").hits
        assert image_id not in {h.id for h in hits}
    assert client.get(COLLECTION, "m-0").shard == shard_of("m-0", 3)


def test_reshard_onto_new_local_indexers_and_back_down(reshard_stack, images):
    state, client = reshard_stack
    if client.stats(COLLECTION).images == 0:
        pytest.skip("needs the collection of the previous test")
    live = {h.id for h in client.search(COLLECTION, images[0], k=100, rerank="none").hits}
    with pytest.raises(VisearchError, match="reshard needs 4 indexers; the cluster has 3"):
        client.reshard(COLLECTION, 4)
    # The command starts the 4th indexer and restarts the gateway with it, then reshards.
    args = ["reshard", "-c", COLLECTION, "--shards", "4", "--state-dir", state.state_dir]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "3 -> 4 shards moved" in result.output
    assert localstack.StackState.load(Path(state.state_dir)).indexers == 4
    assert wait_done(client).phase == "done"
    assert_exactly_once(state.state_dir, live, 4)
    client.reshard(COLLECTION, 2)
    status = wait_done(client)
    assert status.phase == "done" and status.from_shards == 4, status
    assert_exactly_once(state.state_dir, live, 2)
    hits = client.search(COLLECTION, images[0], k=100, rerank="none", require_complete=True).hits
    assert {h.id for h in hits} == live
    # New collections still get the stack's default shard count.
    client.ingest("fresh", [IngestItem("f-0", image=images[0])], create_collection=True)
    assert client.stats("fresh").collection.shards == 2
