"""gRPC adapter for the gateway core: protos in, domain types through, protos out."""

from __future__ import annotations

import grpc

from services.common.grpc_server import LoadingSlot
from services.common.index_types import SearchFilter
from services.common.metadata import CollectionConfig
from services.common.proto_convert import (
    RERANK_MODE_NAMES,
    RERANK_MODES_BY_NAME,
    index_params_from_proto,
    index_params_to_proto,
)
from services.gateway.core import GatewayCore, index_overrides
from services.gateway.ports import IngestItem, SearchQuery
from visearch.v1 import gateway_pb2, gateway_pb2_grpc


def _collection_proto(config: CollectionConfig) -> gateway_pb2.Collection:
    return gateway_pb2.Collection(
        name=config.name,
        model_version=config.model_version,
        shards=config.shards,
        default_rerank=RERANK_MODES_BY_NAME[config.default_rerank],
        local_feature_type=config.local_feature_type,
        rerank_depth=config.rerank_depth,
        index_params=index_params_to_proto(index_overrides(config)),
    )


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    def __init__(self, slot: LoadingSlot[GatewayCore]) -> None:
        self._slot = slot

    def CreateCollection(
        self, request: gateway_pb2.CreateCollectionRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.Collection:
        config = self._slot.get().create_collection(
            request.name,
            RERANK_MODE_NAMES[request.default_rerank],
            request.local_feature_type,
            request.rerank_depth,
            index_params_from_proto(request.index_params),
        )
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
        outcomes = self._slot.get().ingest(
            request.collection, items, request.create_collection, context.time_remaining()
        )
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
            rerank=RERANK_MODE_NAMES.get(request.rerank, "?"),
            require_complete=request.require_complete,
            search_filter=SearchFilter(request.filter.label, dict(request.filter.attributes)),
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
                )
                for h in outcome.hits
            ],
            partial=outcome.partial,
            missing_shards=outcome.missing_shards,
            timings_ms=outcome.timings_ms,
            model_version=outcome.model_version,
        )

    def Delete(
        self, request: gateway_pb2.DeleteRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.DeleteResponse:
        deleted, not_found = self._slot.get().delete(
            request.collection, list(request.ids), context.time_remaining()
        )
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
