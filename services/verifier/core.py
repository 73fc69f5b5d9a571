"""Geometric re-ranking of global-search candidates (service core, no grpc).

For each candidate the verifier reads its stored local features (through a byte-bounded LRU
cache, all candidates in parallel), matches them against the query's (``geometry.match_batch``:
one matrix product per chunk of candidates, then per candidate the ratio test and mutual
nearest neighbours, per rotation group of a DELF query), fits a transform where there are
enough tentative matches (``rotation.fit_matches``: as ``rotation.verify_grouped`` would) and
fuses the evidence with the global score (``fusion.fused_score``). Chunks are verified in
parallel: the matrix product and the robust fit release the GIL. BLAS is limited to one
thread per call (``single_threaded_blas``) because the parallelism is across chunks; letting
every worker spawn BLAS threads oversubscribes the cores (measured ~4x slower on 2 cores).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from services.common.errors import ConfigError, InvalidArgumentError, NotFoundError
from services.common.local_features import LocalFeatures, feature_key
from services.common.objectstore import ObjectStore
from services.verifier.fusion import FusionSettings, fused_score
from services.verifier.geometry import (
    GeometricEvidence,
    GeometrySettings,
    chunk_candidates,
    match_batch,
)
from services.verifier.rotation import fit_matches, settings_for

log = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 512 * 1024 * 1024  # ~1000 candidates at 1000 RootSIFT features each
DEFAULT_MAX_WORKERS = 8
ENTRY_OVERHEAD_BYTES = 512  # dataclass, array headers and the cache's own bookkeeping
REASON_NO_FEATURES = "no local features"
REASON_BAD_FEATURES = "unreadable local features"


@dataclass(frozen=True)
class Candidate:
    """A global-search hit: image id, content hash and global similarity (higher is better)."""

    id: str
    sha256: str
    global_score: float


@dataclass(frozen=True)
class RerankedCandidate:
    """A candidate after re-ranking; ``reason`` explains the score in a few words.

    ``predicted_label`` / ``label_margin``: texture mode's SVC vote for the query.
    ``inlier_keypoints``: float32 [n, 4] (query x, y, candidate x, y) in original pixels, only
    when asked for (``return_matches``).
    """

    id: str
    score: float
    global_score: float
    inliers: int
    matches: int
    inlier_ratio: float
    reason: str
    predicted_label: str = ""
    label_margin: float = 0.0
    inlier_keypoints: np.ndarray | None = None


class FeatureCache:
    """Thread-safe LRU cache of LocalFeatures bounded by the bytes of their arrays."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if max_bytes < 0:
            raise ConfigError("feature cache size must be >= 0 bytes")
        self._max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[LocalFeatures, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def bytes_used(self) -> int:
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def get(self, key: str) -> LocalFeatures | None:
        """The cached features (now most recently used), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: str, features: LocalFeatures) -> None:
        """Insert, evicting least recently used entries; an entry over the bound is not kept."""
        size = features.nbytes + ENTRY_OVERHEAD_BYTES
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size > self._max_bytes:
                return
            self._entries[key] = (features, size)
            self._bytes += size
            while self._bytes > self._max_bytes:
                _, (_, evicted_size) = self._entries.popitem(last=False)
                self._bytes -= evicted_size

    def get_or_load(self, key: str, store: ObjectStore) -> LocalFeatures:
        """Cached features, else read and parse them from the store (NotFoundError passes)."""
        features = self.get(key)
        if features is None:
            features = LocalFeatures.from_npz(store.get(key))
            self.put(key, features)
        return features


class GeometricReranker:
    """Re-ranks candidates by global score fused with geometric verification."""

    def __init__(
        self,
        store: ObjectStore,
        geometry: GeometrySettings,
        fusion: FusionSettings,
        cache: FeatureCache,
        max_workers: int = DEFAULT_MAX_WORKERS,
        single_threaded_blas: bool = True,
        features_bucket: str = "features",
    ) -> None:
        if fusion.min_inliers != geometry.min_inliers:
            raise ConfigError(
                f"fusion.min_inliers ({fusion.min_inliers}) must equal "
                f"geometry.min_inliers ({geometry.min_inliers})"
            )
        if max_workers <= 0:
            raise ConfigError("max_workers must be positive")
        self._store = store
        self._geometry = geometry
        self._fusion = fusion
        self._cache = cache
        self._features_bucket = features_bucket
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="verify")
        if single_threaded_blas:
            threadpool_limits(limits=1, user_api="blas")  # process-wide, see module docstring

    def close(self) -> None:
        """Stop the worker threads (waits for running verifications)."""
        self._executor.shutdown(wait=True)

    def __enter__(self) -> GeometricReranker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def rerank(
        self, query: LocalFeatures, candidates: list[Candidate], return_matches: bool = False
    ) -> list[RerankedCandidate]:
        """All candidates, best fused score first; ties keep the input (global) order.

        Candidates' features are read in parallel (cache, else the store); then chunks of
        candidates (``geometry.chunk_candidates``) are matched in parallel, each with one
        query x chunk matrix product (``geometry.match_batch``), and only candidates with
        enough tentative matches get a robust fit (``geometry.fit_pairs``).
        return_matches: fill each result's ``inlier_keypoints`` (for drawing matches).
        """
        loaded = list(self._executor.map(lambda c: self._load(query, c), candidates))
        results: list[RerankedCandidate | None] = [
            item if isinstance(item, RerankedCandidate) else None for item in loaded
        ]
        # Candidate position -> its features, for those that have them.
        found = {i: item for i, item in enumerate(loaded) if isinstance(item, LocalFeatures)}
        for features in found.values():
            if query.count and features.count and query.dims != features.dims:
                raise InvalidArgumentError(
                    f"descriptor dims differ: query {query.dims}, candidate {features.dims}"
                )
        positions = list(found)
        chunks = [
            [positions[j] for j in chunk]
            for chunk in chunk_candidates([found[i].count for i in positions])
        ]
        futures = [
            self._executor.submit(
                self._verify_chunk,
                query,
                [candidates[i] for i in chunk],
                [found[i] for i in chunk],
                return_matches,
            )
            for chunk in chunks
        ]
        for chunk, future in zip(chunks, futures, strict=True):
            for i, result in zip(chunk, future.result(), strict=True):
                results[i] = result
        done = [r for r in results if r is not None]
        order = sorted(range(len(done)), key=lambda i: (-done[i].score, i))
        return [done[i] for i in order]

    def _load(
        self, query: LocalFeatures, candidate: Candidate
    ) -> LocalFeatures | RerankedCandidate:
        """The candidate's stored features, or its unverified result when it has none."""
        version = query.model_version
        key = feature_key(query.feature_type, candidate.sha256, self._features_bucket, version)
        try:
            return self._cache.get_or_load(key, self._store)
        except NotFoundError:
            if not version:
                return _unverified(candidate, REASON_NO_FEATURES)
            return _unverified(
                candidate,
                f"{REASON_NO_FEATURES} of model {version} (ingested with another "
                f"{query.feature_type} model? re-ingest the collection)",
            )
        except InvalidArgumentError as exc:
            log.warning("candidate %s: cannot parse %s: %s", candidate.id, key, exc)
            return _unverified(candidate, REASON_BAD_FEATURES)

    def _verify_chunk(
        self,
        query: LocalFeatures,
        candidates: list[Candidate],
        features: list[LocalFeatures],
        return_matches: bool,
    ) -> list[RerankedCandidate]:
        """Verifies a few candidates with one matrix product; results in input order."""
        geometry, fusion = settings_for(query.feature_type, self._geometry, self._fusion)
        matches = match_batch(
            query.descriptors,
            [f.descriptors for f in features],
            geometry.ratio,
            query.group_sizes,
        )
        out = []
        for candidate, candidate_features, per_group in zip(
            candidates, features, matches, strict=True
        ):
            evidence, rotation = fit_matches(query, candidate_features, per_group, geometry)
            out.append(
                RerankedCandidate(
                    id=candidate.id,
                    score=fused_score(candidate.global_score, evidence, fusion),
                    global_score=candidate.global_score,
                    inliers=evidence.inliers,
                    matches=evidence.matches,
                    inlier_ratio=evidence.inlier_ratio,
                    reason=_reason(candidate.global_score, evidence, geometry, rotation),
                    inlier_keypoints=inlier_keypoints(query, candidate_features, evidence)
                    if return_matches
                    else None,
                )
            )
        return out


def _reason(
    global_score: float,
    evidence: GeometricEvidence,
    geometry: GeometrySettings,
    rotation: float | None,
) -> str:
    head = f"global {global_score:.2f}"
    if evidence.inliers >= geometry.min_inliers:
        turned = f", query turned {rotation:g}°" if rotation else ""
        return (
            f"{head} + {evidence.inliers} inliers "
            f"({geometry.model}, ratio {evidence.inlier_ratio:.2f}{turned})"
        )
    if evidence.inliers > 0:
        return (
            f"{head}; {evidence.inliers} inliers of {evidence.matches} matches, "
            f"too few (need {geometry.min_inliers})"
        )
    if evidence.matches < geometry.min_inliers:
        return f"{head}; {evidence.matches} matches, too few to fit (need {geometry.min_inliers})"
    return f"{head}; no geometric fit ({evidence.matches} matches)"


def inlier_keypoints(
    query: LocalFeatures, candidate: LocalFeatures, evidence: GeometricEvidence
) -> np.ndarray:
    """float32 [k, 4] (query x, y, candidate x, y) of the inliers, original pixel coordinates."""
    pairs = evidence.inlier_pairs
    if evidence.inliers == 0 or len(pairs) == 0:
        return np.zeros((0, 4), dtype=np.float32)
    return np.hstack([query.keypoints[pairs[:, 0]], candidate.keypoints[pairs[:, 1]]]).astype(
        np.float32
    )


def _unverified(candidate: Candidate, reason: str) -> RerankedCandidate:
    return RerankedCandidate(
        id=candidate.id,
        score=float(candidate.global_score),
        global_score=float(candidate.global_score),
        inliers=0,
        matches=0,
        inlier_ratio=0.0,
        reason=reason,
    )
