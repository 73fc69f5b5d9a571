"""GrpcEmbedder.extract against an embedder that predates the Extract RPC (rolling upgrade)."""

from concurrent import futures

import grpc
import numpy as np

from services.common.proto_convert import local_features_to_proto, vectors_to_proto
from services.embedder.rootsift import _empty_features
from services.gateway.clients import GrpcEmbedder
from visearch.v1 import common_pb2, embedder_pb2, embedder_pb2_grpc


class OldEmbedder(embedder_pb2_grpc.EmbedderServicer):
    """The three per-output RPCs only; answers with the old repeated-float vectors."""

    def __init__(self):
        self.calls = []

    def EmbedGlobal(self, request, context):
        self.calls.append("EmbedGlobal")
        rows = [common_pb2.Vector(values=[float(i), 1.0]) for i in range(len(request.images))]
        return embedder_pb2.EmbedGlobalResponse(embeddings=rows, dims=2, model_version="old-v1")

    def ExtractLocal(self, request, context):
        self.calls.append("ExtractLocal")
        features = [local_features_to_proto(_empty_features(8, 8)) for _ in request.images]
        return embedder_pb2.ExtractLocalResponse(features=features)

    def ExtractTexture(self, request, context):
        self.calls.append("ExtractTexture")
        histograms = vectors_to_proto(np.full((len(request.images), 3), 0.5, np.float32))
        return embedder_pb2.ExtractTextureResponse(histograms=histograms, texture_type="lbp-x")


def test_extract_falls_back_to_the_three_old_rpcs_when_extract_is_unimplemented():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = OldEmbedder()
    embedder_pb2_grpc.add_EmbedderServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    client = GrpcEmbedder(f"127.0.0.1:{port}", 16 * 1024 * 1024)
    try:
        out = client.extract([b"a", b"b"], "", "rootsift", True, timeout=10)
        assert np.array_equal(out.embeddings.vectors, np.array([[0, 1], [1, 1]], np.float32))
        assert out.embeddings.model_version == "old-v1"
        assert len(out.features) == 2 and out.features[0].image_width == 8
        assert out.textures is not None and out.textures.texture_type == "lbp-x"
        assert np.allclose(out.textures.histograms[1], 0.5)
        assert sorted(servicer.calls) == ["EmbedGlobal", "ExtractLocal", "ExtractTexture"]
        servicer.calls.clear()
        assert client.extract([b"a"], "", "rootsift", False, timeout=10).textures is None
        assert "ExtractTexture" not in servicer.calls
    finally:
        client.channel.close()
        server.stop(None)
