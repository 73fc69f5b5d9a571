"""Reshard state on real Valkey and S3: the config compare-and-set, the job's record and
lock, and shard tombstones through the Redis WAL and an S3 snapshot."""

import time
import uuid
from dataclasses import replace

import numpy as np
import pytest

from services.common.metadata import CollectionConfig, RedisMetadataStore
from services.gateway.reshard_store import PHASE_COPYING, RedisReshardStore, ReshardRecord

pytestmark = pytest.mark.integration


def test_collection_compare_and_set(storage):
    redis_url, _ = storage
    metadata = RedisMetadataStore(redis_url)
    name = f"cas-{uuid.uuid4().hex[:8]}"
    config = CollectionConfig(name, "m1", 2, "none", "rootsift", 50, 0.0)
    assert metadata.create_collection(config)
    window = replace(config, target_shards=3)
    assert metadata.update_collection(config, window)
    assert not metadata.update_collection(config, replace(config, target_shards=4))  # stale
    assert metadata.get_collection(name) == window
    assert metadata.update_collection(window, replace(window, shards=3, target_shards=0))
    assert metadata.get_collection(name).shards == 3


def test_record_and_lock(storage):
    redis_url, _ = storage
    store = RedisReshardStore(redis_url)
    name = f"lock-{uuid.uuid4().hex[:8]}"
    record = ReshardRecord(name, 2, 3, PHASE_COPYING, total=10, cursors={"0": "abc:5:5"})
    store.save(record)
    loaded = store.load(name)
    assert loaded.cursors == {"0": "abc:5:5"} and loaded.updated_at > 0
    assert store.lease.acquire(name, "a", ttl_s=0.5) == 0.0
    assert store.lease.acquire(name, "b", ttl_s=0.5) > 0.0
    assert store.lease.renew(name, "a", ttl_s=0.5) and not store.lease.renew(name, "b", ttl_s=0.5)
    assert store.lease.holder(name) == "a"
    time.sleep(0.7)  # a crashed holder's lock expires
    assert store.lease.holder(name) is None
    assert store.lease.acquire(name, "b", ttl_s=5) == 0.0
    store.lease.release(name, "a")  # not the holder: no effect
    assert store.lease.holder(name) == "b"
    store.lease.release(name, "b")
    assert store.lease.holder(name) is None


def test_tombstones_survive_a_restart_through_redis_and_s3(durable_shard):
    shard_id = int(uuid.uuid4().int % 1000) + 2000

    def make_shard():
        return durable_shard(shard_id)

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((4, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    shard = make_shard()
    shard.delete("t", ["before-any-vector"], tombstone=True)
    shard.upsert("t", ["a"], vectors[:1])
    shard.delete("t", ["in-snapshot"], tombstone=True)
    shard.snapshot("t")
    shard.delete("t", ["after-snapshot"], tombstone=True)
    restarted = make_shard()
    restarted.recover()
    assert restarted.tombstones("t") == 3
    ids = ["before-any-vector", "in-snapshot", "after-snapshot", "b"]
    restarted.set_copy_fence("t", "job")
    assert restarted.upsert_if_absent("t", ids, vectors, fence="job")[0] == 1
    assert sorted(restarted.fetch("t", ids_only=True).ids) == ["a", "b"]
