"""A small typed client for the visearch gateway.

    with VisearchClient("127.0.0.1:50051") as client:
        client.ingest("shoes", [IngestItem("a-1", image=open("a.jpg", "rb").read(), label="a")])
        result = client.search("shoes", open("q.jpg", "rb").read(), k=5)

Errors arrive as the VisearchError subclass of their status code
(InvalidArgumentError, NotFoundError, UnavailableError, ...). Calls that are
safe to repeat are retried on UNAVAILABLE by gRPC's retry policy; ingest is
idempotent by id, so it is retried too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import grpc
import numpy as np

from services.common.api_keys import API_KEY_ENV
from services.common.config import DEFAULT_MAX_IMAGE_BYTES, GRPC_MESSAGE_OVERHEAD_BYTES
from services.common.errors import (  # noqa: F401 - re-exported for callers
    AlreadyExistsError,
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
    VisearchError,
)
from services.common.grpc_client import call, error_from_rpc, make_channel
from services.common.index_types import NO_OVERRIDES, IndexOverrides
from services.common.proto_convert import (
    RERANK_MODE_NAMES,
    RERANK_MODES_BY_NAME,
    index_params_to_proto,
)
from services.common.tls import TlsConfig
from services.gateway.query_expansion import DEFAULT_ALPHA as DEFAULT_QE_ALPHA
from services.gateway.query_expansion import OFF as QE_OFF
from services.gateway.query_expansion import QueryExpansion
from visearch.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc


@dataclass(frozen=True)
class IngestItem:
    id: str
    image: bytes = b""
    object_key: str = ""
    label: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class IngestResult:
    id: str
    sha256: str
    shard: int
    replaced: bool


@dataclass(frozen=True, eq=False)
class Hit:
    """One result. Geometric evidence: inliers, matches, inlier_ratio (and, when asked for
    with return_matches, inlier_keypoints: float32 [n, 4] rows of query x, y, hit x, y in
    original pixels). Texture evidence: predicted_label and its SVC label_margin."""

    id: str
    score: float
    label: str
    attributes: dict[str, str]
    global_score: float
    inliers: int
    reason: str
    sha256: str
    matches: int = 0
    inlier_ratio: float = 0.0
    predicted_label: str = ""
    label_margin: float = 0.0
    inlier_keypoints: np.ndarray | None = None


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    partial: bool
    missing_shards: list[int]
    timings_ms: dict[str, float]
    model_version: str
    # The re-rank failed (verifier down or too slow): hits in the global order, and why.
    rerank_degraded: bool = False
    rerank_degraded_reason: str = ""


@dataclass(frozen=True)
class ImageRecord:
    id: str
    sha256: str
    label: str
    attributes: dict[str, str]
    model_version: str
    shard: int
    ingested_at: float


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    model_version: str
    shards: int
    default_rerank: str
    local_feature_type: str
    rerank_depth: int
    # 0 = chosen from each shard's size.
    exact_threshold: int = 0
    num_leaves: int = 0
    leaves_to_search: int = 0
    reorder: int = 0
    # Re-embedding: the vectors' generation, and the version a running re-embed targets.
    generation: int = 0
    pending_model_version: str = ""
    # > 0 while a reshard to this many shards runs.
    target_shards: int = 0
    # LBP texture histograms stored at ingest (needed by rerank="texture").
    texture_features: bool = False
    # Query expansion of searches that set none (services/gateway/query_expansion.py).
    query_expansion: QueryExpansion = QE_OFF
    # Database-side augmentation (services/gateway/dba.py): top_n 0 = off; the pass searches
    # use (0 = none) and the one being built (0 = none).
    dba_top_n: int = 0
    dba_alpha: float = DEFAULT_QE_ALPHA
    dba_pass: int = 0
    dba_pending_pass: int = 0


@dataclass(frozen=True)
class AugmentProgress:
    """One step of `VisearchClient.augment_database` (phases: started, augmenting,
    published, done, off)."""

    collection: str
    phase: str
    dba_pass: int
    total: int
    done: int


@dataclass(frozen=True)
class ReembedProgress:
    """One step of `VisearchClient.reembed` (phases: started, resumed, embedding,
    switched, done, noop)."""

    collection: str
    model_version: str
    previous_model_version: str
    phase: str
    generation: int
    total: int
    done: int
    batches_total: int
    batches_done: int
    batches_skipped: int


@dataclass(frozen=True)
class ReshardProgress:
    """A reshard's state (phase: none, copying, cleaning, done, failed)."""

    collection: str
    from_shards: int
    to_shards: int
    phase: str
    running: bool
    scanned: int
    total: int
    copied: int
    skipped: int
    removed: int
    error: str


def _reshard(message: gateway_pb2.ReshardStatus) -> ReshardProgress:
    return ReshardProgress(
        message.collection,
        message.from_shards,
        message.to_shards,
        message.phase,
        message.running,
        message.scanned,
        message.total,
        message.copied,
        message.skipped,
        message.removed,
        message.error,
    )


@dataclass(frozen=True)
class ShardStats:
    shard: int
    size: int
    method: str
    available: bool


@dataclass(frozen=True)
class Stats:
    collection: CollectionInfo
    images: int
    shards: list[ShardStats]


def _image(data: bytes, object_key: str) -> common_pb2.Image:
    return common_pb2.Image(object_key=object_key) if object_key else common_pb2.Image(data=data)


def _collection(message: gateway_pb2.Collection) -> CollectionInfo:
    return CollectionInfo(
        name=message.name,
        model_version=message.model_version,
        shards=message.shards,
        default_rerank=RERANK_MODE_NAMES[message.default_rerank],
        local_feature_type=message.local_feature_type,
        rerank_depth=message.rerank_depth,
        exact_threshold=message.index_params.exact_threshold,
        num_leaves=message.index_params.num_leaves,
        leaves_to_search=message.index_params.leaves_to_search,
        reorder=message.index_params.reorder,
        generation=message.generation,
        pending_model_version=message.pending_model_version,
        target_shards=message.target_shards,
        texture_features=message.texture_features,
        query_expansion=query_expansion_from_proto(message.query_expansion),
        dba_top_n=message.dba_top_n,
        dba_alpha=message.dba_alpha,
        dba_pass=message.dba_pass,
        dba_pending_pass=message.dba_pending_pass,
    )


def _query_expansion_proto(settings: QueryExpansion) -> gateway_pb2.QueryExpansion:
    return gateway_pb2.QueryExpansion(
        top_n=settings.top_n, alpha=settings.alpha, verified=settings.verified
    )


def query_expansion_from_proto(message: gateway_pb2.QueryExpansion) -> QueryExpansion:
    """An unset alpha is the default one."""
    return QueryExpansion(
        top_n=message.top_n,
        alpha=message.alpha if message.HasField("alpha") else DEFAULT_QE_ALPHA,
        verified=message.verified,
    )


def _keypoints(data: bytes) -> np.ndarray | None:
    """Little-endian float32 [n, 4] rows, or None when the server sent none."""
    if not data:
        return None
    return np.frombuffer(data, dtype="<f4").reshape(-1, 4).astype(np.float32)


@dataclass(frozen=True)
class ApiKeyInfo:
    """An API key's record (never its secret): grants are "<role>:<collection>"."""

    id: str
    name: str
    grants: list[str]
    created_at: float
    revoked_at: float = 0.0


def _api_key(message: gateway_pb2.ApiKey) -> ApiKeyInfo:
    return ApiKeyInfo(
        message.id, message.name, list(message.grants), message.created_at, message.revoked_at
    )


class _BearerKey(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds `authorization: Bearer <key>` to every call."""

    def __init__(self, key: str) -> None:
        self._entry = ("authorization", f"Bearer {key}")

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        call_details = _CallDetails()
        for name in ("method", "timeout", "credentials", "wait_for_ready", "compression"):
            setattr(call_details, name, getattr(details, name, None))
        call_details.metadata = [*(details.metadata or ()), self._entry]
        return call_details

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request)


class _CallDetails(grpc.ClientCallDetails):
    """A call's details with the key added to its metadata."""


class VisearchClient:
    """Thread-safe; share one per process."""

    def __init__(
        self,
        address: str,
        *,
        timeout_s: float = 30.0,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        tls: TlsConfig | None = None,
        api_key: str | None = None,
    ) -> None:
        """api_key: sent as `authorization: Bearer <key>` on every call (None: the
        VISEARCH_API_KEY environment variable; "" or unset: none).

        tls: reach a gateway that serves TLS: `TlsConfig(ca="ca.pem")` verifies it
        against that CA (the system roots when `ca` is empty); `cert` and `key` add a client
        certificate (mutual TLS). `TlsConfig.gateway_client_from_env(os.environ)` reads them
        from VISEARCH_GATEWAY_TLS_CA / _CERT / _KEY / _SERVER_NAME. None: plaintext."""
        self.address = address
        self.timeout_s = timeout_s
        # A server that sheds load answers RESOURCE_EXHAUSTED: retried after its pushback.
        self._channel = make_channel(
            address, max_image_bytes + GRPC_MESSAGE_OVERHEAD_BYTES, tls=tls, retry_shed=True
        )
        key = os.environ.get(API_KEY_ENV, "") if api_key is None else api_key
        channel = (
            grpc.intercept_channel(self._channel, _BearerKey(key.strip()))
            if key.strip()
            else self._channel
        )
        self._stub = gateway_pb2_grpc.GatewayStub(channel)

    def __enter__(self) -> VisearchClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: object, request: object, timeout_s: float | None) -> object:
        return call(method, request, timeout=timeout_s or self.timeout_s, peer="")  # type: ignore[arg-type]

    def create_collection(
        self,
        name: str,
        *,
        default_rerank: str = "",
        local_feature_type: str = "",
        rerank_depth: int = 0,
        index: IndexOverrides = NO_OVERRIDES,
        texture_features: bool = False,
        query_expansion: QueryExpansion | None = None,
        model_version: str = "",
        timeout_s: float | None = None,
    ) -> CollectionInfo:
        """Creates a collection. On an existing name it returns that collection when every
        setting given here (non-empty, non-zero; query_expansion when not None) matches it,
        else raises AlreadyExistsError naming the differences.

        default_rerank: "none" (the default when empty), "geometric" or "texture".

        model_version: the global model it is embedded with (empty = the gateway's default).
        index: per-collection index settings (exact threshold, ScaNN leaves, re-order);
        zeros are chosen from each shard's size.
        texture_features: store LBP texture histograms at ingest, which rerank="texture"
        needs (on by itself when default_rerank is "texture").
        query_expansion: what searches that set none use; None = the gateway's default (off
        unless the gateway is configured otherwise; see docs/query_expansion.md).
        """
        if default_rerank not in RERANK_MODES_BY_NAME:
            raise InvalidArgumentError(
                "default_rerank must be one of none, geometric, texture (or empty), "
                f"got {default_rerank!r}"
            )
        request = gateway_pb2.CreateCollectionRequest(
            name=name,
            default_rerank=RERANK_MODES_BY_NAME[default_rerank],
            local_feature_type=local_feature_type,
            rerank_depth=rerank_depth,
            index_params=index_params_to_proto(index),
            texture_features=texture_features,
            model_version=model_version,
            query_expansion=None
            if query_expansion is None
            else _query_expansion_proto(query_expansion),
        )
        return _collection(self._call(self._stub.CreateCollection, request, timeout_s))  # type: ignore[arg-type]

    def ingest(
        self,
        collection: str,
        items: list[IngestItem],
        *,
        create_collection: bool = True,
        timeout_s: float | None = None,
    ) -> list[IngestResult]:
        request = gateway_pb2.IngestRequest(
            collection=collection,
            create_collection=create_collection,
            items=[
                gateway_pb2.IngestItem(
                    id=item.id,
                    image=_image(item.image, item.object_key),
                    label=item.label,
                    attributes=item.attributes,
                )
                for item in items
            ],
        )
        response = self._call(self._stub.Ingest, request, timeout_s)
        return [
            IngestResult(r.id, r.sha256, r.shard, r.replaced)
            for r in response.results  # type: ignore[attr-defined]
        ]

    def search(
        self,
        collection: str,
        image: bytes = b"",
        *,
        object_key: str = "",
        k: int = 10,
        rerank: str = "",
        require_complete: bool = False,
        label: str = "",
        attributes: dict[str, str] | None = None,
        return_matches: bool = False,
        query_expansion: QueryExpansion | None = None,
        timeout_s: float | None = None,
    ) -> SearchResult:
        """rerank: "" (collection default), "none", "geometric" or "texture".

        label / attributes: search only items with that label and all those attributes.
        return_matches: with geometric re-rank, fill each hit's inlier_keypoints.
        query_expansion: this search's (top_n 0 = no alpha-QE); None = the collection's.
        """
        if rerank not in RERANK_MODES_BY_NAME:
            raise InvalidArgumentError(
                f"rerank must be one of none, geometric, texture (or empty), got {rerank!r}"
            )
        request = gateway_pb2.SearchRequest(
            collection=collection,
            image=_image(image, object_key),
            k=k,
            rerank=RERANK_MODES_BY_NAME[rerank],
            require_complete=require_complete,
            filter=common_pb2.Filter(label=label, attributes=attributes or {}),
            return_matches=return_matches,
            query_expansion=None
            if query_expansion is None
            else _query_expansion_proto(query_expansion),
        )
        response: gateway_pb2.SearchResponse = self._call(self._stub.Search, request, timeout_s)  # type: ignore[assignment]
        return SearchResult(
            hits=[
                Hit(
                    id=h.id,
                    score=h.score,
                    label=h.label,
                    attributes=dict(h.attributes),
                    global_score=h.global_score,
                    inliers=h.inliers,
                    reason=h.reason,
                    sha256=h.sha256,
                    matches=h.matches,
                    inlier_ratio=h.inlier_ratio,
                    predicted_label=h.predicted_label,
                    label_margin=h.label_margin,
                    inlier_keypoints=_keypoints(h.inlier_keypoints),
                )
                for h in response.hits
            ],
            partial=response.partial,
            missing_shards=list(response.missing_shards),
            timings_ms=dict(response.timings_ms),
            model_version=response.model_version,
            rerank_degraded=response.rerank_degraded,
            rerank_degraded_reason=response.rerank_degraded_reason,
        )

    def delete(
        self, collection: str, ids: list[str], *, timeout_s: float | None = None
    ) -> tuple[int, list[str]]:
        """Returns (deleted, ids that were not found)."""
        request = gateway_pb2.DeleteRequest(collection=collection, ids=ids)
        response: gateway_pb2.DeleteResponse = self._call(self._stub.Delete, request, timeout_s)  # type: ignore[assignment]
        return response.deleted, list(response.not_found)

    def get(self, collection: str, image_id: str, *, timeout_s: float | None = None) -> ImageRecord:
        request = gateway_pb2.GetRequest(collection=collection, id=image_id)
        r: gateway_pb2.ImageRecord = self._call(self._stub.Get, request, timeout_s)  # type: ignore[assignment]
        return ImageRecord(
            r.id, r.sha256, r.label, dict(r.attributes), r.model_version, r.shard, r.ingested_at
        )

    def get_image(self, collection: str, image_id: str, *, timeout_s: float | None = None) -> bytes:
        """The original bytes of an ingested image."""
        request = gateway_pb2.GetRequest(collection=collection, id=image_id)
        r: gateway_pb2.ImageData = self._call(self._stub.GetImage, request, timeout_s)  # type: ignore[assignment]
        return r.data

    def reembed(
        self,
        collection: str,
        model_version: str,
        *,
        batch_size: int = 0,
        max_images_per_second: float = 0.0,
        drop_grace_s: float = -1.0,
        timeout_s: float | None = None,
    ) -> Iterator[ReembedProgress]:
        """Re-embeds a collection with `model_version` and switches to it, yielding progress.

        Resumable: after a crash (or closing this iterator), call it again to continue.
        timeout_s None = no deadline (the job may run for hours).
        """
        request = gateway_pb2.ReembedRequest(
            collection=collection,
            model_version=model_version,
            batch_size=batch_size,
            max_images_per_second=max_images_per_second,
            drop_grace_seconds=drop_grace_s,
        )
        stream = self._stub.Reembed(request, timeout=timeout_s)
        try:
            for p in stream:
                yield ReembedProgress(
                    p.collection,
                    p.model_version,
                    p.previous_model_version,
                    p.phase,
                    p.generation,
                    p.total,
                    p.done,
                    p.batches_total,
                    p.batches_done,
                    p.batches_skipped,
                )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, "") from exc
        finally:
            stream.cancel()

    def augment_database(
        self,
        collection: str,
        top_n: int,
        *,
        alpha: float = DEFAULT_QE_ALPHA,
        page_size: int = 0,
        drop_grace_s: float = -1.0,
        timeout_s: float | None = None,
    ) -> Iterator[AugmentProgress]:
        """Runs one database-side augmentation pass (top_n 1..50 neighbours, weights
        similarity^alpha), yielding progress; top_n 0 turns DBA off. Searches switch to the
        new augmented vectors when the pass publishes. timeout_s None = no deadline.
        """
        request = gateway_pb2.AugmentDatabaseRequest(
            collection=collection,
            top_n=top_n,
            alpha=alpha,
            page_size=page_size,
            drop_grace_seconds=drop_grace_s,
        )
        stream = self._stub.AugmentDatabase(request, timeout=timeout_s)
        try:
            for p in stream:
                yield AugmentProgress(p.collection, p.phase, p.dba_pass, p.total, p.done)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, "") from exc
        finally:
            stream.cancel()

    def reshard(
        self, collection: str, shards: int, *, timeout_s: float | None = None
    ) -> ReshardProgress:
        """Starts (or resumes) moving the collection to `shards` shards; returns at once.
        Poll `reshard_status` until its phase is done (or failed: call this again)."""
        request = gateway_pb2.ReshardRequest(collection=collection, shards=shards)
        return _reshard(self._call(self._stub.Reshard, request, timeout_s))  # type: ignore[arg-type]

    def reshard_status(self, collection: str, *, timeout_s: float | None = None) -> ReshardProgress:
        request = gateway_pb2.GetReshardStatusRequest(collection=collection)
        return _reshard(self._call(self._stub.GetReshardStatus, request, timeout_s))  # type: ignore[arg-type]

    def create_api_key(
        self, name: str, grants: list[str], *, timeout_s: float | None = None
    ) -> tuple[str, ApiKeyInfo]:
        """A new key (shown only now: the gateway keeps its hash) with grants such as
        "read:shoes" or "admin:*"; needs admin:*."""
        request = gateway_pb2.CreateApiKeyRequest(name=name, grants=grants)
        r: gateway_pb2.CreatedApiKey = self._call(self._stub.CreateApiKey, request, timeout_s)  # type: ignore[assignment]
        return r.secret, _api_key(r.key)

    def list_api_keys(self, *, timeout_s: float | None = None) -> list[ApiKeyInfo]:
        request = gateway_pb2.ListApiKeysRequest()
        r: gateway_pb2.ListApiKeysResponse = self._call(self._stub.ListApiKeys, request, timeout_s)  # type: ignore[assignment]
        return [_api_key(k) for k in r.keys]

    def revoke_api_key(self, key_id: str, *, timeout_s: float | None = None) -> ApiKeyInfo:
        request = gateway_pb2.RevokeApiKeyRequest(id=key_id)
        return _api_key(self._call(self._stub.RevokeApiKey, request, timeout_s))  # type: ignore[arg-type]

    def stats(self, collection: str, *, timeout_s: float | None = None) -> Stats:
        request = gateway_pb2.StatsRequest(collection=collection)
        r: gateway_pb2.StatsResponse = self._call(self._stub.Stats, request, timeout_s)  # type: ignore[assignment]
        return Stats(
            collection=_collection(r.collection),
            images=r.images,
            shards=[ShardStats(s.shard, s.size, s.method, s.available) for s in r.shards],
        )
