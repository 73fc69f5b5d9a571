"""Metadata in Redis/Valkey (and in memory, for unit tests of cores).

Keys: `col:<collection>` JSON string (collection config, created atomically
with SET NX), `img:<collection>:<id>`
hash (one image), `ids:<collection>` set (ids, for counting and listing), and in the same
transactions the image bytes each id references (`blobrefs:<sha256>`, erase queue:
services/common/blob_ledger.py).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Protocol

import redis

from services.common.blob_ledger import (
    ERASE_QUEUE_KEY,
    InMemoryBlobLedger,
    ref_member,
    refs_key,
)
from services.common.errors import UnavailableError
from services.common.index_types import IndexOverrides


@dataclass(frozen=True)
class CollectionConfig:
    name: str
    model_version: str
    shards: int
    default_rerank: str  # "none" | "geometric"
    local_feature_type: str
    rerank_depth: int
    created_at: float
    # Index settings sent to the shards; 0 = chosen from each shard's size.
    exact_threshold: int = 0
    num_leaves: int = 0
    leaves_to_search: int = 0
    reorder: int = 0
    # > 0 while a reshard to this many shards runs (services/gateway/layout.py).
    target_shards: int = 0
    # Model lifecycle (services/gateway/reembed.py): the shards hold the vectors under
    # `index_name` (the name, or name@generation after a re-embed). While a re-embed runs,
    # writes also go to the pending generation, embedded with the pending version.
    generation: int = 0
    pending_model_version: str = ""
    pending_generation: int = 0
    # LBP texture histograms stored at ingest (RERANK_MODE_TEXTURE needs them).
    texture_features: bool = False
    # Query expansion when a search sets none (services/gateway/query_expansion.py):
    # alpha-QE over the best qe_top_n results (0 = off), and spatially verified QE.
    qe_top_n: int = 0
    qe_alpha: float = 3.0
    qe_verified: bool = False
    # Database-side augmentation (services/gateway/dba.py): searches use the augmented copy
    # `<index_name>~<dba_pass>` of the current generation once a pass completed (0 = none);
    # while a pass builds `~<dba_pending_pass>`, writes reach it too. dba_top_n 0 = off.
    dba_top_n: int = 0
    dba_alpha: float = 3.0
    dba_pass: int = 0
    dba_pending_pass: int = 0
    dba_last_pass: int = 0  # passes ever started: the next one is numbered above it
    dba_dropped_through: int = 0  # every copy numbered up to this one is dropped
    # Views only (never stored non-zero): the DBA copy a view names (index_name gets ~N).
    view_dba_pass: int = 0

    def index_overrides(self) -> IndexOverrides:
        """The index settings sent to the shards with every upsert."""
        return IndexOverrides(
            self.exact_threshold, self.num_leaves, self.leaves_to_search, self.reorder
        )

    @property
    def index_name(self) -> str:
        """The collection's namespace on the indexer shards (a DBA view: its copy's)."""
        return dba_index_name(index_name(self.name, self.generation), self.view_dba_pass)

    def dba_view(self, dba_pass: int) -> CollectionConfig:
        """This config naming the DBA copy `dba_pass` of its generation."""
        return replace(self, view_dba_pass=dba_pass)

    def search_view(self) -> CollectionConfig:
        """The config whose namespace searches read: the completed DBA copy when there is
        one (and no reshard moves ids meanwhile), else the collection's vectors."""
        if self.dba_top_n and self.dba_pass and not self.target_shards:
            return self.dba_view(self.dba_pass)
        return self

    def pending_view(self) -> CollectionConfig | None:
        """The config as it will be once a running re-embed switches; None when none runs."""
        if not self.pending_model_version:
            return None
        return replace(
            self,
            model_version=self.pending_model_version,
            generation=self.pending_generation,
            pending_model_version="",
            pending_generation=0,
        )

    def generation_views(self) -> list[CollectionConfig]:
        """Every (model version, namespace) a write must reach: current, then pending
        generation, then the DBA copies of the current generation (completed, building)."""
        pending = self.pending_view()
        views = [self] if pending is None else [self, pending]
        if self.dba_top_n and not self.target_shards:
            views += [self.dba_view(n) for n in (self.dba_pass, self.dba_pending_pass) if n]
        return views


def config_from_json(raw: str | bytes) -> CollectionConfig:
    """A stored ``col:<name>`` record. Records written before ``texture_features`` existed
    belong to collections whose every ingest stored texture histograms: they read as True."""
    fields = json.loads(raw)
    fields.setdefault("texture_features", True)
    return CollectionConfig(**fields)


def index_name(collection: str, generation: int) -> str:
    return collection if generation == 0 else f"{collection}@{generation}"


def dba_index_name(namespace: str, dba_pass: int) -> str:
    """The DBA copy `dba_pass` of a namespace ("<namespace>~<pass>"); 0 = the namespace."""
    return namespace if dba_pass == 0 else f"{namespace}~{dba_pass}"


@dataclass(frozen=True)
class ImageMeta:
    id: str
    sha256: str
    label: str
    model_version: str
    shard: int
    ingested_at: float
    attributes: dict[str, str] = field(default_factory=dict)


class MetadataStore(Protocol):
    def create_collection(self, config: CollectionConfig) -> bool:
        """Stores config unless the collection exists; True when created."""
        ...

    def get_collection(self, name: str) -> CollectionConfig | None: ...

    def list_collections(self) -> list[str]:
        """Every collection name, sorted."""
        ...

    def update_collection(self, expected: CollectionConfig, new: CollectionConfig) -> bool:
        """Replaces the config with `new` only if it still equals `expected` (one atomic
        compare-and-set); False when it changed meanwhile."""
        ...

    def put_image(self, collection: str, meta: ImageMeta) -> bool:
        """Writes meta; True when it replaced an existing id."""
        ...

    def put_images(self, collection: str, metas: list[ImageMeta]) -> list[bool]:
        """Writes every meta in one transaction (all or none); per meta, whether it
        replaced an existing id."""
        ...

    def get_images(self, collection: str, ids: list[str]) -> list[ImageMeta | None]: ...

    def delete_image(self, collection: str, image_id: str) -> bool:
        """True when the id existed."""
        ...

    def count_images(self, collection: str) -> int: ...

    def list_ids(self, collection: str) -> list[str]:
        """Every id of the collection, sorted."""
        ...


def _meta_to_hash(meta: ImageMeta) -> dict[str, str]:
    raw = asdict(meta)
    raw["attributes"] = json.dumps(meta.attributes, sort_keys=True)
    return {key: str(value) for key, value in raw.items()}


def _meta_from_hash(raw: dict[str, str]) -> ImageMeta:
    return ImageMeta(
        id=raw["id"],
        sha256=raw["sha256"],
        label=raw.get("label", ""),
        model_version=raw.get("model_version", ""),
        shard=int(raw.get("shard", "0")),
        ingested_at=float(raw.get("ingested_at", "0")),
        attributes=json.loads(raw.get("attributes", "{}")),
    )


class RedisMetadataStore:
    def __init__(self, url: str) -> None:
        self._redis = redis.Redis.from_url(url, decode_responses=True, socket_timeout=10)

    def ping(self) -> None:
        try:
            self._redis.ping()
        except redis.RedisError as exc:
            raise UnavailableError(f"metadata store (Redis) unreachable: {exc}") from exc

    def create_collection(self, config: CollectionConfig) -> bool:
        try:
            created = self._redis.set(f"col:{config.name}", json.dumps(asdict(config)), nx=True)
        except redis.RedisError as exc:
            raise UnavailableError(f"metadata store (Redis): {exc}") from exc
        return bool(created)

    def get_collection(self, name: str) -> CollectionConfig | None:
        try:
            raw = self._redis.get(f"col:{name}")
        except redis.RedisError as exc:
            raise UnavailableError(f"metadata store (Redis): {exc}") from exc
        return config_from_json(raw) if raw else None

    def list_collections(self) -> list[str]:
        try:
            return sorted(str(key)[4:] for key in self._redis.scan_iter("col:*", count=1000))
        except redis.RedisError as exc:
            raise UnavailableError(f"metadata store (Redis): {exc}") from exc

    def update_collection(self, expected: CollectionConfig, new: CollectionConfig) -> bool:
        key = f"col:{expected.name}"
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.watch(key)
                raw = pipe.get(key)
                if not raw or config_from_json(raw) != expected:
                    pipe.unwatch()
                    return False
                pipe.multi()
                pipe.set(key, json.dumps(asdict(new)))
                pipe.execute()
        except redis.WatchError:
            return False
        except redis.RedisError as exc:
            raise UnavailableError(f"metadata store (Redis): {exc}") from exc
        return True

    def put_image(self, collection: str, meta: ImageMeta) -> bool:
        return self.put_images(collection, [meta])[0]

    def put_images(self, collection: str, metas: list[ImageMeta]) -> list[bool]:
        keys = [f"img:{collection}:{meta.id}" for meta in metas]

        def write(pipe: redis.client.Pipeline, old_shas: list[str | None]) -> None:
            now = time.time()
            for key, meta, old_sha in zip(keys, metas, old_shas, strict=True):
                member = ref_member(collection, meta.id)
                pipe.delete(key)
                pipe.hset(key, mapping=_meta_to_hash(meta))
                pipe.sadd(f"ids:{collection}", meta.id)
                pipe.sadd(refs_key(meta.sha256), member)
                if old_sha and old_sha != meta.sha256:
                    pipe.srem(refs_key(old_sha), member)
                    pipe.zadd(ERASE_QUEUE_KEY, {old_sha: now})

        return self._rewrite(keys, write)

    def _rewrite(
        self, keys: list[str], write: Callable[[redis.client.Pipeline, list[str | None]], None]
    ) -> list[bool]:
        """Runs `write` in one transaction that sees each record's current sha256 (None
        where absent); returns, per key, whether the record existed."""
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        pipe.watch(*keys)
                        with self._redis.pipeline(transaction=False) as reader:
                            for key in keys:
                                reader.hget(key, "sha256")
                            old_shas: list[str | None] = reader.execute()
                        pipe.multi()
                        write(pipe, old_shas)
                        pipe.execute()
                        return [sha is not None for sha in old_shas]
                    except redis.WatchError:
                        continue
        except redis.RedisError as exc:
            raise UnavailableError(f"metadata store (Redis): {exc}") from exc

    def get_images(self, collection: str, ids: list[str]) -> list[ImageMeta | None]:
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for image_id in ids:
                    pipe.hgetall(f"img:{collection}:{image_id}")
                rows = pipe.execute()
        except redis.RedisError as exc:
            raise UnavailableError(f"metadata store (Redis): {exc}") from exc
        return [_meta_from_hash(row) if row else None for row in rows]

    def delete_image(self, collection: str, image_id: str) -> bool:
        key = f"img:{collection}:{image_id}"

        def write(pipe: redis.client.Pipeline, old_shas: list[str | None]) -> None:
            pipe.delete(key)
            pipe.srem(f"ids:{collection}", image_id)
            if old_shas[0]:
                pipe.srem(refs_key(old_shas[0]), ref_member(collection, image_id))
                pipe.zadd(ERASE_QUEUE_KEY, {old_shas[0]: time.time()})

        return self._rewrite([key], write)[0]

    def count_images(self, collection: str) -> int:
        try:
            return int(self._redis.scard(f"ids:{collection}"))
        except redis.RedisError as exc:
            raise UnavailableError(f"metadata store (Redis): {exc}") from exc

    def list_ids(self, collection: str) -> list[str]:
        try:
            return sorted(set(self._redis.sscan_iter(f"ids:{collection}", count=1000)))
        except redis.RedisError as exc:
            raise UnavailableError(f"metadata store (Redis): {exc}") from exc


class InMemoryMetadataStore:
    """For unit tests of cores."""

    def __init__(self) -> None:
        self._collections: dict[str, CollectionConfig] = {}
        self._images: dict[tuple[str, str], ImageMeta] = {}
        self._blob_refs: dict[str, set[str]] = {}
        self._erase_queue: dict[str, float] = {}
        self._ledger = InMemoryBlobLedger(self._blob_refs, self._erase_queue)
        self._lock = threading.Lock()

    def blob_ledger(self) -> InMemoryBlobLedger:
        """The erasure ledger over this store's references."""
        return self._ledger

    def _unreference(self, collection: str, meta: ImageMeta | None) -> None:
        if meta is not None:
            self._blob_refs.get(meta.sha256, set()).discard(ref_member(collection, meta.id))
            self._erase_queue[meta.sha256] = time.time()

    def create_collection(self, config: CollectionConfig) -> bool:
        with self._lock:
            if config.name in self._collections:
                return False
            self._collections[config.name] = config
            return True

    def get_collection(self, name: str) -> CollectionConfig | None:
        with self._lock:
            return self._collections.get(name)

    def list_collections(self) -> list[str]:
        with self._lock:
            return sorted(self._collections)

    def update_collection(self, expected: CollectionConfig, new: CollectionConfig) -> bool:
        with self._lock:
            if self._collections.get(expected.name) != expected:
                return False
            self._collections[expected.name] = new
            return True

    def put_images(self, collection: str, metas: list[ImageMeta]) -> list[bool]:
        return [self.put_image(collection, meta) for meta in metas]

    def put_image(self, collection: str, meta: ImageMeta) -> bool:
        with self._lock:
            old = self._images.get((collection, meta.id))
            if old is not None and old.sha256 != meta.sha256:
                self._unreference(collection, old)
            self._images[(collection, meta.id)] = meta
            self._blob_refs.setdefault(meta.sha256, set()).add(ref_member(collection, meta.id))
            return old is not None

    def get_images(self, collection: str, ids: list[str]) -> list[ImageMeta | None]:
        with self._lock:
            return [self._images.get((collection, image_id)) for image_id in ids]

    def delete_image(self, collection: str, image_id: str) -> bool:
        with self._lock:
            old = self._images.pop((collection, image_id), None)
            self._unreference(collection, old)
            return old is not None

    def count_images(self, collection: str) -> int:
        with self._lock:
            return sum(1 for (name, _) in self._images if name == collection)

    def list_ids(self, collection: str) -> list[str]:
        with self._lock:
            return sorted(image_id for (name, image_id) in self._images if name == collection)
