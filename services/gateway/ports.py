"""What the gateway core needs from the other services, as grpc-free interfaces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from services.common.index_types import NO_FILTER, IndexOverrides, ItemMeta, SearchFilter
from services.common.local_features import LocalFeatures


@dataclass(frozen=True)
class ShardHit:
    id: str
    score: float


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


@dataclass(frozen=True)
class RerankOutput:
    id: str
    score: float
    global_score: float
    inliers: int
    reason: str


@dataclass(frozen=True)
class GlobalEmbeddings:
    vectors: np.ndarray  # float32 [n, d], L2-normalised
    model_version: str


class EmbedderPort(Protocol):
    def embed_global(self, images: list[bytes], timeout: float | None) -> GlobalEmbeddings: ...

    def extract_local(
        self, images: list[bytes], feature_type: str, timeout: float | None
    ) -> list[LocalFeatures]: ...


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
    ) -> list[list[ShardHit]]: ...

    def stats(self, collection: str, timeout: float | None) -> ShardInfo: ...


class VerifierPort(Protocol):
    def rerank(
        self, query: LocalFeatures, candidates: list[RerankInput], timeout: float | None
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
    rerank: str = ""  # "" = collection default, "none", "geometric"
    require_complete: bool = False
    search_filter: SearchFilter = NO_FILTER


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    label: str
    attributes: dict[str, str]
    global_score: float
    inliers: int
    reason: str
    sha256: str


@dataclass(frozen=True)
class SearchOutcome:
    hits: list[Hit]
    partial: bool
    missing_shards: list[int]
    timings_ms: dict[str, float]
    model_version: str
