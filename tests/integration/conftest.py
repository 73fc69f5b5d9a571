"""A real local stack (Valkey, SeaweedFS S3, embedder, 2 shards, verifier, gateway) per session."""

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from services.common.api_keys import generate_key
from services.common.objectstore import S3ObjectStore
from services.indexer.core import Shard
from services.indexer.durability import ObjectSnapshotStore, RedisWriteAheadLog
from visearch import localstack

ROOT = Path(__file__).resolve().parents[2]
# Every stack these tests start registers this admin key (its gateway requires API keys),
# and every client sends it, unless the caller's environment names one.
os.environ.setdefault("VISEARCH_BOOTSTRAP_API_KEY", generate_key())
os.environ.setdefault("VISEARCH_API_KEY", os.environ["VISEARCH_BOOTSTRAP_API_KEY"])
DATASETS = ROOT.parent / "shared" / "datasets"
# Deleted images are erased within seconds in test stacks (services/gateway/janitor.py).
os.environ.setdefault("VISEARCH_ERASE_AFTER_S", "1")
os.environ.setdefault("VISEARCH_ERASE_INTERVAL_S", "0.5")


@pytest.fixture(scope="session")
def stack(tmp_path_factory, models_dir):
    state_dir = tmp_path_factory.mktemp("stack")
    # TLS on every hop, mutual TLS inside (VISEARCH_TEST_TLS=0: plaintext).
    tls = os.environ.get("VISEARCH_TEST_TLS", "1") != "0"
    state = localstack.up(state_dir, shards=2, models_dir=models_dir, tls=tls)
    yield state
    localstack.down(state_dir)


@pytest.fixture(scope="session")
def client(stack):
    with localstack.connect(stack, timeout_s=120) as c:
        yield c


@pytest.fixture
def durable_shard(storage) -> Callable[[int], Shard]:
    """Makes shard ``shard_id`` (threshold 1,000) with its WAL in the real Valkey and its
    snapshots in the real S3 of ``storage``; a second call with the same id recovers it."""
    redis_url, s3_endpoint = storage
    client = redis.Redis.from_url(redis_url)
    store = S3ObjectStore(s3_endpoint, storage.s3_access_key, storage.s3_secret_key)

    def make(shard_id: int) -> Shard:
        return Shard(
            shard_id,
            1000,
            RedisWriteAheadLog(client, shard_id),
            ObjectSnapshotStore(store, "snapshots", client, shard_id),
        )

    return make
