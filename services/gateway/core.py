"""Gateway core: ingest and search orchestration. No grpc here; other services are ports."""

from __future__ import annotations

import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from services.common.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
    VisearchError,
)
from services.common.imaging import sha256_hex
from services.common.index_types import NO_OVERRIDES, IndexOverrides, ItemMeta, SearchFilter
from services.common.local_features import LocalFeatures, feature_key
from services.common.metadata import CollectionConfig, ImageMeta, MetadataStore
from services.common.objectstore import ObjectStore
from services.gateway import validation
from services.gateway.ports import (
    EmbedderPort,
    Hit,
    IngestItem,
    IngestOutcome,
    RerankInput,
    SearchOutcome,
    SearchQuery,
    ShardHit,
    ShardInfo,
    ShardPort,
    VerifierPort,
)
from services.gateway.sharding import shard_of
from services.indexer.core import check_collection_name

ResultT = TypeVar("ResultT")


@dataclass(frozen=True)
class GatewaySettings:
    images_bucket: str
    features_bucket: str
    max_image_bytes: int
    model_version: str
    default_timeout_s: float = 30.0
    default_rerank_depth: int = 50
    default_feature_type: str = "rootsift"
    # Shards get this share of the time left, so a partial answer still reaches the caller.
    shard_time_fraction: float = 0.7


@dataclass(frozen=True)
class Services:
    embedder: EmbedderPort
    shards: list[ShardPort]
    verifier: VerifierPort
    store: ObjectStore
    metadata: MetadataStore


class Deadline:
    """An absolute deadline on the monotonic clock."""

    def __init__(self, seconds: float) -> None:
        self._at = time.monotonic() + seconds

    def remaining(self) -> float:
        left = self._at - time.monotonic()
        if left <= 0:
            raise DeadlineExceededError("the request deadline passed before the work finished")
        return left


class GatewayCore:
    def __init__(self, services: Services, settings: GatewaySettings) -> None:
        self._s = services
        self._settings = settings
        self._pool = ThreadPoolExecutor(max_workers=max(8, 2 * len(services.shards) + 4))

    @property
    def shard_count(self) -> int:
        return len(self._s.shards)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # Collections ---------------------------------------------------------

    def create_collection(
        self,
        name: str,
        default_rerank: str = "",
        feature_type: str = "",
        rerank_depth: int = 0,
        index: IndexOverrides = NO_OVERRIDES,
    ) -> CollectionConfig:
        check_collection_name(name)
        default_rerank = default_rerank or "none"
        validation.check_rerank_mode(default_rerank)
        feature_type = feature_type or self._settings.default_feature_type
        if feature_type != "rootsift":
            raise InvalidArgumentError(f"local feature type {feature_type!r} is not supported")
        if not 0 <= rerank_depth <= validation.MAX_K:
            raise InvalidArgumentError(f"rerank_depth must be in 0..{validation.MAX_K}")
        validation.check_index_overrides(index)
        config = CollectionConfig(
            name=name,
            model_version=self._settings.model_version,
            shards=self.shard_count,
            default_rerank=default_rerank,
            local_feature_type=feature_type,
            rerank_depth=rerank_depth or self._settings.default_rerank_depth,
            created_at=time.time(),
            exact_threshold=index.exact_threshold,
            num_leaves=index.num_leaves,
            leaves_to_search=index.leaves_to_search,
            reorder=index.reorder,
        )
        if not self._s.metadata.create_collection(config):
            existing = self._s.metadata.get_collection(name)
            assert existing is not None
            return existing
        return config

    def collection(self, name: str) -> CollectionConfig:
        check_collection_name(name)
        config = self._s.metadata.get_collection(name)
        if config is None:
            raise NotFoundError(
                f"collection {name!r} does not exist; create it or ingest with create_collection"
            )
        if config.shards != self.shard_count:
            raise FailedPreconditionError(
                f"collection {name!r} was created for {config.shards} shards but the cluster has "
                f"{self.shard_count}; reshard it first"
            )
        return config

    # Ingest --------------------------------------------------------------

    def ingest(
        self, collection: str, items: list[IngestItem], create: bool, timeout_s: float | None
    ) -> list[IngestOutcome]:
        """Stores, embeds and indexes items; all-or-nothing for invalid input."""
        deadline = Deadline(timeout_s or self._settings.default_timeout_s)
        check_collection_name(collection)
        validation.check_ingest_items(items)
        images = [self._image_bytes(item.image, item.object_key, item.id) for item in items]
        if create and self._s.metadata.get_collection(collection) is None:
            self.create_collection(collection)
        config = self.collection(collection)
        embedded_future = self._pool.submit(
            self._s.embedder.embed_global, images, deadline.remaining()
        )
        features_future = self._pool.submit(
            self._s.embedder.extract_local, images, config.local_feature_type, deadline.remaining()
        )
        embedded = _result_naming_items(embedded_future, items)
        features = _result_naming_items(features_future, items)
        if embedded.model_version != config.model_version:
            raise FailedPreconditionError(
                f"embedder serves {embedded.model_version} but collection {collection!r} uses "
                f"{config.model_version}"
            )
        digests = [sha256_hex(data) for data in images]
        self._store_blobs(images, digests, features, config.local_feature_type)
        shards = [shard_of(item.id, config.shards) for item in items]
        by_shard: dict[int, list[int]] = defaultdict(list)
        for position, shard in enumerate(shards):
            by_shard[shard].append(position)
        self._upsert_by_shard(config, items, embedded.vectors, by_shard, deadline)
        # Metadata is written last: it is the commit point that makes an id visible
        # (search drops index hits without metadata).
        now = time.time()
        outcomes = []
        for position, item in enumerate(items):
            replaced = self._s.metadata.put_image(
                collection,
                ImageMeta(
                    id=item.id,
                    sha256=digests[position],
                    label=item.label,
                    model_version=config.model_version,
                    shard=shards[position],
                    ingested_at=now,
                    attributes=dict(item.attributes),
                ),
            )
            outcomes.append(IngestOutcome(item.id, digests[position], shards[position], replaced))
        return outcomes

    def _image_bytes(self, data: bytes, object_key: str, what: str) -> bytes:
        if object_key:
            try:
                data = self._s.store.get(object_key)
            except NotFoundError as exc:
                raise NotFoundError(f"{what}: {exc.message}") from exc
        if len(data) > self._settings.max_image_bytes:
            raise ResourceExhaustedError(
                f"{what}: image is {len(data)} bytes, above the limit of "
                f"{self._settings.max_image_bytes} bytes"
            )
        return data

    def _store_blobs(
        self, images: list[bytes], digests: list[str], features: list[LocalFeatures], kind: str
    ) -> None:
        def store_one(position: int) -> None:
            digest = digests[position]
            image_key = f"{self._settings.images_bucket}/{digest}"
            if not self._s.store.exists(image_key):
                self._s.store.put(image_key, images[position])
            self._s.store.put(
                feature_key(kind, digest, self._settings.features_bucket),
                features[position].to_npz(),
            )

        for future in [self._pool.submit(store_one, i) for i in range(len(images))]:
            future.result()

    def _upsert_by_shard(
        self,
        config: CollectionConfig,
        items: list[IngestItem],
        vectors: np.ndarray,
        by_shard: dict[int, list[int]],
        deadline: Deadline,
    ) -> None:
        futures = [
            self._pool.submit(
                self._s.shards[shard].upsert,
                config.name,
                [items[p].id for p in positions],
                vectors[positions],
                [ItemMeta(items[p].label, dict(items[p].attributes)) for p in positions],
                index_overrides(config),
                deadline.remaining(),
            )
            for shard, positions in by_shard.items()
        ]
        for future in futures:
            future.result()

    # Search --------------------------------------------------------------

    def search(self, query: SearchQuery, timeout_s: float | None) -> SearchOutcome:
        started = time.perf_counter()
        deadline = Deadline(timeout_s or self._settings.default_timeout_s)
        config = self.collection(query.collection)
        k = validation.resolve_k(query.k)
        mode = query.rerank or config.default_rerank
        validation.check_rerank_mode(mode)
        validation.check_filter(query.search_filter)
        image = self._image_bytes(query.image, query.object_key, "query")
        if not image:
            raise InvalidArgumentError("search needs a query image (bytes or object key)")
        timings: dict[str, float] = {}

        local_future: Future[list[LocalFeatures]] | None = None
        if mode == "geometric":
            local_future = self._pool.submit(
                self._extract_query_features, image, config.local_feature_type, deadline, timings
            )
        t0 = time.perf_counter()
        embedded = self._s.embedder.embed_global([image], deadline.remaining())
        timings["embed"] = _ms_since(t0)
        if embedded.model_version != config.model_version:
            raise FailedPreconditionError(
                f"embedder serves {embedded.model_version}, collection uses {config.model_version}"
            )
        depth = max(k, config.rerank_depth) if mode == "geometric" else k
        t0 = time.perf_counter()
        merged, missing = self._scatter_gather(
            config, embedded.vectors, depth, query.search_filter, deadline
        )
        timings["index"] = _ms_since(t0)
        if missing and query.require_complete:
            raise UnavailableError(
                f"shards {missing} did not answer in time; retry, or accept partial results",
                retryable=False,
            )
        t0 = time.perf_counter()
        metas = self._s.metadata.get_images(config.name, [hit.id for hit in merged])
        live = [(hit, meta) for hit, meta in zip(merged, metas, strict=True) if meta is not None]
        timings["metadata"] = _ms_since(t0)
        hits = [
            Hit(hit.id, hit.score, meta.label, meta.attributes, hit.score, 0, "global", meta.sha256)
            for hit, meta in live
        ]
        if local_future is not None and hits:
            query_features = local_future.result(timeout=deadline.remaining())
            t0 = time.perf_counter()
            hits = self._rerank(query_features[0], hits, deadline)
            timings["rerank"] = _ms_since(t0)
        timings["total"] = _ms_since(started)
        return SearchOutcome(
            hits=hits[:k],
            partial=bool(missing),
            missing_shards=missing,
            timings_ms=timings,
            model_version=config.model_version,
        )

    def _extract_query_features(
        self, image: bytes, feature_type: str, deadline: Deadline, timings: dict[str, float]
    ) -> list[LocalFeatures]:
        t0 = time.perf_counter()
        features = self._s.embedder.extract_local([image], feature_type, deadline.remaining())
        timings["local"] = _ms_since(t0)
        return features

    def _scatter_gather(
        self,
        config: CollectionConfig,
        vectors: np.ndarray,
        depth: int,
        search_filter: SearchFilter,
        deadline: Deadline,
    ) -> tuple[list[ShardHit], list[int]]:
        """Searches every shard in parallel; exact top-`depth` merge of those that answered."""
        remaining = deadline.remaining() * self._settings.shard_time_fraction
        futures = {
            self._pool.submit(
                port.search, config.name, vectors, depth, search_filter, remaining
            ): port.shard
            for port in self._s.shards
        }
        done, _not_done = wait(futures, timeout=remaining)
        answered: list[ShardHit] = []
        missing = []
        for future, shard in futures.items():
            if future in done and future.exception() is None:
                answered.extend(future.result()[0])
            else:
                missing.append(shard)
        if len(missing) == len(futures):
            raise UnavailableError(
                f"no shard answered within the deadline (shards {missing})", retryable=False
            )
        answered.sort(key=lambda hit: (-hit.score, hit.id))
        return answered[:depth], sorted(missing)

    def _rerank(self, query: LocalFeatures, hits: list[Hit], deadline: Deadline) -> list[Hit]:
        by_id = {hit.id: hit for hit in hits}
        reranked = self._s.verifier.rerank(
            query,
            [RerankInput(hit.id, hit.sha256, hit.global_score) for hit in hits],
            deadline.remaining(),
        )
        return [
            Hit(
                id=r.id,
                score=r.score,
                label=by_id[r.id].label,
                attributes=by_id[r.id].attributes,
                global_score=r.global_score,
                inliers=r.inliers,
                reason=r.reason,
                sha256=by_id[r.id].sha256,
            )
            for r in reranked
            if r.id in by_id
        ]

    # Delete / get / stats --------------------------------------------------

    def delete(
        self, collection: str, ids: list[str], timeout_s: float | None
    ) -> tuple[int, list[str]]:
        """Metadata first, so an id is gone from results even before its shard drops it."""
        deadline = Deadline(timeout_s or self._settings.default_timeout_s)
        config = self.collection(collection)
        validation.check_ids(ids, validation.MAX_IDS_PER_DELETE)
        not_found = [i for i in ids if not self._s.metadata.delete_image(collection, i)]
        by_shard: dict[int, list[str]] = defaultdict(list)
        for image_id in ids:
            by_shard[shard_of(image_id, config.shards)].append(image_id)
        futures = [
            self._pool.submit(
                self._s.shards[shard].delete, collection, shard_ids, deadline.remaining()
            )
            for shard, shard_ids in by_shard.items()
        ]
        for future in futures:
            future.result()
        return len(ids) - len(not_found), not_found

    def get(self, collection: str, image_id: str) -> ImageMeta:
        self.collection(collection)
        validation.check_id(image_id)
        (meta,) = self._s.metadata.get_images(collection, [image_id])
        if meta is None:
            raise NotFoundError(f"id {image_id!r} is not in collection {collection!r}")
        return meta

    def stats(
        self, collection: str, timeout_s: float | None
    ) -> tuple[CollectionConfig, int, list[ShardInfo | None]]:
        config = self.collection(collection)
        timeout = timeout_s or self._settings.default_timeout_s
        futures = [self._pool.submit(port.stats, collection, timeout) for port in self._s.shards]
        infos: list[ShardInfo | None] = []
        for future in futures:
            try:
                infos.append(future.result())
            except VisearchError:
                infos.append(None)
        return config, self._s.metadata.count_images(collection), infos


def index_overrides(config: CollectionConfig) -> IndexOverrides:
    return IndexOverrides(
        config.exact_threshold, config.num_leaves, config.leaves_to_search, config.reorder
    )


def _result_naming_items(future: Future[ResultT], items: list[IngestItem]) -> ResultT:
    """Waits for an embedder call; an 'image N' in its error becomes the item's id."""
    try:
        return future.result()
    except VisearchError as exc:
        message = exc.message
        for position in range(len(items) - 1, -1, -1):
            message = message.replace(f"image {position}:", f"item {items[position].id!r}:")
        raise type(exc)(message) from exc


def _ms_since(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 3)
