"""gRPC adapter for the geometric re-ranker."""

from __future__ import annotations

import grpc
import numpy as np

from services.common.errors import InvalidArgumentError
from services.common.metrics import ServiceMetrics
from services.common.proto_convert import (
    RERANK_MODE_NAMES,
    local_features_from_proto,
    vector_from_proto,
)
from services.verifier.core import Candidate, GeometricReranker, RerankedCandidate
from services.verifier.texture import TextureCandidate, TextureReranker
from visearch.v1 import verifier_pb2, verifier_pb2_grpc

MAX_CANDIDATES = 1000
INLIER_BUCKETS = (0, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256, 512)


class VerifierServicer(verifier_pb2_grpc.VerifierServicer):
    def __init__(
        self,
        reranker: GeometricReranker,
        metrics: ServiceMetrics,
        texture: TextureReranker | None = None,
    ) -> None:
        self._reranker = reranker
        self._texture = texture
        self._inliers = metrics.histogram(
            "inliers", "RANSAC inliers per verified candidate.", buckets=INLIER_BUCKETS
        )
        self._candidates = metrics.counter("candidates", "Candidates verified.")

    def Rerank(
        self, request: verifier_pb2.RerankRequest, context: grpc.ServicerContext
    ) -> verifier_pb2.RerankResponse:
        mode = RERANK_MODE_NAMES.get(request.mode, "?")
        if mode not in ("geometric", "texture", ""):
            raise InvalidArgumentError(
                f"verifier supports rerank modes 'geometric' and 'texture', got {mode!r}"
            )
        if len(request.candidates) > MAX_CANDIDATES:
            raise InvalidArgumentError(
                f"{len(request.candidates)} candidates; at most {MAX_CANDIDATES}"
            )
        if mode == "texture":
            reranked = self._rerank_texture(request)
        else:
            query = local_features_from_proto(request.query)
            candidates = [Candidate(c.id, c.sha256, c.global_score) for c in request.candidates]
            reranked = self._reranker.rerank(query, candidates, request.return_matches)
            for result in reranked:
                self._inliers.observe(result.inliers)
        self._candidates.inc(len(reranked))
        return verifier_pb2.RerankResponse(candidates=[_reranked_proto(r) for r in reranked])

    def _rerank_texture(self, request: verifier_pb2.RerankRequest) -> list[RerankedCandidate]:
        if self._texture is None:
            raise InvalidArgumentError("this verifier has no texture re-ranker")
        candidates = [
            TextureCandidate(c.id, c.sha256, c.global_score, c.label) for c in request.candidates
        ]
        query = vector_from_proto(request.query_texture)
        return self._texture.rerank(
            query, request.texture_type, candidates, query_sha256=request.query_sha256
        )


def _reranked_proto(r: RerankedCandidate) -> verifier_pb2.RerankedCandidate:
    keypoints = b""
    if r.inlier_keypoints is not None:
        keypoints = np.ascontiguousarray(r.inlier_keypoints, dtype="<f4").tobytes()
    return verifier_pb2.RerankedCandidate(
        id=r.id,
        score=r.score,
        global_score=r.global_score,
        inliers=r.inliers,
        matches=r.matches,
        inlier_ratio=r.inlier_ratio,
        reason=r.reason,
        predicted_label=r.predicted_label,
        label_margin=r.label_margin,
        inlier_keypoints=keypoints,
    )
