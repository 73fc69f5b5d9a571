"""What the gateway core needs from the other services, as grpc-free interfaces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from services.common.index_types import NO_FILTER, IndexOverrides, ItemMeta, SearchFilter
from services.common.local_features import LocalFeatures
from services.gateway.query_expansion import QueryExpansion


@dataclass(frozen=True)
class ShardHit:
    """vector: the stored float32 [dims] vector, when the search asked for it (query expansion)."""

    id: str
    score: float
    vector: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class ShardInfo:
    shard: int
    size: int
    method: str


@dataclass(frozen=True)
class RerankInput:
    id: str
    sha256: str
    global_score: float
    label: str = ""


@dataclass(frozen=True, eq=False)
class RerankOutput:
    """inlier_keypoints: float32 [n, 4] (query x, y, candidate x, y), when asked for."""

    id: str
    score: float
    global_score: float
    inliers: int
    reason: str
    matches: int = 0
    inlier_ratio: float = 0.0
    predicted_label: str = ""
    label_margin: float = 0.0
    inlier_keypoints: np.ndarray | None = None


@dataclass(frozen=True)
class TextureHistograms:
    histograms: list[np.ndarray]  # float32 [d] per image
    texture_type: str


@dataclass(frozen=True)
class GlobalEmbeddings:
    vectors: np.ndarray  # float32 [n, d], L2-normalised
    model_version: str


@dataclass(frozen=True)
class Extraction:
    """What an ingest needs of its images (EmbedderPort.extract), in request order."""

    embeddings: GlobalEmbeddings
    features: list[LocalFeatures]  # one per image
    textures: TextureHistograms | None  # None when not asked for


class EmbedderPort(Protocol):
    def extract(
        self,
        images: list[bytes],
        model_version: str,
        feature_type: str,
        texture: bool,
        timeout: float | None,
    ) -> Extraction:
        """One call, each image decoded once: global vectors of `model_version` ("" = the
        embedder's default), local features of `feature_type`, texture histograms if asked."""
        ...

    def embed_global(
        self, images: list[bytes], timeout: float | None, model_version: str = ""
    ) -> GlobalEmbeddings:
        """model_version "" = the embedder's default."""
        ...

    def extract_local(
        self,
        images: list[bytes],
        feature_type: str,
        timeout: float | None,
        rotations: tuple[float, ...] = (),
    ) -> list[LocalFeatures]: ...

    def extract_texture(self, images: list[bytes], timeout: float | None) -> TextureHistograms: ...


class ShardPort(Protocol):
    shard: int

    def upsert(
        self,
        collection: str,
        ids: list[str],
        vectors: np.ndarray,
        metadata: list[ItemMeta],
        overrides: IndexOverrides,
        timeout: float | None,
    ) -> None: ...

    def delete(self, collection: str, ids: list[str], timeout: float | None) -> int: ...

    def search(
        self,
        collection: str,
        queries: np.ndarray,
        k: int,
        search_filter: SearchFilter,
        timeout: float | None,
        vectors_for_top: int = 0,
    ) -> list[list[ShardHit]]:
        """vectors_for_top > 0: the best that-many hits of each query carry their vector."""
        ...

    def stats(self, collection: str, timeout: float | None) -> ShardInfo: ...

    def drop(self, collection: str, timeout: float | None) -> int:
        """Forgets a collection (or a generation "<name>@<n>") on the shard, durably."""
        ...


class VerifierPort(Protocol):
    def rerank(
        self,
        query: LocalFeatures,
        candidates: list[RerankInput],
        timeout: float | None,
        return_matches: bool = False,
    ) -> list[RerankOutput]: ...

    def rerank_texture(
        self,
        query: np.ndarray,
        texture_type: str,
        query_sha256: str,
        candidates: list[RerankInput],
        timeout: float | None,
    ) -> list[RerankOutput]: ...


@dataclass(frozen=True)
class IngestItem:
    id: str
    image: bytes = b""
    object_key: str = ""
    label: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class IngestOutcome:
    id: str
    sha256: str
    shard: int
    replaced: bool


@dataclass(frozen=True)
class SearchQuery:
    collection: str
    image: bytes = b""
    object_key: str = ""
    k: int = 10
    rerank: str = ""  # "" = collection default, "none", "geometric", "texture"
    require_complete: bool = False
    search_filter: SearchFilter = NO_FILTER
    return_matches: bool = False
    # None = the collection's query expansion.
    query_expansion: QueryExpansion | None = None


@dataclass(frozen=True, eq=False)
class Hit:
    """inlier_keypoints: float32 [n, 4] (query x, y, hit x, y) in original pixels, when asked."""

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
class SearchOutcome:
    hits: list[Hit]
    partial: bool
    missing_shards: list[int]
    timings_ms: dict[str, float]
    model_version: str
    # The re-rank (or its query features) failed: `hits` are in the global order.
    rerank_degraded: bool = False
    rerank_degraded_reason: str = ""
