"""A real local stack (Valkey, SeaweedFS S3, embedder, 2 shards, verifier, gateway) per session."""

from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from services.common.objectstore import S3ObjectStore
from services.indexer.core import Shard
from services.indexer.durability import ObjectSnapshotStore, RedisWriteAheadLog
from visearch import localstack
from visearch.client import VisearchClient

ROOT = Path(__file__).resolve().parents[2]
DATASETS = ROOT.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def stack(tmp_path_factory, models_dir):
    state_dir = tmp_path_factory.mktemp("stack")
    state = localstack.up(state_dir, shards=2, models_dir=models_dir)
    yield state
    localstack.down(state_dir)


@pytest.fixture(scope="session")
def client(stack):
    with VisearchClient(stack.gateway, timeout_s=120) as c:
        yield c


@pytest.fixture
def durable_shard(storage) -> Callable[[int], Shard]:
    """Makes shard ``shard_id`` (threshold 1,000) with its WAL in the real Valkey and its
    snapshots in the real S3 of ``storage``; a second call with the same id recovers it."""
    redis_url, s3_endpoint = storage
    client = redis.Redis.from_url(redis_url)
    store = S3ObjectStore(s3_endpoint, localstack.S3_ACCESS_KEY, localstack.S3_SECRET_KEY)

    def make(shard_id: int) -> Shard:
        return Shard(
            shard_id,
            1000,
            RedisWriteAheadLog(client, shard_id),
            ObjectSnapshotStore(store, "snapshots", client, shard_id),
        )

    return make
