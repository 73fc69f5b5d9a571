"""Database-side augmentation (DBA): every stored vector replaced, for searching, by the
alpha query expansion of itself with its nearest stored neighbours.

    x' = normalise(x + sum_j max(s_j, 0)^alpha * x_j)   over its top_n neighbours j != x

(Radenović, Tolias, Chum, TPAMI 2018; services/gateway/query_expansion.py has the maths).
The collection's own vectors stay as they are: an augmentation *pass* (the gateway's
`AugmentDatabase` RPC, `visearch dba`) writes x' into a copy `<index_name>~<pass>` on the
same shards and then points searches at it in one compare-and-set of the collection config.

Kept correct under writes:

- During a pass, ingests write the item's own vector into the copy being built and deletes
  leave a tombstone there (services/gateway/generations.py); the pass writes only-if-absent
  under a copy fence that names it (the reshard copier's shard-side rule), so it never
  overwrites a newer write nor brings a deleted id back.
- After a pass, ingests write the item's own vector into the copy (it is augmented by the next
  pass) and deletes remove the id from it, so searches see every acknowledged write at once.
  The vectors an upsert or delete was *combined into* keep that contribution until the next
  pass: run passes after bulk changes (a CronJob, or `visearch dba` by hand).
- A reshard stops searches using the copy (it is laid out for the old shards) and a re-embed's
  switch does too (it augments the old model's vectors); the next pass builds a new one.

Neighbours come from the shards' own search (exact below their exact threshold, ScaNN above).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

import numpy as np

from services.common.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from services.common.index_types import NO_FILTER
from services.common.lease import Lease, held
from services.common.metadata import CollectionConfig, MetadataStore
from services.gateway import query_expansion as qe
from services.gateway.ports import ShardPort
from services.gateway.reshard import ReshardShardPort

log = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULT_PAGE = 256
MAX_PAGE = 5000  # the shards' fetch limit


class AugmentShardPort(ReshardShardPort, ShardPort, Protocol):
    """A shard as the pass uses it: search and drop, plus the reshard copier's operations."""


@dataclass(frozen=True)
class DbaSettings:
    lease_s: float = 10.0
    timeout_s: float = 60.0  # per shard call
    drop_grace_s: float = 30.0  # before the replaced copy is dropped


@dataclass(frozen=True)
class DbaProgress:
    collection: str
    phase: str  # started | augmenting | published | done | off
    dba_pass: int
    total: int = 0  # vectors in the collection when the pass started
    done: int = 0  # of those, augmented (or skipped: rewritten or deleted meanwhile)


def check_settings(top_n: int, alpha: float) -> None:
    """Raises InvalidArgumentError unless top_n in 0..50 and alpha in 0..10."""
    qe.check(qe.QueryExpansion(top_n, alpha), "database-side augmentation")


def augment(
    vectors: np.ndarray,
    ids: Sequence[str],
    found: list[list[tuple[str, float, np.ndarray]]],
    top_n: int,
    alpha: float,
) -> np.ndarray:
    """vectors: float32 [n, d], the stored vectors of `ids`; found: per id, search results
    (id, cosine similarity, float32 [d] vector), any order, possibly including the id itself.
    Returns float32 [n, d]: each vector expanded with its best `top_n` other results."""
    dims = vectors.shape[1]
    neighbours = np.zeros((len(ids), top_n, dims), np.float32)
    sims = np.full((len(ids), top_n), np.nan, np.float32)
    for row, (own_id, results) in enumerate(zip(ids, found, strict=True)):
        others = sorted((r for r in results if r[0] != own_id), key=lambda r: (-r[1], r[0]))
        for column, (_, score, vector) in enumerate(others[:top_n]):
            neighbours[row, column] = vector
            sims[row, column] = score
    return qe.expand(vectors, neighbours, sims, alpha)


class DatabaseAugmenter:
    def __init__(
        self,
        shards: Sequence[AugmentShardPort],
        metadata: MetadataStore,
        lease: Lease,
        settings: DbaSettings,
    ) -> None:
        self._shards = shards
        self._metadata = metadata
        self._lease = lease
        self._settings = settings
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="dba")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def run(
        self,
        collection: str,
        top_n: int,
        alpha: float,
        page_size: int = 0,
        drop_grace_s: float = -1.0,
    ) -> Iterator[DbaProgress]:
        """One pass with these settings (top_n 0: DBA off, copies dropped), yielding progress.
        A pass that stops (crash, caller stops iterating) leaves the previous copy serving;
        running it again starts a new pass."""
        check_settings(top_n, alpha)
        page_size = page_size or DEFAULT_PAGE
        if not 1 <= page_size <= MAX_PAGE:
            raise InvalidArgumentError(f"page_size must be in 1..{MAX_PAGE}")
        grace = self._settings.drop_grace_s if drop_grace_s < 0 else drop_grace_s
        job = f"a database-side augmentation of {collection!r}"
        with held(self._lease, collection, self._settings.lease_s, job):
            if top_n == 0:
                yield self._turn_off(collection)
            else:
                yield from self._pass(collection, top_n, alpha, page_size, grace)

    def _config(self, collection: str) -> CollectionConfig:
        config = self._metadata.get_collection(collection)
        if config is None:
            raise NotFoundError(f"collection {collection!r} does not exist")
        return config

    def _turn_off(self, collection: str) -> DbaProgress:
        config = self._config(collection)
        off = replace(config, dba_top_n=0, dba_pass=0, dba_pending_pass=0)
        if not self._metadata.update_collection(config, off):
            raise UnavailableError(f"collection {collection!r} changed meanwhile; run it again")
        self._drop_copies(config, keep=0)
        self._mark_dropped(collection, config.dba_last_pass)
        return DbaProgress(collection, "off", 0)

    def _pass(
        self, collection: str, top_n: int, alpha: float, page_size: int, grace: float
    ) -> Iterator[DbaProgress]:
        config = self._config(collection)
        if config.target_shards:
            raise FailedPreconditionError(
                f"collection {collection!r} is being resharded; augment it afterwards"
            )
        if config.pending_model_version:
            raise FailedPreconditionError(
                f"collection {collection!r} is being re-embedded; augment it afterwards"
            )
        self._drop_copies(config, keep=config.dba_pass)  # abandoned or invalidated passes
        dba_pass = config.dba_last_pass + 1
        building = replace(
            config,
            dba_top_n=top_n,
            dba_alpha=alpha,
            dba_pending_pass=dba_pass,
            dba_last_pass=dba_pass,
            dba_dropped_through=config.dba_pass - 1 if config.dba_pass else config.dba_last_pass,
        )
        if not self._metadata.update_collection(config, building):
            raise UnavailableError(f"collection {collection!r} changed meanwhile; run it again")
        copy = building.dba_view(dba_pass).index_name
        run_id = uuid.uuid4().hex
        shards = range(config.shards)
        self._each(shards, lambda s: self._shards[s].set_copy_fence(copy, run_id, self._rpc()))
        sizes = self._each(shards, lambda s: self._shards[s].stats(config.index_name, self._rpc()))
        progress = DbaProgress(collection, "started", dba_pass, sum(info.size for info in sizes))
        yield progress
        for shard in shards:
            token = ""
            while True:
                page = self._shards[shard].fetch(
                    config.index_name, token, page_size, 0, False, self._rpc()
                )
                if page.ids:
                    augmented = augment(
                        page.vectors,
                        page.ids,
                        self._neighbours(config, page.vectors, top_n),
                        top_n,
                        alpha,
                    )
                    self._shards[shard].copy_if_absent(
                        copy,
                        page.ids,
                        augmented,
                        page.metadata,
                        config.index_overrides(),
                        run_id,
                        self._rpc(),
                    )
                    progress = replace(
                        progress, phase="augmenting", done=progress.done + len(page.ids)
                    )
                    yield progress
                if not page.next_page_token:
                    break
                token = page.next_page_token
        self._publish(collection, config.generation, dba_pass)
        self._each(shards, lambda s: self._shards[s].set_copy_fence(copy, "", self._rpc()))
        self._each(shards, lambda s: self._shards[s].clear_tombstones(copy, self._rpc()))
        yield replace(progress, phase="published")
        if config.dba_pass:
            if grace > 0:
                time.sleep(grace)  # searches that read the old config finish
            self._drop(config.dba_view(config.dba_pass).index_name)
        self._mark_dropped(collection, dba_pass - 1)
        yield replace(progress, phase="done")

    def _neighbours(
        self, config: CollectionConfig, vectors: np.ndarray, top_n: int
    ) -> list[list[tuple[str, float, np.ndarray]]]:
        """Each vector's top_n + 1 results (itself, usually, among them) on every shard."""
        depth = top_n + 1
        answers = self._each(
            range(config.shards),
            lambda s: self._shards[s].search(
                config.index_name, vectors, depth, NO_FILTER, self._rpc(), vectors_for_top=depth
            ),
        )
        found: list[list[tuple[str, float, np.ndarray]]] = [[] for _ in range(len(vectors))]
        for per_query in answers:
            for row, hits in enumerate(per_query):
                found[row] += [(h.id, h.score, h.vector) for h in hits if h.vector is not None]
        return found

    def _publish(self, collection: str, generation: int, dba_pass: int) -> None:
        for _ in range(10):
            config = self._config(collection)
            if (
                config.dba_pending_pass != dba_pass
                or config.generation != generation
                or config.target_shards
            ):
                raise FailedPreconditionError(
                    f"collection {collection!r} was resharded, re-embedded or augmented by "
                    f"another pass while pass {dba_pass} ran; run it again"
                )
            if self._metadata.update_collection(
                config, replace(config, dba_pass=dba_pass, dba_pending_pass=0)
            ):
                log.info(
                    "dba pass published",
                    extra={"fields": {"collection": collection, "pass": dba_pass}},
                )
                return
        raise UnavailableError(f"collection {collection!r} kept changing; run the pass again")

    def _drop_copies(self, config: CollectionConfig, keep: int) -> None:
        """Drops the current generation's copies not dropped yet, but `keep` (0: all)."""
        for dba_pass in range(config.dba_dropped_through + 1, config.dba_last_pass + 1):
            if dba_pass != keep:
                self._drop(config.dba_view(dba_pass).index_name)

    def _mark_dropped(self, collection: str, through: int) -> None:
        """Records that every copy numbered up to `through` is dropped (never lowers it)."""
        for _ in range(10):
            config = self._config(collection)
            if config.dba_dropped_through >= through:
                return
            if self._metadata.update_collection(
                config, replace(config, dba_dropped_through=through)
            ):
                return
        log.warning("dba: could not record dropped copies", extra={"fields": {"c": collection}})

    def _drop(self, namespace: str) -> None:
        self._each(range(len(self._shards)), lambda s: self._shards[s].drop(namespace, self._rpc()))

    def _each(self, shards: range, call: Callable[[int], T]) -> list[T]:
        futures = [self._pool.submit(call, shard) for shard in shards]
        return [future.result() for future in futures]

    def _rpc(self) -> float:
        return self._settings.timeout_s
