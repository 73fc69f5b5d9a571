"""Several global-model versions served at once: the default stays loaded, others load on
first use and are kept in a bounded LRU; each version has its own micro-batcher (a batch
never mixes versions). No grpc here."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

import numpy as np

from services.common.errors import NotFoundError
from services.common.model_registry import ModelManifest
from services.embedder.batching import MicroBatcher

log = logging.getLogger(__name__)


class ServedModel(Protocol):
    """What the pool needs of a model (services.embedder.core.GlobalModel)."""

    manifest: ModelManifest

    def preprocess(self, image_rgb: np.ndarray) -> np.ndarray: ...

    def run(self, batch: np.ndarray) -> np.ndarray: ...


ModelLoader = Callable[[str], ServedModel]
# (model version, rows, seconds queued) after each model run.
BatchObserver = Callable[[str, int, float], None]


class LoadedModel:
    """A model with its own batcher; closed once evicted and no request uses it."""

    def __init__(
        self,
        model: ServedModel,
        max_batch: int,
        max_wait_s: float,
        on_batch: BatchObserver | None,
        on_expired: Callable[[int], None] | None = None,
    ) -> None:
        self.model = model
        version = model.manifest.version
        observer = None if on_batch is None else (lambda n, q: on_batch(version, n, q))
        self.batcher = MicroBatcher(
            model.run, max_batch, max_wait_s, on_batch=observer, on_expired=on_expired
        )
        self.users = 0
        self.evicted = False

    @property
    def version(self) -> str:
        return self.model.manifest.version


class ModelPool:
    """At most `max_sessions` models in memory, the default included (it is never evicted).

    With `max_sessions == 1` another version is loaded for the requests that need it and
    closed when they finish. `loader(version)` raises NotFoundError for unknown versions.
    """

    def __init__(
        self,
        default: ServedModel,
        loader: ModelLoader | None,
        max_sessions: int,
        max_batch: int,
        max_wait_s: float,
        on_batch: BatchObserver | None = None,
        on_load: Callable[[str, int], None] | None = None,
        on_expired: Callable[[int], None] | None = None,
    ) -> None:
        """on_expired(rows): images dropped unrun because their deadline passed in the queue."""
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self._loader = loader
        self._capacity = max_sessions - 1  # besides the default
        self._batching = (max_batch, max_wait_s, on_batch, on_expired)
        self._on_load = on_load
        self.default = LoadedModel(default, *self._batching)
        self._others: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    @property
    def default_version(self) -> str:
        return self.default.version

    def loaded_versions(self) -> list[str]:
        with self._lock:
            return [self.default.version, *self._others]

    @contextmanager
    def use(self, version: str) -> Iterator[LoadedModel]:
        """The model of `version` ("" = the default), loaded if needed, held while in use."""
        loaded = self._acquire(version or self.default.version)
        try:
            yield loaded
        finally:
            self._release(loaded)

    def _acquire(self, version: str) -> LoadedModel:
        if version == self.default.version:
            return self.default
        with self._lock:
            found = self._use_loaded(version)
            if found is not None:
                return found
            version_lock = self._loading.setdefault(version, threading.Lock())
        try:
            with version_lock:  # one load per version, other versions keep serving
                with self._lock:
                    found = self._use_loaded(version)
                if found is not None:
                    return found
                return self._load(version)
        finally:
            with self._lock:  # unknown versions must not pile up locks
                if self._loading.get(version) is version_lock:
                    del self._loading[version]

    def _use_loaded(self, version: str) -> LoadedModel | None:
        """Called with the lock held."""
        found = self._others.get(version)
        if found is not None:
            self._others.move_to_end(version)
            found.users += 1
        return found

    def _load(self, version: str) -> LoadedModel:
        if self._loader is None:
            raise NotFoundError(
                f"model version {version!r} is not served here (this embedder has no "
                f"model registry); it serves {self.default.version!r}"
            )
        loaded = LoadedModel(self._loader(version), *self._batching)
        with self._lock:
            existing = self._use_loaded(version)  # loaded meanwhile under a newer lock
            if existing is None:
                loaded.users = 1
                self._others[version] = loaded
                self._evict_over_capacity()
            sessions = 1 + len(self._others)
        if existing is not None:
            loaded.batcher.close()
            return existing
        log.info("model loaded", extra={"fields": {"version": version, "sessions": sessions}})
        if self._on_load is not None:
            self._on_load(version, sessions)
        return loaded

    def _evict_over_capacity(self) -> None:
        """Called with the lock held: drops least recently used versions beyond capacity."""
        while len(self._others) > self._capacity:
            version, victim = self._others.popitem(last=False)
            victim.evicted = True
            log.info("model evicted", extra={"fields": {"version": version}})
            if victim.users == 0:
                victim.batcher.close()

    def _release(self, loaded: LoadedModel) -> None:
        if loaded is self.default:
            return
        with self._lock:
            loaded.users -= 1
            close = loaded.evicted and loaded.users == 0
        if close:
            loaded.batcher.close()

    def close(self) -> None:
        with self._lock:
            others = list(self._others.values())
            self._others.clear()
        for loaded in [self.default, *others]:
            loaded.batcher.close()
