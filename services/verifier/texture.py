"""Texture re-ranking: an SVC on the candidates' LBP histograms votes for the query's label.

The image-similarity-flask method, done with its evidence spelled out:
1. The candidates whose global similarity is at least ``min_global_score`` and that carry a
   label are the training set; a candidate with the query's content hash (the query itself,
   when it is in the gallery) is left out, or it would vote for its own label.
2. When those carry fewer than two labels there is nothing to decide: the global order is
   kept and every reason says why.
3. Otherwise an SVC (scikit-learn) is trained on their histograms (features/<texture_type>/
   <sha256>.npy, written at ingest) and predicts the query's label; its margin is the gap
   between the predicted class' one-vs-rest decision value and the runner-up's (binary: the
   absolute decision value).
4. Every candidate of the predicted label comes first, then the others, each group in global
   order: score = global score + ``LABEL_BONUS`` for the predicted label (cosine similarities
   are at most 1, so the bonus of 2 puts the whole group first).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from sklearn.svm import SVC

from services.common.errors import ConfigError, InvalidArgumentError, NotFoundError
from services.common.objectstore import ObjectStore
from services.common.texture_features import check_histogram, histogram_from_bytes, texture_key
from services.verifier.core import RerankedCandidate

log = logging.getLogger(__name__)

LABEL_BONUS = 2.0
# Measured with MobileNetV2-GeM cosines (docs/benchmarks.md, `visearch eval`): at 0.5 every
# candidate of a query trains the SVC and its vote (22 % right on UKBench groups, 8 % on the
# transformed copies) reorders everything; at 0.8 (~ the 90th percentile of different-object
# scores on transformed UKBench queries, the median same-object score is ~0.86) it votes only
# among look-alikes, which is less harmful on UKBench and better on flowers5 categories.
DEFAULT_MIN_GLOBAL_SCORE = 0.8
DEFAULT_SVC_C = 10.0
DEFAULT_KERNEL = "rbf"
DEFAULT_CACHE_ENTRIES = 200_000  # ~60 MB at 54 float32 per histogram plus bookkeeping
KERNELS = ("linear", "rbf", "poly", "sigmoid")


@dataclass(frozen=True)
class TextureSettings:
    """Settings of the texture re-ranker.

    Attributes:
        min_global_score: only candidates at least this similar (global cosine) train the SVC
            (VISEARCH_TEXTURE_MIN_GLOBAL).
        svc_c: the SVC's regularisation C (VISEARCH_TEXTURE_SVC_C).
        kernel: the SVC's kernel (VISEARCH_TEXTURE_KERNEL); gamma is scikit-learn's "scale".
    """

    min_global_score: float = DEFAULT_MIN_GLOBAL_SCORE
    svc_c: float = DEFAULT_SVC_C
    kernel: str = DEFAULT_KERNEL

    def __post_init__(self) -> None:
        if not -1.0 <= self.min_global_score <= 1.0:
            raise ConfigError("texture min_global_score must be in [-1, 1]")
        if self.svc_c <= 0:
            raise ConfigError("texture svc_c must be positive")
        if self.kernel not in KERNELS:
            raise ConfigError(f"texture kernel must be one of {', '.join(KERNELS)}")


@dataclass(frozen=True)
class TextureCandidate:
    """A global-search hit with the label the SVC learns from ("" = unlabelled)."""

    id: str
    sha256: str
    global_score: float
    label: str


@dataclass(frozen=True)
class LabelVote:
    """The SVC's answer: predicted label and margin, or why there is none."""

    label: str
    margin: float
    explanation: str


class HistogramCache:
    """Thread-safe LRU of texture histograms by object key, bounded by entry count."""

    def __init__(self, max_entries: int = DEFAULT_CACHE_ENTRIES) -> None:
        if max_entries < 0:
            raise ConfigError("histogram cache size must be >= 0 entries")
        self._max = max_entries
        self._entries: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get_or_load(self, key: str, store: ObjectStore) -> np.ndarray:
        """float32 [d], cached or read from the store (NotFoundError passes through)."""
        with self._lock:
            cached = self._entries.get(key)
            if cached is not None:
                self._entries.move_to_end(key)
                return cached
        histogram = histogram_from_bytes(store.get(key))
        with self._lock:
            self._entries[key] = histogram
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return histogram


class TextureReranker:
    """Re-ranks candidates by an SVC vote on their labels (see the module docstring)."""

    def __init__(
        self,
        store: ObjectStore,
        settings: TextureSettings,
        cache: HistogramCache,
        max_workers: int = 8,
        features_bucket: str = "features",
    ) -> None:
        if max_workers <= 0:
            raise ConfigError("max_workers must be positive")
        self._store = store
        self._settings = settings
        self._cache = cache
        self._bucket = features_bucket
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="texture")

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def rerank(
        self,
        query: np.ndarray,
        texture_type: str,
        candidates: list[TextureCandidate],
        query_sha256: str = "",
    ) -> list[RerankedCandidate]:
        """All candidates, predicted label first, each group in global order.

        Args:
            query: float32 [d] texture histogram of the query.
            texture_type: names the histograms (storage key of the candidates').
            candidates: the global-search hits, best first.
            query_sha256: content hash of the query; candidates with it do not train the SVC.
        """
        if not texture_type:
            raise InvalidArgumentError("texture re-rank needs the histograms' texture_type")
        query = check_histogram(query)
        training = [
            c
            for c in candidates
            if c.label
            and c.global_score >= self._settings.min_global_score
            and c.sha256 != query_sha256
        ]
        histograms = list(self._executor.map(lambda c: self._load(c, texture_type), training))
        pairs = [(c, h) for c, h in zip(training, histograms, strict=True) if h is not None]
        vote = self.vote(query, [c.label for c, _ in pairs], [h for _, h in pairs])
        results = [_reranked(c, vote) for c in candidates]
        order = sorted(range(len(results)), key=lambda i: (-results[i].score, i))
        return [results[i] for i in order]

    def vote(self, query: np.ndarray, labels: list[str], histograms: list[np.ndarray]) -> LabelVote:
        """Train on (histogram, label) pairs and predict the query's label.

        Args:
            query: float32 [d].
            labels: one label per training histogram.
            histograms: float32 [d] each.
        """
        distinct = sorted(set(labels))
        if len(distinct) < 2:
            return LabelVote(
                "",
                0.0,
                f"texture: {len(labels)} candidates above global "
                f"{self._settings.min_global_score:.2f} carry {len(distinct)} label(s), need 2; "
                "global order kept",
            )
        dims = {h.shape[0] for h in histograms}
        if dims != {query.shape[0]}:
            raise InvalidArgumentError(
                f"texture histograms have {sorted(dims)} dims, the query {query.shape[0]}"
            )
        svc = SVC(C=self._settings.svc_c, kernel=self._settings.kernel, gamma="scale")
        svc.fit(np.stack(histograms), np.asarray(labels))
        decision = np.atleast_1d(svc.decision_function(query[None, :])[0])
        if decision.shape[0] == 1:  # binary: sign picks classes_[1]
            value = float(decision[0])
            label, margin = str(svc.classes_[int(value > 0)]), abs(value)
        else:
            ranked = np.argsort(-decision)
            label = str(svc.classes_[ranked[0]])
            margin = float(decision[ranked[0]] - decision[ranked[1]])
        return LabelVote(
            label,
            margin,
            f"texture SVC on {len(labels)} candidates / {len(distinct)} labels predicts "
            f"{label!r} (margin {margin:.2f})",
        )

    def _load(self, candidate: TextureCandidate, texture_type: str) -> np.ndarray | None:
        key = texture_key(texture_type, candidate.sha256, self._bucket)
        try:
            return self._cache.get_or_load(key, self._store)
        except NotFoundError:
            return None
        except InvalidArgumentError as exc:
            log.warning("candidate %s: cannot parse %s: %s", candidate.id, key, exc)
            return None


def _reranked(candidate: TextureCandidate, vote: LabelVote) -> RerankedCandidate:
    same = bool(vote.label) and candidate.label == vote.label
    head = f"global {candidate.global_score:.2f}"
    if not vote.label:
        reason = f"{head}; {vote.explanation}"
    else:
        verdict = "same label, first" if same else f"label {candidate.label!r}"
        reason = f"{head}; {vote.explanation}: {verdict}"
    return RerankedCandidate(
        id=candidate.id,
        score=float(candidate.global_score) + (LABEL_BONUS if same else 0.0),
        global_score=float(candidate.global_score),
        inliers=0,
        matches=0,
        inlier_ratio=0.0,
        reason=reason,
        predicted_label=vote.label,
        label_margin=vote.margin,
    )
