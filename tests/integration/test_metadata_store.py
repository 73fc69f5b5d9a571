"""The Redis metadata store on a real Valkey server."""

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.common.errors import UnavailableError
from services.common.metadata import CollectionConfig, ImageMeta, RedisMetadataStore

pytestmark = pytest.mark.integration


def config(name: str) -> CollectionConfig:
    return CollectionConfig(name, "model-v1", 2, "none", "rootsift", 50, time.time())


def test_concurrent_creates_make_exactly_one_collection(storage):
    store = RedisMetadataStore(storage[0])
    name = f"c-{uuid.uuid4().hex[:8]}"
    with ThreadPoolExecutor(8) as pool:
        created = list(pool.map(lambda _: store.create_collection(config(name)), range(16)))
        seen = list(pool.map(lambda _: store.get_collection(name), range(16)))
    assert created.count(True) == 1
    assert all(s is not None and s.name == name and s.shards == 2 for s in seen)
    assert store.get_collection("missing-" + name) is None


def test_images_put_replace_get_delete_count(storage):
    store = RedisMetadataStore(storage[0])
    name = f"c-{uuid.uuid4().hex[:8]}"
    meta = ImageMeta("a", "f" * 64, "lbl", "model-v1", 1, 1.5, {"colour": "red"})
    assert store.put_image(name, meta) is False
    assert store.put_image(name, ImageMeta("a", "e" * 64, "other", "model-v1", 1, 2.0)) is True
    got, missing = store.get_images(name, ["a", "b"])
    assert missing is None
    assert got.sha256 == "e" * 64 and got.label == "other" and got.attributes == {}
    assert store.count_images(name) == 1
    assert store.delete_image(name, "a") is True
    assert store.delete_image(name, "a") is False
    assert store.count_images(name) == 0


def test_records_from_before_texture_opt_in_read_as_texture_on(storage):
    """Collections created while every ingest stored LBP histograms keep texture search."""
    import json
    from dataclasses import asdict, replace

    import redis

    store = RedisMetadataStore(storage[0])
    legacy = f"c-{uuid.uuid4().hex[:8]}"
    fields = asdict(config(legacy))
    del fields["texture_features"]
    redis.Redis.from_url(storage[0]).set(f"col:{legacy}", json.dumps(fields))
    old = store.get_collection(legacy)
    assert old is not None and old.texture_features is True
    assert store.update_collection(old, replace(old, shards=3))  # compare-and-set still matches

    fresh = f"c-{uuid.uuid4().hex[:8]}"
    assert store.create_collection(config(fresh))
    assert store.get_collection(fresh).texture_features is False


def test_references_and_erasure_ledger_on_valkey(storage):
    import redis

    from services.common.blob_ledger import RedisBlobLedger

    store = RedisMetadataStore(storage[0])
    ledger = RedisBlobLedger(redis.Redis.from_url(storage[0], decode_responses=True))
    name, other = f"c-{uuid.uuid4().hex[:8]}", f"d-{uuid.uuid4().hex[:8]}"
    sha_a, sha_b = uuid.uuid4().hex * 2, uuid.uuid4().hex * 2
    store.create_collection(config(name))
    assert name in store.list_collections()
    ledger.pin({sha_a: [f"images/{sha_a}", f"features/rootsift/{sha_a}.npz"]}, ttl_s=30)
    metas = [ImageMeta(i, sha_a, "", "model-v1", 0, 1.0) for i in ("x", "y")]
    assert store.put_images(name, metas) == [False, False]
    ledger.unpin([sha_a])
    assert ledger.referenced_by(name, sha_a) and not ledger.referenced_by(other, sha_a)
    assert ledger.begin_erase(sha_a, 30) is None  # referenced: leaves the queue
    assert sha_a not in ledger.due(time.time() + 1, 10_000)
    store.put_image(name, ImageMeta("x", sha_b, "", "model-v1", 0, 1.0))  # replaced
    store.delete_image(name, "y")
    assert sha_a in ledger.due(time.time() + 1, 10_000)
    ledger.pin({sha_a: []}, ttl_s=30)  # an ingest of the same bytes in flight
    assert ledger.begin_erase(sha_a, 30) is None
    ledger.unpin([sha_a])
    keys = ledger.begin_erase(sha_a, 30)
    assert sorted(keys) == [f"features/rootsift/{sha_a}.npz", f"images/{sha_a}"]
    with pytest.raises(UnavailableError, match="being erased"):  # excluded while erasing
        ledger.pin({sha_a: []}, ttl_s=30)
    ledger.end_erase(sha_a)
    assert sha_a not in ledger.due(time.time() + 1, 10_000)
    ledger.pin({sha_a: []}, ttl_s=30)  # free again
