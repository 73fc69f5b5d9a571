"""The Redis metadata store on a real Valkey server."""

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

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
