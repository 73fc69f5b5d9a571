"""gRPC adapter for the embedder core."""

from __future__ import annotations

import grpc
import numpy as np

from services.common.grpc_server import LoadingSlot
from services.common.proto_convert import local_features_to_proto, vectors_to_proto
from services.embedder.core import EmbedderCore
from visearch.v1 import embedder_pb2, embedder_pb2_grpc


class EmbedderServicer(embedder_pb2_grpc.EmbedderServicer):
    def __init__(self, slot: LoadingSlot[EmbedderCore]) -> None:
        self._slot = slot

    def EmbedGlobal(
        self, request: embedder_pb2.EmbedGlobalRequest, context: grpc.ServicerContext
    ) -> embedder_pb2.EmbedGlobalResponse:
        embedded = self._slot.get().embed_with(
            list(request.images), request.model_version, timeout=context.time_remaining()
        )
        return embedder_pb2.EmbedGlobalResponse(
            embeddings=vectors_to_proto(embedded.vectors),
            dims=embedded.manifest.output_dims,
            model_version=embedded.manifest.version,
        )

    def ExtractLocal(
        self, request: embedder_pb2.ExtractLocalRequest, context: grpc.ServicerContext
    ) -> embedder_pb2.ExtractLocalResponse:
        features = self._slot.get().extract_local(
            list(request.images),
            request.feature_type,
            request.max_features,
            rotations=tuple(request.rotations),
        )
        return embedder_pb2.ExtractLocalResponse(
            features=[local_features_to_proto(f) for f in features]
        )

    def ExtractTexture(
        self, request: embedder_pb2.ExtractTextureRequest, context: grpc.ServicerContext
    ) -> embedder_pb2.ExtractTextureResponse:
        histograms, texture_type = self._slot.get().extract_texture(list(request.images))
        return embedder_pb2.ExtractTextureResponse(
            histograms=vectors_to_proto(np.stack(histograms)), texture_type=texture_type
        )

    def Extract(
        self, request: embedder_pb2.ExtractRequest, context: grpc.ServicerContext
    ) -> embedder_pb2.ExtractResponse:
        extracted = self._slot.get().extract(
            list(request.images),
            request.model_version,
            request.feature_type,
            request.max_features,
            texture=request.texture,
            timeout=context.time_remaining(),
        )
        return embedder_pb2.ExtractResponse(
            embeddings=vectors_to_proto(extracted.vectors),
            dims=extracted.manifest.output_dims,
            model_version=extracted.manifest.version,
            features=[local_features_to_proto(f) for f in extracted.features],
            histograms=(
                vectors_to_proto(np.stack(extracted.textures)) if extracted.textures else []
            ),
            texture_type=extracted.texture_type,
        )

    def Stats(
        self, request: embedder_pb2.EmbedderStatsRequest, context: grpc.ServicerContext
    ) -> embedder_pb2.EmbedderStatsResponse:
        core = self._slot.get()
        return embedder_pb2.EmbedderStatsResponse(
            model_version=core.model_version,
            dims=core.dims,
            providers=core.model.providers,
            images_embedded=core.images_embedded,
            loaded_versions=core.models.loaded_versions(),
            images_by_version=core.embedded_by_version(),
        )
