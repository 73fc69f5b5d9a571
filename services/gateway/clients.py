"""gRPC adapters that implement the gateway core's ports."""

from __future__ import annotations

import grpc
import numpy as np

from services.common.grpc_client import call, make_channel
from services.common.index_types import IndexOverrides, ItemMeta, SearchFilter
from services.common.local_features import LocalFeatures
from services.common.proto_convert import (
    RERANK_MODES_BY_NAME,
    filter_to_proto,
    index_params_to_proto,
    local_features_from_proto,
    local_features_to_proto,
    metadata_to_proto,
    vectors_from_proto,
    vectors_to_proto,
)
from services.gateway.ports import (
    GlobalEmbeddings,
    RerankInput,
    RerankOutput,
    ShardHit,
    ShardInfo,
)
from visearch.v1 import (
    embedder_pb2,
    embedder_pb2_grpc,
    indexer_pb2,
    indexer_pb2_grpc,
    verifier_pb2,
    verifier_pb2_grpc,
)


class GrpcEmbedder:
    def __init__(self, address: str, max_message_bytes: int) -> None:
        self.channel: grpc.Channel = make_channel(address, max_message_bytes)
        self._stub = embedder_pb2_grpc.EmbedderStub(self.channel)

    def embed_global(self, images: list[bytes], timeout: float | None) -> GlobalEmbeddings:
        response = call(
            self._stub.EmbedGlobal,
            embedder_pb2.EmbedGlobalRequest(images=images),
            timeout=timeout,
            peer="embedder",
        )
        return GlobalEmbeddings(vectors_from_proto(response.embeddings), response.model_version)

    def extract_local(
        self, images: list[bytes], feature_type: str, timeout: float | None
    ) -> list[LocalFeatures]:
        response = call(
            self._stub.ExtractLocal,
            embedder_pb2.ExtractLocalRequest(images=images, feature_type=feature_type),
            timeout=timeout,
            peer="embedder",
        )
        return [local_features_from_proto(f) for f in response.features]


class GrpcShard:
    def __init__(self, shard: int, address: str, max_message_bytes: int) -> None:
        self.shard = shard
        self.channel: grpc.Channel = make_channel(address, max_message_bytes)
        self._stub = indexer_pb2_grpc.IndexerStub(self.channel)
        self._peer = f"shard {shard}"

    def upsert(
        self,
        collection: str,
        ids: list[str],
        vectors: np.ndarray,
        metadata: list[ItemMeta],
        overrides: IndexOverrides,
        timeout: float | None,
    ) -> None:
        request = indexer_pb2.UpsertRequest(
            collection=collection,
            ids=ids,
            vectors=vectors_to_proto(vectors),
            metadata=[metadata_to_proto(m.label, m.attributes) for m in metadata],
            params=index_params_to_proto(overrides),
        )
        call(self._stub.Upsert, request, timeout=timeout, peer=self._peer)

    def delete(self, collection: str, ids: list[str], timeout: float | None) -> int:
        request = indexer_pb2.IndexDeleteRequest(collection=collection, ids=ids)
        return call(self._stub.Delete, request, timeout=timeout, peer=self._peer).deleted

    def search(
        self,
        collection: str,
        queries: np.ndarray,
        k: int,
        search_filter: SearchFilter,
        timeout: float | None,
    ) -> list[list[ShardHit]]:
        request = indexer_pb2.IndexSearchRequest(
            collection=collection,
            queries=vectors_to_proto(queries),
            k=k,
            filter=filter_to_proto(search_filter.label, search_filter.attributes),
        )
        response = call(self._stub.Search, request, timeout=timeout, peer=self._peer)
        return [[ShardHit(n.id, n.score) for n in result.neighbors] for result in response.results]

    def stats(self, collection: str, timeout: float | None) -> ShardInfo:
        response = call(
            self._stub.Stats, indexer_pb2.IndexStatsRequest(), timeout=timeout, peer=self._peer
        )
        for entry in response.collections:
            if entry.collection == collection:
                return ShardInfo(self.shard, entry.size, entry.method)
        return ShardInfo(self.shard, 0, "exact")


class GrpcVerifier:
    def __init__(self, address: str, max_message_bytes: int) -> None:
        self.channel: grpc.Channel = make_channel(address, max_message_bytes)
        self._stub = verifier_pb2_grpc.VerifierStub(self.channel)

    def rerank(
        self, query: LocalFeatures, candidates: list[RerankInput], timeout: float | None
    ) -> list[RerankOutput]:
        request = verifier_pb2.RerankRequest(
            query=local_features_to_proto(query),
            mode=RERANK_MODES_BY_NAME["geometric"],
            candidates=[
                verifier_pb2.RerankCandidate(id=c.id, sha256=c.sha256, global_score=c.global_score)
                for c in candidates
            ],
        )
        response = call(self._stub.Rerank, request, timeout=timeout, peer="verifier")
        return [
            RerankOutput(c.id, c.score, c.global_score, c.inliers, c.reason)
            for c in response.candidates
        ]
