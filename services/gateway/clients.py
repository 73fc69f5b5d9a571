"""gRPC adapters that implement the gateway core's ports."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np

from services.common.grpc_client import call, error_from_rpc, make_channel
from services.common.index_types import IndexOverrides, ItemMeta, SearchFilter
from services.common.local_features import LocalFeatures
from services.common.proto_convert import (
    RERANK_MODES_BY_NAME,
    filter_to_proto,
    index_params_to_proto,
    local_features_from_proto,
    local_features_to_proto,
    metadata_to_proto,
    vector_from_proto,
    vectors_from_proto,
    vectors_to_proto,
)
from services.common.tls import TlsConfig
from services.gateway.ports import (
    Extraction,
    GlobalEmbeddings,
    RerankInput,
    RerankOutput,
    ShardHit,
    ShardInfo,
    TextureHistograms,
)
from services.gateway.reshard import ShardPage
from visearch.v1 import (
    embedder_pb2,
    embedder_pb2_grpc,
    indexer_pb2,
    indexer_pb2_grpc,
    verifier_pb2,
    verifier_pb2_grpc,
)


class GrpcEmbedder:
    def __init__(self, address: str, max_message_bytes: int, tls: TlsConfig | None = None) -> None:
        self.channel: grpc.Channel = make_channel(address, max_message_bytes, tls=tls)
        self._stub = embedder_pb2_grpc.EmbedderStub(self.channel)

    def embed_global(
        self, images: list[bytes], timeout: float | None, model_version: str = ""
    ) -> GlobalEmbeddings:
        response = call(
            self._stub.EmbedGlobal,
            embedder_pb2.EmbedGlobalRequest(images=images, model_version=model_version),
            timeout=timeout,
            peer="embedder",
        )
        return GlobalEmbeddings(vectors_from_proto(response.embeddings), response.model_version)

    def extract_local(
        self,
        images: list[bytes],
        feature_type: str,
        timeout: float | None,
        rotations: tuple[float, ...] = (),
    ) -> list[LocalFeatures]:
        response = call(
            self._stub.ExtractLocal,
            embedder_pb2.ExtractLocalRequest(
                images=images, feature_type=feature_type, rotations=list(rotations)
            ),
            timeout=timeout,
            peer="embedder",
        )
        return [local_features_from_proto(f) for f in response.features]

    def extract_texture(self, images: list[bytes], timeout: float | None) -> TextureHistograms:
        response = call(
            self._stub.ExtractTexture,
            embedder_pb2.ExtractTextureRequest(images=images),
            timeout=timeout,
            peer="embedder",
        )
        return TextureHistograms(
            [vector_from_proto(h) for h in response.histograms], response.texture_type
        )

    def extract(
        self,
        images: list[bytes],
        model_version: str,
        feature_type: str,
        texture: bool,
        timeout: float | None,
    ) -> Extraction:
        """One Extract call; an embedder that predates it (UNIMPLEMENTED, during a rolling
        upgrade) gets the three separate calls instead."""
        request = embedder_pb2.ExtractRequest(
            images=images, model_version=model_version, feature_type=feature_type, texture=texture
        )
        try:
            response = self._stub.Extract(request, timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:  # type: ignore[attr-defined]
                return self._extract_separately(
                    images, model_version, feature_type, texture, timeout
                )
            raise error_from_rpc(exc, "embedder") from exc
        textures = None
        if texture:
            textures = TextureHistograms(
                [vector_from_proto(h) for h in response.histograms], response.texture_type
            )
        return Extraction(
            GlobalEmbeddings(vectors_from_proto(response.embeddings), response.model_version),
            [local_features_from_proto(f) for f in response.features],
            textures,
        )

    def _extract_separately(
        self,
        images: list[bytes],
        model_version: str,
        feature_type: str,
        texture: bool,
        timeout: float | None,
    ) -> Extraction:
        with ThreadPoolExecutor(max_workers=3) as pool:
            embedded = pool.submit(self.embed_global, images, timeout, model_version)
            features = pool.submit(self.extract_local, images, feature_type, timeout)
            textures = pool.submit(self.extract_texture, images, timeout) if texture else None
            return Extraction(
                embedded.result(), features.result(), textures.result() if textures else None
            )


class GrpcShard:
    def __init__(
        self, shard: int, address: str, max_message_bytes: int, tls: TlsConfig | None = None
    ) -> None:
        self.shard = shard
        self.channel: grpc.Channel = make_channel(address, max_message_bytes, tls=tls)
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
        request = _upsert_request(collection, ids, vectors, metadata, overrides)
        call(self._stub.Upsert, request, timeout=timeout, peer=self._peer)

    def delete(
        self, collection: str, ids: list[str], timeout: float | None, tombstone: bool = False
    ) -> int:
        request = indexer_pb2.IndexDeleteRequest(
            collection=collection, ids=ids, tombstone=tombstone
        )
        return call(self._stub.Delete, request, timeout=timeout, peer=self._peer).deleted

    def copy_if_absent(
        self,
        collection: str,
        ids: list[str],
        vectors: np.ndarray,
        metadata: list[ItemMeta],
        overrides: IndexOverrides,
        fence: str,
        timeout: float | None,
    ) -> int:
        request = _upsert_request(collection, ids, vectors, metadata, overrides, fence)
        return call(self._stub.Upsert, request, timeout=timeout, peer=self._peer).upserted

    def set_copy_fence(self, collection: str, run_id: str, timeout: float | None) -> str:
        request = indexer_pb2.SetCopyFenceRequest(collection=collection, run_id=run_id)
        response = call(self._stub.SetCopyFence, request, timeout=timeout, peer=self._peer)
        return response.previous_run_id

    def fetch(
        self,
        collection: str,
        page_token: str,
        limit: int,
        moved_under_shards: int,
        ids_only: bool,
        timeout: float | None,
    ) -> ShardPage:
        request = indexer_pb2.FetchRequest(
            collection=collection,
            page_token=page_token,
            limit=limit,
            moved_under_shards=moved_under_shards,
            ids_only=ids_only,
        )
        response = call(self._stub.Fetch, request, timeout=timeout, peer=self._peer)
        return ShardPage(
            ids=list(response.ids),
            vectors=vectors_from_proto(response.vectors),
            metadata=[ItemMeta(m.label, dict(m.attributes)) for m in response.metadata],
            next_page_token=response.next_page_token,
            scanned=response.scanned,
            size=response.size,
        )

    def clear_tombstones(self, collection: str, timeout: float | None) -> int:
        request = indexer_pb2.ClearTombstonesRequest(collection=collection)
        return call(self._stub.ClearTombstones, request, timeout=timeout, peer=self._peer).cleared

    def search(
        self,
        collection: str,
        queries: np.ndarray,
        k: int,
        search_filter: SearchFilter,
        timeout: float | None,
        vectors_for_top: int = 0,
    ) -> list[list[ShardHit]]:
        request = indexer_pb2.IndexSearchRequest(
            collection=collection,
            queries=vectors_to_proto(queries),
            k=k,
            filter=filter_to_proto(search_filter.label, search_filter.attributes),
            vectors_for_top=vectors_for_top,
        )
        response = call(self._stub.Search, request, timeout=timeout, peer=self._peer)
        return [
            [ShardHit(n.id, n.score, _vector(n.vector)) for n in result.neighbors]
            for result in response.results
        ]

    def stats(self, collection: str, timeout: float | None) -> ShardInfo:
        response = call(
            self._stub.Stats, indexer_pb2.IndexStatsRequest(), timeout=timeout, peer=self._peer
        )
        for entry in response.collections:
            if entry.collection == collection:
                return ShardInfo(self.shard, entry.size, entry.method)
        return ShardInfo(self.shard, 0, "exact")

    def drop(self, collection: str, timeout: float | None) -> int:
        request = indexer_pb2.DropCollectionRequest(collection=collection)
        return call(self._stub.DropCollection, request, timeout=timeout, peer=self._peer).dropped


class GrpcVerifier:
    def __init__(self, address: str, max_message_bytes: int, tls: TlsConfig | None = None) -> None:
        self.channel: grpc.Channel = make_channel(address, max_message_bytes, tls=tls)
        self._stub = verifier_pb2_grpc.VerifierStub(self.channel)

    def rerank(
        self,
        query: LocalFeatures,
        candidates: list[RerankInput],
        timeout: float | None,
        return_matches: bool = False,
    ) -> list[RerankOutput]:
        request = verifier_pb2.RerankRequest(
            query=local_features_to_proto(query),
            mode=RERANK_MODES_BY_NAME["geometric"],
            candidates=_candidates_proto(candidates),
            return_matches=return_matches,
        )
        response = call(self._stub.Rerank, request, timeout=timeout, peer="verifier")
        return [_rerank_output(c) for c in response.candidates]

    def rerank_texture(
        self,
        query: np.ndarray,
        texture_type: str,
        query_sha256: str,
        candidates: list[RerankInput],
        timeout: float | None,
    ) -> list[RerankOutput]:
        request = verifier_pb2.RerankRequest(
            mode=RERANK_MODES_BY_NAME["texture"],
            candidates=_candidates_proto(candidates),
            query_texture=vectors_to_proto(query[None, :])[0],
            texture_type=texture_type,
            query_sha256=query_sha256,
        )
        response = call(self._stub.Rerank, request, timeout=timeout, peer="verifier")
        return [_rerank_output(c) for c in response.candidates]


def _vector(data: bytes) -> np.ndarray | None:
    """Packed float32 little-endian bytes -> float32 [dims] (None when empty)."""
    return np.frombuffer(data, dtype="<f4").astype(np.float32) if data else None


def _candidates_proto(candidates: list[RerankInput]) -> list[verifier_pb2.RerankCandidate]:
    return [
        verifier_pb2.RerankCandidate(
            id=c.id, sha256=c.sha256, global_score=c.global_score, label=c.label
        )
        for c in candidates
    ]


def _rerank_output(c: verifier_pb2.RerankedCandidate) -> RerankOutput:
    keypoints = None
    if c.inlier_keypoints:
        keypoints = np.frombuffer(c.inlier_keypoints, dtype="<f4").reshape(-1, 4).astype(np.float32)
    return RerankOutput(
        c.id,
        c.score,
        c.global_score,
        c.inliers,
        c.reason,
        matches=c.matches,
        inlier_ratio=c.inlier_ratio,
        predicted_label=c.predicted_label,
        label_margin=c.label_margin,
        inlier_keypoints=keypoints,
    )


def _upsert_request(
    collection: str,
    ids: list[str],
    vectors: np.ndarray,
    metadata: list[ItemMeta],
    overrides: IndexOverrides,
    copy_fence: str = "",
) -> indexer_pb2.UpsertRequest:
    """vectors: float32 [n, d], one row per id; copy_fence: a reshard run's id for a copy
    (only-if-absent upsert), "" for an ordinary upsert."""
    return indexer_pb2.UpsertRequest(
        collection=collection,
        ids=ids,
        vectors=vectors_to_proto(vectors),
        metadata=[metadata_to_proto(m.label, m.attributes) for m in metadata],
        params=index_params_to_proto(overrides),
        only_if_absent=bool(copy_fence),
        copy_fence=copy_fence,
    )
