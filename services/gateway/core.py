"""Gateway core: ingest and search orchestration. No grpc here; other services are ports."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass, field, replace
from typing import TypeVar

import numpy as np

from services.common.blob_ledger import BlobLedger
from services.common.errors import (
    AlreadyExistsError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
    VisearchError,
)
from services.common.imaging import sha256_hex
from services.common.index_types import NO_OVERRIDES, IndexOverrides, ItemMeta, SearchFilter
from services.common.local_features import (
    LOCAL_FEATURE_TYPES,
    QUERY_ROTATIONS,
    LocalFeatures,
    feature_key,
)
from services.common.metadata import (
    CollectionConfig,
    ImageMeta,
    InMemoryMetadataStore,
    MetadataStore,
)
from services.common.objectstore import ObjectStore
from services.common.texture_features import histogram_to_bytes, texture_key
from services.gateway import query_expansion as qe
from services.gateway import validation
from services.gateway.generations import GenerationWriter
from services.gateway.layout import Layout, check_fits
from services.gateway.model_probe import check_embedder_serves
from services.gateway.ports import (
    EmbedderPort,
    Hit,
    IngestItem,
    IngestOutcome,
    RerankInput,
    RerankOutput,
    SearchOutcome,
    SearchQuery,
    ShardHit,
    ShardInfo,
    ShardPort,
    TextureHistograms,
    VerifierPort,
)
from services.gateway.reshard import Resharder, ReshardSettings
from services.gateway.reshard_store import InMemoryReshardStore, ReshardStore
from services.gateway.routing import delete_routed, latest_layout, upsert_routed
from services.indexer.core import check_collection_name

log = logging.getLogger(__name__)
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# A pin outlives its ingest's deadline by this much (the eraser waits for it).
PIN_MARGIN_S = 60.0
# Extra hits asked of the shards, and how many times to ask again, to make up for index
# entries without metadata (GatewayCore._live_top).
STALE_MARGIN = 4
REFILL_ROUNDS = 3

ResultT = TypeVar("ResultT")


@dataclass(frozen=True)
class GatewaySettings:
    images_bucket: str
    features_bucket: str
    max_image_bytes: int
    model_version: str
    # Object keys a client may name: "<uploads_bucket>/<its collection>/..." (staged by the
    # client) and "<images_bucket>/<sha256>" of an image already in its collection.
    uploads_bucket: str = "uploads"
    # How long an undo of a failed ingest may take (its own deadline may have run out).
    undo_timeout_s: float = 10.0
    default_timeout_s: float = 30.0
    default_rerank_depth: int = 50
    default_feature_type: str = "rootsift"
    # Shards get this share of the time left, so a partial answer still reaches the caller.
    shard_time_fraction: float = 0.7
    # Shards of a new collection; 0 = every indexer (spare ones make room to reshard).
    default_shards: int = 0
    reshard: ReshardSettings = field(default_factory=ReshardSettings)
    # Spatially verified query expansion trusts hits with more inliers than this (keep it
    # equal to the verifier's minimum, services/verifier/geometry.py).
    verified_min_inliers: int = qe.DEFAULT_VERIFIED_MIN_INLIERS
    # Query expansion of a collection created without its own (docs/query_expansion.md):
    # spatially verified expansion of geometric searches, which raised mAP on every dev set
    # where objects have several images and changed nothing elsewhere; alpha-QE off.
    default_query_expansion: qe.QueryExpansion = qe.VERIFIED_ONLY
    # Threads that write an ingest's blobs (image, features, texture) to the object store:
    # their own pool, so a 256-image ingest cannot queue ahead of search fan-out.
    blob_writers: int = 8


@dataclass(frozen=True)
class Services:
    embedder: EmbedderPort
    shards: list[ShardPort]
    verifier: VerifierPort
    store: ObjectStore
    metadata: MetadataStore
    reshard_store: ReshardStore = field(default_factory=InMemoryReshardStore)
    # None: the in-memory metadata store's own ledger (unit tests).
    ledger: BlobLedger | None = None


class Deadline:
    """An absolute deadline on the monotonic clock."""

    def __init__(self, seconds: float) -> None:
        self._at = time.monotonic() + seconds

    def remaining(self) -> float:
        left = self._at - time.monotonic()
        if left <= 0:
            raise DeadlineExceededError("the request deadline passed before the work finished")
        return left

    def expired(self) -> bool:
        return time.monotonic() >= self._at


class GatewayCore:
    def __init__(self, services: Services, settings: GatewaySettings) -> None:
        self._s = services
        self._settings = settings
        self.ledger = _ledger_of(services)
        self._pool = ThreadPoolExecutor(max_workers=max(8, 2 * len(services.shards) + 4))
        self._blob_pool = ThreadPoolExecutor(
            max_workers=max(1, settings.blob_writers), thread_name_prefix="gateway-blobs"
        )
        self.resharder = Resharder(
            services.shards,  # type: ignore[arg-type]  # the gRPC shards implement both ports
            services.metadata,
            services.reshard_store,
            CollectionConfig.index_overrides,
            settings.reshard,
        )
        self._generations = GenerationWriter(
            self._pool, services.embedder, services.shards, services.metadata
        )

    @property
    def services(self) -> Services:
        return self._s

    @property
    def shard_count(self) -> int:
        return len(self._s.shards)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._blob_pool.shutdown(wait=False, cancel_futures=True)

    # Collections ---------------------------------------------------------

    def create_collection(
        self,
        name: str,
        default_rerank: str = "",
        feature_type: str = "",
        rerank_depth: int = 0,
        index: IndexOverrides = NO_OVERRIDES,
        texture_features: bool = False,
        query_expansion: qe.QueryExpansion | None = None,
        model_version: str = "",
    ) -> CollectionConfig:
        """query_expansion: used by searches that set none; None = the gateway's default
        (GatewaySettings.default_query_expansion; docs/query_expansion.md says when it helps).
        model_version: the global model; empty = the gateway's default, else probed with the
        embedder (NOT_FOUND when it has no such version)."""
        asked = {
            "model_version": model_version,
            "default_rerank": default_rerank,
            "local_feature_type": feature_type,
            "rerank_depth": rerank_depth,
            "exact_threshold": index.exact_threshold,
            "num_leaves": index.num_leaves,
            "leaves_to_search": index.leaves_to_search,
            "reorder": index.reorder,
            "texture_features": texture_features,
        }
        exact: dict[str, object] = {}  # compared even where empty or zero
        if query_expansion is not None:
            exact = {
                "qe_top_n": query_expansion.top_n,
                "qe_alpha": query_expansion.alpha,
                "qe_verified": query_expansion.verified,
            }
        if query_expansion is None:
            query_expansion = self._settings.default_query_expansion
        check_collection_name(name)
        default_rerank = default_rerank or "none"
        validation.check_rerank_mode(default_rerank)
        feature_type = feature_type or self._settings.default_feature_type
        if feature_type not in LOCAL_FEATURE_TYPES:
            raise InvalidArgumentError(
                f"local feature type {feature_type!r} is not supported; "
                f"use one of {', '.join(LOCAL_FEATURE_TYPES)}"
            )
        if not 0 <= rerank_depth <= validation.MAX_K:
            raise InvalidArgumentError(f"rerank_depth must be in 0..{validation.MAX_K}")
        validation.check_index_overrides(index)
        qe.check(query_expansion, "collection query expansion")
        other_model = model_version and model_version != self._settings.model_version
        if other_model and self._s.metadata.get_collection(name) is None:
            check_embedder_serves(self._s.embedder, model_version, self._settings.default_timeout_s)
        config = CollectionConfig(
            name=name,
            model_version=model_version or self._settings.model_version,
            shards=min(self._settings.default_shards or self.shard_count, self.shard_count),
            default_rerank=default_rerank,
            local_feature_type=feature_type,
            rerank_depth=rerank_depth or self._settings.default_rerank_depth,
            created_at=time.time(),
            exact_threshold=index.exact_threshold,
            num_leaves=index.num_leaves,
            leaves_to_search=index.leaves_to_search,
            reorder=index.reorder,
            texture_features=texture_features or default_rerank == "texture",
            qe_top_n=query_expansion.top_n,
            qe_alpha=query_expansion.alpha,
            qe_verified=query_expansion.verified,
        )
        if not self._s.metadata.create_collection(config):
            existing = self._s.metadata.get_collection(name)
            assert existing is not None
            _check_same_settings(existing, asked, exact)
            return existing
        return config

    def collection(self, name: str) -> CollectionConfig:
        check_collection_name(name)
        config = self._s.metadata.get_collection(name)
        if config is None:
            raise NotFoundError(
                f"collection {name!r} does not exist; create it or ingest with create_collection"
            )
        check_fits(config, self.shard_count)
        return config

    # Ingest --------------------------------------------------------------

    def ingest(
        self, collection: str, items: list[IngestItem], create: bool, timeout_s: float | None
    ) -> list[IngestOutcome]:
        """Stores, embeds and indexes items; all-or-nothing for invalid input."""
        deadline = Deadline(timeout_s or self._settings.default_timeout_s)
        check_collection_name(collection)
        validation.check_ingest_items(items)
        images = [
            self._image_bytes(item.image, item.object_key, item.id, collection) for item in items
        ]
        if create and self._s.metadata.get_collection(collection) is None:
            self.create_collection(collection)
        config = self.collection(collection)
        # One embedder call: each image is decoded once for all the collection needs.
        extraction = _naming_items(
            lambda: self._s.embedder.extract(
                images,
                config.model_version,
                config.local_feature_type,
                config.texture_features,
                deadline.remaining(),
            ),
            items,
        )
        embedded, features = extraction.embeddings, extraction.features
        textures = extraction.textures if config.texture_features else None
        if embedded.model_version != config.model_version:
            raise FailedPreconditionError(
                f"embedder serves {embedded.model_version} but collection {collection!r} uses "
                f"{config.model_version}"
            )
        digests = [sha256_hex(data) for data in images]
        ids = [item.id for item in items]
        known = self._s.metadata.get_images(collection, ids)
        new_ids = [i for i, meta in zip(ids, known, strict=True) if meta is None]
        self._store_blobs(images, digests, features, config.local_feature_type, textures, deadline)
        try:
            layout, written, vectors = self._index_items(
                config, items, images, embedded.vectors, deadline
            )
            shards = [layout.write_shard(item.id) for item in items]
            # The commit point, one transaction for the batch: metadata makes the ids visible
            # (search drops index hits without metadata).
            now = time.time()
            replaced = self._s.metadata.put_images(
                collection,
                [
                    ImageMeta(
                        id=item.id,
                        sha256=digests[position],
                        label=item.label,
                        model_version=config.model_version,
                        shard=shards[position],
                        ingested_at=now,
                        attributes=dict(item.attributes),
                    )
                    for position, item in enumerate(items)
                ],
            )
        except Exception:
            self._undo_index_writes(config, new_ids)
            raise
        finally:
            self.ledger.unpin(digests)
        outcomes = [
            IngestOutcome(item.id, digests[p], shards[p], replaced[p])
            for p, item in enumerate(items)
        ]
        # A re-embed that started or switched meanwhile (services/gateway/generations.py).
        self._generations.upsert(
            self._generations.latest_views(collection),
            written,
            items,
            images,
            deadline.remaining,
            vectors,
        )
        return outcomes

    def _index_items(
        self,
        config: CollectionConfig,
        items: list[IngestItem],
        images: list[bytes],
        vectors: np.ndarray,
        deadline: Deadline,
    ) -> tuple[Layout, set[str], dict[str, np.ndarray]]:
        """vectors: float32 [n, d]. Writes the items to the collection's shards and to the
        generations being built; returns the layout and what was written, by index name
        and by model version."""
        layout = upsert_routed(
            self._pool,
            self._s.shards,
            self._s.metadata,
            config,
            [item.id for item in items],
            vectors,
            [ItemMeta(item.label, dict(item.attributes)) for item in items],
            config.index_overrides(),
            deadline.remaining,
        )
        # A re-embed in progress gets the items too, embedded with its model version.
        written = {config.index_name}
        by_version = {config.model_version: vectors}
        self._generations.upsert(
            config.generation_views(), written, items, images, deadline.remaining, by_version
        )
        return layout, written, by_version

    def _undo_index_writes(self, config: CollectionConfig, new_ids: list[str]) -> None:
        """A failed batch leaves no vectors behind: drops the ids it added that are still
        without metadata from every index it may have written. What this cannot reach (a
        shard down) the orphan sweep removes later (services/gateway/janitor.py)."""
        if not new_ids:
            return
        still_new = [
            i
            for i, meta in zip(
                new_ids, self._s.metadata.get_images(config.name, new_ids), strict=True
            )
            if meta is None
        ]
        undo = Deadline(self._settings.undo_timeout_s)
        done: set[str] = set()
        try:
            for view in config.generation_views():
                delete_routed(
                    self._pool, self._s.shards, self._s.metadata, view, still_new, undo.remaining
                )
                done.add(view.index_name)
        except VisearchError as exc:
            log.warning(
                "undo of a failed ingest incomplete; the orphan sweep will finish it",
                extra={"fields": {"collection": config.name, "error": exc.message}},
            )
        log.info(
            "undid the index writes of a failed ingest",
            extra={
                "fields": {"collection": config.name, "ids": len(still_new), "indexes": len(done)}
            },
        )

    def _image_bytes(self, data: bytes, object_key: str, what: str, collection: str) -> bytes:
        if object_key:
            validation.check_object_key(object_key, what)
            self._check_key_in_scope(object_key, what, collection)
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

    def _check_key_in_scope(self, object_key: str, what: str, collection: str) -> None:
        """A client names its own staged uploads or its collection's stored images only."""
        bucket, _, rest = object_key.partition("/")
        uploads = self._settings.uploads_bucket
        if bucket == uploads and rest.startswith(f"{collection}/"):
            return
        if bucket == self._settings.images_bucket:
            if SHA256_HEX.match(rest) and self.ledger.referenced_by(collection, rest):
                return
            raise NotFoundError(f"{what}: no image {rest!r} in collection {collection!r}")
        raise InvalidArgumentError(
            f"{what}: object key {object_key!r} is outside this collection's scope: stage "
            f"images under '{uploads}/{collection}/' or name a stored image of the collection "
            f"as '{self._settings.images_bucket}/<sha256>'"
        )

    def _store_blobs(
        self,
        images: list[bytes],
        digests: list[str],
        features: list[LocalFeatures],
        kind: str,
        textures: TextureHistograms | None,
        deadline: Deadline,
    ) -> None:
        """Stores bytes, features and texture histograms, after pinning the digests so that
        the eraser leaves them alone until the ingest has committed or given up."""
        keys: dict[str, list[str]] = {}
        for position, digest in enumerate(digests):
            bucket, version = self._settings.features_bucket, features[position].model_version
            keys[digest] = [
                f"{self._settings.images_bucket}/{digest}",
                feature_key(kind, digest, bucket, version),
            ]
            if textures is not None:
                keys[digest].append(texture_key(textures.texture_type, digest, bucket))
        self.ledger.pin(keys, deadline.remaining() + PIN_MARGIN_S)

        def store_one(position: int) -> None:
            image_key, features_key, *texture_keys = keys[digests[position]]
            if not self._s.store.exists(image_key):
                self._s.store.put(image_key, images[position])
            self._s.store.put(features_key, features[position].to_npz())
            if textures is not None:
                self._s.store.put(
                    texture_keys[0], histogram_to_bytes(textures.histograms[position])
                )

        try:
            for future in [self._blob_pool.submit(store_one, i) for i in range(len(images))]:
                future.result()
        except BaseException:
            self.ledger.unpin(digests)  # nothing to commit: the eraser may have them at once
            raise

    # Search --------------------------------------------------------------

    def search(self, query: SearchQuery, timeout_s: float | None) -> SearchOutcome:
        started = time.perf_counter()
        deadline = Deadline(timeout_s or self._settings.default_timeout_s)
        config = self.collection(query.collection)
        read_at = time.monotonic()  # the one collection read of this search
        k = validation.resolve_k(query.k)
        mode = query.rerank or config.default_rerank
        validation.check_rerank_mode(mode)
        if mode == "texture" and not config.texture_features:
            raise FailedPreconditionError(
                f"collection {config.name!r} stores no texture histograms, so it cannot re-rank "
                f"by texture; create it with texture features (`visearch create-collection -c "
                f"{config.name} --texture`, CreateCollectionRequest.texture_features) and ingest "
                "its images again"
            )
        validation.check_filter(query.search_filter)
        expansion = _expansion_for(config, query.query_expansion, mode)
        image = self._image_bytes(query.image, query.object_key, "query", config.name)
        if not image:
            raise InvalidArgumentError("search needs a query image (bytes or object key)")
        timings: dict[str, float] = {}

        local_future: Future[list[LocalFeatures]] | None = None
        texture_future: Future[TextureHistograms] | None = None
        if mode == "geometric":
            local_future = self._pool.submit(
                self._extract_query_features, image, config.local_feature_type, deadline, timings
            )
        elif mode == "texture":
            texture_future = self._pool.submit(
                self._extract_query_texture, image, deadline, timings
            )
        t0 = time.perf_counter()
        # One config read names both the model version and its namespace: never mixed.
        embedded = self._s.embedder.embed_global(
            [image], deadline.remaining() * QUERY_EMBED_TIME_FRACTION, config.model_version
        )
        timings["embed"] = _ms_since(t0)
        if embedded.model_version != config.model_version:
            raise FailedPreconditionError(
                f"embedder serves {embedded.model_version}, collection uses {config.model_version}"
            )
        depth = max(k, config.rerank_depth) if mode in ("geometric", "texture") else k
        verified_qe = expansion.verified and mode == "geometric"
        index_view = config.search_view()  # the augmented copy when DBA completed a pass
        t0 = time.perf_counter()
        vectors = embedded.vectors
        missing: list[int] = []
        if expansion.top_n:
            vectors, missing = self._alpha_expanded(
                index_view, vectors, expansion, query.search_filter, deadline, read_at
            )
            timings["index"] = _ms_since(t0)
            t0 = time.perf_counter()
        merged, live, missed = self._live_top(
            index_view, vectors, depth, query.search_filter, deadline, verified_qe, timings, read_at
        )
        missing = sorted(set(missing) | set(missed))
        timings["index_expanded" if expansion.top_n else "index"] = _ms_since(t0)
        if missing and query.require_complete:
            raise UnavailableError(
                f"shards {missing} did not answer in time; retry, or accept partial results",
                retryable=False,
            )
        hits = [
            Hit(hit.id, hit.score, meta.label, meta.attributes, hit.score, 0, "global", meta.sha256)
            for hit, meta in live
        ]
        degraded = ""
        if local_future is not None and hits:
            try:
                query_features = local_future.result(timeout=deadline.remaining())
                t0 = time.perf_counter()
                hits = self._rerank(query_features[0], hits, deadline, query.return_matches)
                timings["rerank"] = _ms_since(t0)
            except RERANK_FAILURES as exc:
                degraded = _degraded_reason("geometric", exc)
            if verified_qe and not degraded:
                t0 = time.perf_counter()
                hits, missed = self._verified_expanded(
                    index_view,
                    embedded.vectors[0],
                    hits,
                    merged,
                    k,
                    query.search_filter,
                    deadline,
                    read_at,
                )
                if missed and query.require_complete:
                    raise UnavailableError(
                        f"shards {missed} did not answer the expanded search in time; retry, "
                        "or accept partial results",
                        retryable=False,
                    )
                missing = sorted(set(missing) | set(missed))
                timings["index_verified"] = _ms_since(t0)
        if texture_future is not None and hits:
            try:
                texture = texture_future.result(timeout=deadline.remaining())
                t0 = time.perf_counter()
                hits = self._rerank_texture(texture, sha256_hex(image), hits, deadline)
                timings["rerank"] = _ms_since(t0)
            except RERANK_FAILURES as exc:
                degraded = _degraded_reason("texture", exc)
        timings["total"] = _ms_since(started)
        return SearchOutcome(
            hits=hits[:k],
            partial=bool(missing),
            missing_shards=missing,
            timings_ms=timings,
            model_version=config.model_version,
            rerank_degraded=bool(degraded),
            rerank_degraded_reason=degraded,
        )

    def _extract_query_features(
        self, image: bytes, feature_type: str, deadline: Deadline, timings: dict[str, float]
    ) -> list[LocalFeatures]:
        t0 = time.perf_counter()
        rotations = QUERY_ROTATIONS.get(feature_type, ())
        if rotations:  # once per search; the verifier keeps each candidate's best rotation
            features = self._s.embedder.extract_local(
                [image], feature_type, deadline.remaining(), rotations=rotations
            )
        else:
            features = self._s.embedder.extract_local([image], feature_type, deadline.remaining())
        timings["local"] = _ms_since(t0)
        return features

    def _extract_query_texture(
        self, image: bytes, deadline: Deadline, timings: dict[str, float]
    ) -> TextureHistograms:
        t0 = time.perf_counter()
        texture = self._s.embedder.extract_texture([image], deadline.remaining())
        timings["texture"] = _ms_since(t0)
        return texture

    def _live_top(
        self,
        index_view: CollectionConfig,
        vectors: np.ndarray,
        depth: int,
        search_filter: SearchFilter,
        deadline: Deadline,
        with_vectors: bool,
        timings: dict[str, float],
        config_read_at: float | None = None,
    ) -> tuple[list[ShardHit], list[tuple[ShardHit, ImageMeta]], list[int]]:
        """vectors: float32 [1, d]. The best `depth` hits that have metadata, with their
        metadata, and the shards that did not answer. An index entry without metadata (an
        ingest not committed yet, a delete whose shard was down) would take a result slot:
        the shards are asked for a few more than `depth`, and for twice as many again while
        dropped entries left the answer short of what the shards hold."""
        ask = min(validation.MAX_K, depth + max(STALE_MARGIN, depth // 8))
        metadata_ms = 0.0
        for _ in range(REFILL_ROUNDS):
            merged, missing = self._scatter_gather(
                index_view,
                vectors,
                ask,
                search_filter,
                deadline,
                vectors_for_top=ask if with_vectors else 0,
                config_read_at=config_read_at,
            )
            t0 = time.perf_counter()
            metas = self._s.metadata.get_images(index_view.name, [hit.id for hit in merged])
            metadata_ms += _ms_since(t0)
            live = [(h, m) for h, m in zip(merged, metas, strict=True) if m is not None]
            exhausted = len(merged) < ask or ask >= validation.MAX_K
            if len(live) >= depth or exhausted:
                break
            ask = min(validation.MAX_K, 2 * ask)
        timings["metadata"] = metadata_ms
        live = live[:depth]
        kept = {hit.id for hit, _ in live}
        return [hit for hit in merged if hit.id in kept], live, missing

    def _alpha_expanded(
        self,
        config: CollectionConfig,
        vectors: np.ndarray,
        expansion: qe.QueryExpansion,
        search_filter: SearchFilter,
        deadline: Deadline,
        config_read_at: float | None = None,
    ) -> tuple[np.ndarray, list[int]]:
        """vectors: float32 [1, d] query -> (float32 [1, d] alpha-expanded query, shards that
        did not answer). Combines the best `top_n` live hits (those with metadata)."""
        first, missing = self._scatter_gather(
            config,
            vectors,
            expansion.top_n,
            search_filter,
            deadline,
            expansion.top_n,
            config_read_at,
        )
        metas = self._s.metadata.get_images(config.name, [hit.id for hit in first])
        live = [
            hit
            for hit, meta in zip(first, metas, strict=True)
            if meta is not None and hit.vector is not None
        ]
        if not live:
            return vectors, missing
        neighbours = np.stack([hit.vector for hit in live]).astype(np.float32)
        sims = np.array([hit.score for hit in live], dtype=np.float32)
        expanded = qe.expand_one(vectors[0], neighbours, sims, expansion.alpha)
        return expanded[None, :], missing

    def _verified_expanded(
        self,
        config: CollectionConfig,
        query: np.ndarray,
        hits: list[Hit],
        merged: list[ShardHit],
        k: int,
        search_filter: SearchFilter,
        deadline: Deadline,
        config_read_at: float | None = None,
    ) -> tuple[list[Hit], list[int]]:
        """Spatially verified QE. query: float32 [d]; hits: re-ranked, best first; merged:
        the searched hits with their vectors. Verified hits stay on top in their order; a
        search with normalise(query + their vectors) fills the rest of the k."""
        vectors = {hit.id: hit.vector for hit in merged if hit.vector is not None}
        minimum = self._settings.verified_min_inliers
        verified = [hit for hit in hits if qe.is_verified(hit.inliers, minimum)]
        combined = [vectors[hit.id] for hit in verified if hit.id in vectors][: qe.MAX_VERIFIED]
        if not combined or len(verified) >= k:  # nothing to expand with, or no room to fill
            return hits, []
        neighbours = np.stack(combined).astype(np.float32)
        expanded = qe.expand_one(query, neighbours, np.ones(len(combined), np.float32), 0.0)
        depth = min(validation.MAX_K, k + len(verified))
        found, missing = self._scatter_gather(
            config, expanded[None, :], depth, search_filter, deadline, 0, config_read_at
        )
        taken = {hit.id for hit in verified}
        fresh = [hit for hit in found if hit.id not in taken]
        metas = self._s.metadata.get_images(config.name, [hit.id for hit in fresh])
        before = {hit.id: hit for hit in hits}
        floor = verified[-1].score
        fill = []
        for shard_hit, meta in zip(fresh, metas, strict=True):
            if meta is None:
                continue
            evidence = before.get(shard_hit.id)
            fill.append(
                Hit(
                    id=shard_hit.id,
                    # Below every verified hit, so scores fall as the list goes down.
                    score=min(shard_hit.score, floor),
                    label=meta.label,
                    attributes=meta.attributes,
                    global_score=shard_hit.score,
                    inliers=evidence.inliers if evidence else 0,
                    reason=f"expanded query {shard_hit.score:.2f} "
                    f"(query + {len(combined)} verified results)",
                    sha256=meta.sha256,
                    matches=evidence.matches if evidence else 0,
                    inlier_ratio=evidence.inlier_ratio if evidence else 0.0,
                    inlier_keypoints=evidence.inlier_keypoints if evidence else None,
                )
            )
        return verified + fill, missing

    def _scatter_gather(
        self,
        config: CollectionConfig,
        vectors: np.ndarray,
        depth: int,
        search_filter: SearchFilter,
        deadline: Deadline,
        vectors_for_top: int = 0,
        config_read_at: float | None = None,
    ) -> tuple[list[ShardHit], list[int]]:
        """Searches the collection's shards in parallel; exact top-`depth` merge of those
        that answered, each id once (during a reshard an id may be on two shards). Asks
        again if the layout changed meanwhile (services/gateway/routing.py), unless
        `_layout_still_current` says it cannot have (config_read_at: time.monotonic() when
        the search read `config`; None = always re-read).
        vectors_for_top > 0: each shard's best that-many hits carry their vector."""
        layout = Layout.of(config)
        for _ in range(3):
            merged, missing = self._search_shards(
                config.index_name,
                layout,
                vectors,
                depth,
                search_filter,
                deadline,
                vectors_for_top,
            )
            if self._layout_still_current(layout, config_read_at):
                break
            latest = latest_layout(self._s.metadata, config)
            if latest == layout:
                break
            layout = latest
        return merged, missing

    def _layout_still_current(self, layout: Layout, read_at: float | None) -> bool:
        """Whether a search may skip re-reading the collection config after its shard round.

        The re-read (services/gateway/routing.py) catches a layout that changed while the
        shards were searched. Without a reshard in progress when the config was read, the
        first shard round cannot have missed ids moved by the reshard's clean-up if the
        round finished within the reshard's flip grace of that read: the window opens after
        the read, the flip after that, and clean-up deletes only flip_grace_s after the
        flip. So: skipped (one collection read per search) while no reshard was in progress
        and the search is younger than LAYOUT_RECHECK_FRACTION of the grace; re-read
        otherwise (a reshard in progress, a slow search, or a caller outside a search).
        What the skip gives up: an existing id that another request rewrites in a window
        opened after this search's read is dropped from its old shard and written to a new
        one this search does not ask, so this search may miss it (a write concurrent with
        the search; the next search finds it)."""
        if layout.resharding or read_at is None:
            return False
        bound = self._settings.reshard.flip_grace_s * LAYOUT_RECHECK_FRACTION
        return time.monotonic() - read_at < bound

    def _search_shards(
        self,
        collection: str,
        layout: Layout,
        vectors: np.ndarray,
        depth: int,
        search_filter: SearchFilter,
        deadline: Deadline,
        vectors_for_top: int = 0,
    ) -> tuple[list[ShardHit], list[int]]:
        remaining = deadline.remaining() * self._settings.shard_time_fraction
        # Only query expansion asks for vectors (shards that predate it take no such argument).
        extra = {"vectors_for_top": vectors_for_top} if vectors_for_top else {}
        futures = {
            self._pool.submit(
                self._s.shards[shard].search,
                collection,
                vectors,
                depth,
                search_filter,
                remaining,
                **extra,
            ): shard
            for shard in layout.search_shards
        }
        done, _not_done = wait(futures, timeout=remaining)
        answered: list[ShardHit] = []
        missing = []
        for future, shard in futures.items():
            if future in done and future.exception() is None:
                answered.extend(future.result()[0])
                continue
            error = future.exception() if future in done else None
            if isinstance(error, InvalidArgumentError | FailedPreconditionError):
                raise error  # the request is wrong, not the shard: a retry would fail the same
            missing.append(shard)
        if len(missing) == len(futures):
            errors = [future.exception() if future in done else None for future in futures]
            raise _no_shard_answered(errors, sorted(missing), deadline, remaining)
        best: dict[str, ShardHit] = {}
        for hit in answered:
            if hit.id not in best or hit.score > best[hit.id].score:
                best[hit.id] = hit
        ranked = sorted(best.values(), key=lambda hit: (-hit.score, hit.id))
        return ranked[:depth], sorted(missing)

    def _rerank(
        self, query: LocalFeatures, hits: list[Hit], deadline: Deadline, return_matches: bool
    ) -> list[Hit]:
        reranked = self._s.verifier.rerank(
            query,
            [RerankInput(hit.id, hit.sha256, hit.global_score) for hit in hits],
            deadline.remaining(),
            return_matches=return_matches,
        )
        return _reranked_hits(hits, reranked)

    def _rerank_texture(
        self, texture: TextureHistograms, query_sha256: str, hits: list[Hit], deadline: Deadline
    ) -> list[Hit]:
        reranked = self._s.verifier.rerank_texture(
            texture.histograms[0],
            texture.texture_type,
            query_sha256,
            [RerankInput(hit.id, hit.sha256, hit.global_score, hit.label) for hit in hits],
            deadline.remaining(),
        )
        return _reranked_hits(hits, reranked)

    # Delete / get / stats --------------------------------------------------

    def delete(
        self, collection: str, ids: list[str], timeout_s: float | None
    ) -> tuple[int, list[str]]:
        """Metadata first, so an id is gone from results even before its shard drops it."""
        deadline = Deadline(timeout_s or self._settings.default_timeout_s)
        config = self.collection(collection)
        validation.check_ids(ids, validation.MAX_IDS_PER_DELETE)
        not_found = [i for i in ids if not self._s.metadata.delete_image(collection, i)]
        done: set[str] = set()
        self._generations.delete(config.generation_views(), done, ids, deadline.remaining)
        self._generations.delete(
            self._generations.latest_views(collection), done, ids, deadline.remaining
        )
        return len(ids) - len(not_found), not_found

    def get(self, collection: str, image_id: str) -> ImageMeta:
        config = self.collection(collection)
        validation.check_id(image_id)
        (meta,) = self._s.metadata.get_images(collection, [image_id])
        if meta is None:
            raise NotFoundError(f"id {image_id!r} is not in collection {collection!r}")
        # The shard recorded at ingest is out of date once a reshard moved the id, and
        # its model version once a re-embed switched the collection.
        return replace(
            meta,
            shard=Layout.of(config).write_shard(image_id),
            model_version=config.model_version,
        )

    def get_image(self, collection: str, image_id: str) -> tuple[ImageMeta, bytes]:
        """An ingested image's metadata and original bytes."""
        meta = self.get(collection, image_id)
        return meta, self._s.store.get(f"{self._settings.images_bucket}/{meta.sha256}")

    def stats(
        self, collection: str, timeout_s: float | None
    ) -> tuple[CollectionConfig, int, list[ShardInfo | None]]:
        config = self.collection(collection)
        timeout = timeout_s or self._settings.default_timeout_s
        futures = [
            self._pool.submit(port.stats, config.index_name, timeout) for port in self._s.shards
        ]
        infos: list[ShardInfo | None] = []
        for future in futures:
            try:
                infos.append(future.result())
            except VisearchError:
                infos.append(None)
        return config, self._s.metadata.count_images(collection), infos


# A search that read a config without a reshard in progress trusts its layout for this
# share of the reshard's flip grace (GatewayCore._layout_still_current).
LAYOUT_RECHECK_FRACTION = 0.5
# The query's embedding gets this share of the time left, so that an embedding the embedder
# finishes just in time still leaves time for the shards (it drops what it cannot finish).
QUERY_EMBED_TIME_FRACTION = 0.85
# A re-rank (or its query features) that fails this way leaves the global order, flagged.
RERANK_FAILURES = (
    UnavailableError,
    DeadlineExceededError,
    ResourceExhaustedError,
    InternalError,
    FutureTimeoutError,
)


def _ledger_of(services: Services) -> BlobLedger:
    if services.ledger is not None:
        return services.ledger
    if isinstance(services.metadata, InMemoryMetadataStore):
        return services.metadata.blob_ledger()
    raise ValueError("a metadata store other than the in-memory one needs its BlobLedger")


def _no_shard_answered(
    errors: list[BaseException | None], missing: list[int], deadline: Deadline, given_s: float
) -> VisearchError:
    """Why a search got no shard's answer (errors: per shard, None = no answer in time).

    The request's own deadline ran out (it expired, or every shard used up the time it was
    given): DEADLINE_EXCEEDED, not retried. Every shard shed the load: RESOURCE_EXHAUSTED
    with their retry pushback. Otherwise the shards are down: UNAVAILABLE."""
    if deadline.expired() or all(e is None or isinstance(e, DeadlineExceededError) for e in errors):
        return DeadlineExceededError(
            f"the request deadline ran out before any shard answered (shards {missing} had "
            f"{given_s * 1000:.0f} ms)",
            retryable=False,
        )
    if all(isinstance(e, ResourceExhaustedError) and e.retryable for e in errors):
        return ResourceExhaustedError(
            f"every shard is busy (shards {missing}); retry after the pushback",
            retryable=True,
            retry_after_ms=max(getattr(e, "retry_after_ms", 0) for e in errors),
        )
    return UnavailableError(
        f"no shard answered within the deadline (shards {missing})", retryable=False
    )


def _degraded_reason(mode: str, exc: BaseException) -> str:
    detail = exc.message if isinstance(exc, VisearchError) else "no answer within the deadline"
    log.warning("re-rank degraded", extra={"fields": {"mode": mode, "error": detail}})
    return f"{mode} re-rank failed, global order returned: {detail}"


def _check_same_settings(
    existing: CollectionConfig, asked: dict[str, object], exact: dict[str, object]
) -> None:
    """A create of an existing collection is idempotent only if every setting it names
    (`asked`: the non-empty, non-zero ones; `exact`: all) equals the collection's."""
    named = {k: v for k, v in asked.items() if v not in ("", 0, False)} | exact
    differ = [
        f"{field} is {getattr(existing, field)!r}, asked {value!r}"
        for field, value in named.items()
        if getattr(existing, field) != value
    ]
    if differ:
        raise AlreadyExistsError(
            f"collection {existing.name!r} exists with other settings ({'; '.join(differ)}); "
            "create it under another name, or re-embed / reshard it to change those"
        )


def _expansion_for(
    config: CollectionConfig, requested: qe.QueryExpansion | None, mode: str
) -> qe.QueryExpansion:
    """The search's query expansion: its own (validated), else the collection's."""
    if requested is None:
        return qe.QueryExpansion(config.qe_top_n, config.qe_alpha, config.qe_verified)
    qe.check(requested)
    if requested.verified and mode != "geometric":
        raise InvalidArgumentError(
            f"verified query expansion needs geometric re-ranking, but this search re-ranks "
            f"with {mode!r}: set rerank to geometric, or verified to false"
        )
    return requested


def _reranked_hits(hits: list[Hit], reranked: list[RerankOutput]) -> list[Hit]:
    """The verifier's order and evidence on the hits' metadata (ids it does not know dropped)."""
    by_id = {hit.id: hit for hit in hits}
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
            matches=r.matches,
            inlier_ratio=r.inlier_ratio,
            predicted_label=r.predicted_label,
            label_margin=r.label_margin,
            inlier_keypoints=r.inlier_keypoints,
        )
        for r in reranked
        if r.id in by_id
    ]


def _naming_items(call: Callable[[], ResultT], items: list[IngestItem]) -> ResultT:
    """Makes an embedder call; an 'image N' in its error becomes the item's id."""
    try:
        return call()
    except VisearchError as exc:
        message = exc.message
        for position in range(len(items) - 1, -1, -1):
            message = message.replace(f"image {position}:", f"item {items[position].id!r}:")
        raise type(exc)(message) from exc


def _ms_since(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 3)
