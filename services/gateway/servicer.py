"""gRPC adapter for the gateway core: protos in, domain types through, protos out."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import numpy as np

from services.common.api_keys import ApiKeyRecord, ApiKeys, caller_allowed
from services.common.errors import FailedPreconditionError, InvalidArgumentError, VisearchError
from services.common.grpc_server import LoadingSlot
from services.common.index_types import SearchFilter
from services.common.metadata import CollectionConfig
from services.common.proto_convert import (
    RERANK_MODE_NAMES,
    RERANK_MODES_BY_NAME,
    index_params_from_proto,
    index_params_to_proto,
)
from services.gateway import query_expansion as qe
from services.gateway.core import GatewayCore
from services.gateway.dba import DatabaseAugmenter
from services.gateway.ports import IngestItem, SearchQuery
from services.gateway.reembed import Reembedder
from services.gateway.reshard import ReshardStatus
from visearch.v1 import gateway_pb2, gateway_pb2_grpc


def _collection_proto(config: CollectionConfig) -> gateway_pb2.Collection:
    return gateway_pb2.Collection(
        name=config.name,
        model_version=config.model_version,
        shards=config.shards,
        default_rerank=RERANK_MODES_BY_NAME[config.default_rerank],
        local_feature_type=config.local_feature_type,
        rerank_depth=config.rerank_depth,
        index_params=index_params_to_proto(config.index_overrides()),
        target_shards=config.target_shards,
        generation=config.generation,
        pending_model_version=config.pending_model_version,
        dba_top_n=config.dba_top_n,
        dba_alpha=config.dba_alpha,
        dba_pass=config.dba_pass,
        dba_pending_pass=config.dba_pending_pass,
        texture_features=config.texture_features,
        query_expansion=gateway_pb2.QueryExpansion(
            top_n=config.qe_top_n, alpha=config.qe_alpha, verified=config.qe_verified
        ),
    )


def _rerank_mode(value: int, field: str) -> str:
    """The mode name of a RerankMode enum value; INVALID_ARGUMENT for a value the API lacks."""
    if value not in RERANK_MODE_NAMES:
        names = ", ".join(
            f"{v} ({n or 'unspecified'})" for v, n in sorted(RERANK_MODE_NAMES.items())
        )
        raise InvalidArgumentError(f"{field} {value} is not a RerankMode; use one of {names}")
    return RERANK_MODE_NAMES[value]


def query_expansion_from_proto(message: gateway_pb2.QueryExpansion) -> qe.QueryExpansion:
    """An unset alpha is the default one."""
    return qe.QueryExpansion(
        top_n=message.top_n,
        alpha=message.alpha if message.HasField("alpha") else qe.DEFAULT_ALPHA,
        verified=message.verified,
    )


def _reshard_proto(status: ReshardStatus) -> gateway_pb2.ReshardStatus:
    return gateway_pb2.ReshardStatus(
        collection=status.collection,
        from_shards=status.from_shards,
        to_shards=status.to_shards,
        phase=status.phase,
        running=status.running,
        scanned=status.scanned,
        total=status.total,
        copied=status.copied,
        skipped=status.skipped,
        removed=status.removed,
        error=status.error,
        started_at=status.started_at,
        updated_at=status.updated_at,
    )


def _keypoint_bytes(keypoints: np.ndarray | None) -> bytes:
    """float32 [n, 4] -> little-endian bytes ("" when not asked for)."""
    if keypoints is None:
        return b""
    return np.ascontiguousarray(keypoints, dtype="<f4").tobytes()


def _api_key_proto(record: ApiKeyRecord) -> gateway_pb2.ApiKey:
    return gateway_pb2.ApiKey(
        id=record.id,
        name=record.name,
        grants=[str(g) for g in record.grants],
        created_at=record.created_at,
        revoked_at=record.revoked_at,
    )


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    def __init__(
        self,
        slot: LoadingSlot[GatewayCore],
        reembed: LoadingSlot[Reembedder] | None = None,
        augment: LoadingSlot[DatabaseAugmenter] | None = None,
        api_keys: ApiKeys | None = None,
        ack_barrier: Callable[[], None] | None = None,
    ) -> None:
        """ack_barrier: run before acknowledging an Ingest, Delete or CreateCollection
        (services.common.ack_durability: WAITAOF); None = acknowledge at once."""
        self._slot = slot
        self._reembed = reembed
        self._augment = augment
        self._api_keys = api_keys
        self._ack_barrier = ack_barrier or (lambda: None)

    def _keys(self) -> ApiKeys:
        if self._api_keys is None:
            raise FailedPreconditionError("authentication is off on this gateway (VISEARCH_AUTH)")
        return self._api_keys

    def CreateApiKey(
        self, request: gateway_pb2.CreateApiKeyRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.CreatedApiKey:
        key, record = self._keys().create(request.name, list(request.grants))
        return gateway_pb2.CreatedApiKey(key=_api_key_proto(record), secret=key)

    def ListApiKeys(
        self, request: gateway_pb2.ListApiKeysRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ListApiKeysResponse:
        return gateway_pb2.ListApiKeysResponse(
            keys=[_api_key_proto(r) for r in self._keys().store.list()]
        )

    def RevokeApiKey(
        self, request: gateway_pb2.RevokeApiKeyRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ApiKey:
        return _api_key_proto(self._keys().revoke(request.id))

    def CreateCollection(
        self, request: gateway_pb2.CreateCollectionRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.Collection:
        config = self._slot.get().create_collection(
            request.name,
            _rerank_mode(request.default_rerank, "default_rerank"),
            request.local_feature_type,
            request.rerank_depth,
            index_params_from_proto(request.index_params),
            request.texture_features,
            query_expansion_from_proto(request.query_expansion)
            if request.HasField("query_expansion")
            else None,
            request.model_version,
        )
        self._ack_barrier()
        return _collection_proto(config)

    def Ingest(
        self, request: gateway_pb2.IngestRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.IngestResponse:
        items = [
            IngestItem(
                id=item.id,
                image=item.image.data,
                object_key=item.image.object_key,
                label=item.label,
                attributes=dict(item.attributes),
            )
            for item in request.items
        ]
        # Creating a missing collection is an admin's right; a writer's ingest into a
        # missing collection is FAILED_PRECONDITION.
        create = request.create_collection and caller_allowed(request.collection, "admin")
        outcomes = self._slot.get().ingest(
            request.collection, items, create, context.time_remaining()
        )
        self._ack_barrier()
        return gateway_pb2.IngestResponse(
            results=[
                gateway_pb2.IngestResult(
                    id=o.id, sha256=o.sha256, shard=o.shard, replaced=o.replaced
                )
                for o in outcomes
            ]
        )

    def Search(
        self, request: gateway_pb2.SearchRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.SearchResponse:
        query = SearchQuery(
            collection=request.collection,
            image=request.image.data,
            object_key=request.image.object_key,
            k=request.k,
            rerank=_rerank_mode(request.rerank, "rerank"),
            require_complete=request.require_complete,
            search_filter=SearchFilter(request.filter.label, dict(request.filter.attributes)),
            return_matches=request.return_matches,
            query_expansion=query_expansion_from_proto(request.query_expansion)
            if request.HasField("query_expansion")
            else None,
        )
        outcome = self._slot.get().search(query, context.time_remaining())
        return gateway_pb2.SearchResponse(
            hits=[
                gateway_pb2.SearchHit(
                    id=h.id,
                    score=h.score,
                    label=h.label,
                    attributes=h.attributes,
                    global_score=h.global_score,
                    inliers=h.inliers,
                    reason=h.reason,
                    sha256=h.sha256,
                    matches=h.matches,
                    inlier_ratio=h.inlier_ratio,
                    predicted_label=h.predicted_label,
                    label_margin=h.label_margin,
                    inlier_keypoints=_keypoint_bytes(h.inlier_keypoints),
                )
                for h in outcome.hits
            ],
            partial=outcome.partial,
            missing_shards=outcome.missing_shards,
            timings_ms=outcome.timings_ms,
            model_version=outcome.model_version,
            rerank_degraded=outcome.rerank_degraded,
            rerank_degraded_reason=outcome.rerank_degraded_reason,
        )

    def Delete(
        self, request: gateway_pb2.DeleteRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.DeleteResponse:
        deleted, not_found = self._slot.get().delete(
            request.collection, list(request.ids), context.time_remaining()
        )
        self._ack_barrier()
        return gateway_pb2.DeleteResponse(deleted=deleted, not_found=not_found)

    def Get(
        self, request: gateway_pb2.GetRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ImageRecord:
        meta = self._slot.get().get(request.collection, request.id)
        return gateway_pb2.ImageRecord(
            id=meta.id,
            sha256=meta.sha256,
            label=meta.label,
            attributes=meta.attributes,
            model_version=meta.model_version,
            shard=meta.shard,
            ingested_at=meta.ingested_at,
        )

    def GetImage(
        self, request: gateway_pb2.GetRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ImageData:
        meta, data = self._slot.get().get_image(request.collection, request.id)
        return gateway_pb2.ImageData(id=meta.id, sha256=meta.sha256, data=data)

    def Stats(
        self, request: gateway_pb2.StatsRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.StatsResponse:
        config, images, infos = self._slot.get().stats(request.collection, context.time_remaining())
        return gateway_pb2.StatsResponse(
            collection=_collection_proto(config),
            images=images,
            shards=[
                gateway_pb2.ShardStats(shard=i, size=info.size, method=info.method, available=True)
                if info is not None
                else gateway_pb2.ShardStats(shard=i, available=False)
                for i, info in enumerate(infos)
            ],
        )

    def Reembed(
        self, request: gateway_pb2.ReembedRequest, context: grpc.ServicerContext
    ) -> Iterator[gateway_pb2.ReembedProgress]:
        """Streams the job's progress; a cancelled stream stops it between batches."""
        try:
            if self._reembed is None:
                raise FailedPreconditionError("this gateway runs no re-embed jobs")
            job = self._reembed.get().run(
                request.collection,
                request.model_version,
                request.batch_size,
                request.max_images_per_second,
                request.drop_grace_seconds,
            )
            for p in job:
                yield gateway_pb2.ReembedProgress(
                    collection=p.collection,
                    model_version=p.model_version,
                    previous_model_version=p.previous_model_version,
                    phase=p.phase,
                    generation=p.generation,
                    total=p.total,
                    done=p.done,
                    batches_total=p.batches_total,
                    batches_done=p.batches_done,
                    batches_skipped=p.batches_skipped,
                )
        except VisearchError as exc:  # the error interceptor handles unary calls only
            context.abort(grpc.StatusCode[exc.status], exc.message)

    def AugmentDatabase(
        self, request: gateway_pb2.AugmentDatabaseRequest, context: grpc.ServicerContext
    ) -> Iterator[gateway_pb2.AugmentDatabaseProgress]:
        """Streams one pass's progress; a cancelled stream stops it between pages (the copy
        that served before keeps serving)."""
        try:
            if self._augment is None:
                raise FailedPreconditionError("this gateway runs no augmentation passes")
            self._slot.get().collection(request.collection)
            job = self._augment.get().run(
                request.collection,
                request.top_n,
                request.alpha if request.HasField("alpha") else qe.DEFAULT_ALPHA,
                request.page_size,
                request.drop_grace_seconds,
            )
            for p in job:
                yield gateway_pb2.AugmentDatabaseProgress(
                    collection=p.collection,
                    phase=p.phase,
                    dba_pass=p.dba_pass,
                    total=p.total,
                    done=p.done,
                )
        except VisearchError as exc:  # the error interceptor handles unary calls only
            context.abort(grpc.StatusCode[exc.status], exc.message)

    def Reshard(
        self, request: gateway_pb2.ReshardRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ReshardStatus:
        core = self._slot.get()
        core.collection(request.collection)
        return _reshard_proto(core.resharder.start(request.collection, request.shards))

    def GetReshardStatus(
        self, request: gateway_pb2.GetReshardStatusRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ReshardStatus:
        core = self._slot.get()
        core.collection(request.collection)
        return _reshard_proto(core.resharder.status(request.collection))
