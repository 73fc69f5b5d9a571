"""gRPC adapter for the geometric re-ranker."""

from __future__ import annotations

import grpc

from services.common.errors import InvalidArgumentError
from services.common.metrics import ServiceMetrics
from services.common.proto_convert import RERANK_MODE_NAMES, local_features_from_proto
from services.verifier.core import Candidate, GeometricReranker
from visearch.v1 import verifier_pb2, verifier_pb2_grpc

MAX_CANDIDATES = 1000
INLIER_BUCKETS = (0, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256, 512)


class VerifierServicer(verifier_pb2_grpc.VerifierServicer):
    def __init__(self, reranker: GeometricReranker, metrics: ServiceMetrics) -> None:
        self._reranker = reranker
        self._inliers = metrics.histogram(
            "inliers", "RANSAC inliers per verified candidate.", buckets=INLIER_BUCKETS
        )
        self._candidates = metrics.counter("candidates", "Candidates verified.")

    def Rerank(
        self, request: verifier_pb2.RerankRequest, context: grpc.ServicerContext
    ) -> verifier_pb2.RerankResponse:
        mode = RERANK_MODE_NAMES.get(request.mode, "?")
        if mode not in ("geometric", ""):
            raise InvalidArgumentError(f"verifier supports rerank mode 'geometric', got {mode!r}")
        if len(request.candidates) > MAX_CANDIDATES:
            raise InvalidArgumentError(
                f"{len(request.candidates)} candidates; at most {MAX_CANDIDATES}"
            )
        query = local_features_from_proto(request.query)
        candidates = [Candidate(c.id, c.sha256, c.global_score) for c in request.candidates]
        reranked = self._reranker.rerank(query, candidates)
        self._candidates.inc(len(reranked))
        for result in reranked:
            self._inliers.observe(result.inliers)
        return verifier_pb2.RerankResponse(
            candidates=[
                verifier_pb2.RerankedCandidate(
                    id=r.id,
                    score=r.score,
                    global_score=r.global_score,
                    inliers=r.inliers,
                    matches=r.matches,
                    inlier_ratio=r.inlier_ratio,
                    reason=r.reason,
                )
                for r in reranked
            ]
        )
