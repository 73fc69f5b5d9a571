"""Resharding: move a collection from N to M shards, moving only the ids whose jump-hash
shard changes, while searches, ingests and deletes go on. No grpc here.

The job (one per collection, run by whichever gateway replica holds its lock):

1. **Open the window**: forget old tombstones, then set `target_shards = M` in the
   collection config (one compare-and-set in Redis). From then on every gateway routes
   by services/gateway/layout.py: writes to the new layout (and out of the old one),
   deletes to both (tombstones on the new one), searches to the union, each id once.
2. **Copy**: page through each old shard's ids whose shard under M differs (Indexer.Fetch)
   and upsert them on their new shard *only if absent*: the shard decides under its write
   lock, skipping an id it already holds (a newer write made in the window, which must
   win) or holds a tombstone for (deleted in the window). So a copy never overwrites a
   newer write and never resurrects a delete, whatever the interleaving:
   - delete before the copy's upsert: the tombstone is already there, the copy skips;
   - delete after it: the delete itself removes the copied id from the new shard;
   - a write that read the config before the window opened and landed on the old shard
     after the copier scanned it is redone under the new layout by its own gateway,
     which re-reads the config after writing (services/gateway/routing.py).
   Copies go through the shard's normal write path: logged in its WAL before applied.
   Each start or resume of the job is a run with its own id. Each copy names its run,
   and a shard accepts copies only from the run its copy fence names (set before
   copying, by the replica holding the job's lock; a run the fence once dropped is never
   admitted again). So a copier that stalled past the lock's TTL while another replica
   took over cannot land a copy, in particular not after the window closed, when a
   delete no longer leaves a tombstone.
3. **Flip**: close the copy fences, then set `shards = M, target_shards = 0` in one
   compare-and-set.
4. **Clean up**: delete the moved ids from their old shards (no gateway writes there any
   more; a straggler that does redoes its write under the new layout), then clear the
   tombstones.

Progress (phase, counts, per-shard page tokens) is saved in Redis after every page, so a
job stopped anywhere (gateway crash, shard restart, Redis blip) is resumed by running
`visearch reshard` again with the same shard count: copying is idempotent, the flip is a
compare-and-set, clean-up deletes are idempotent. A different shard count is refused
until the running reshard has finished.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

import numpy as np

from services.common.errors import (
    AbortedError,
    DeadlineExceededError,
    FailedPreconditionError,
    NotFoundError,
    UnavailableError,
    VisearchError,
)
from services.common.index_types import IndexOverrides, ItemMeta
from services.common.metadata import CollectionConfig, MetadataStore
from services.common.sharding import shard_of
from services.gateway.layout import Layout
from services.gateway.ports import ShardInfo
from services.gateway.reshard_store import (
    PHASE_CLEANING,
    PHASE_COPYING,
    PHASE_DONE,
    ReshardRecord,
    ReshardStore,
)

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardPage:
    ids: list[str]
    vectors: np.ndarray  # float32 [n, d]; empty when ids_only
    metadata: list[ItemMeta]
    next_page_token: str  # "" = end
    scanned: int
    size: int


class ReshardShardPort(Protocol):
    shard: int

    def fetch(
        self,
        collection: str,
        page_token: str,
        limit: int,
        moved_under_shards: int,
        ids_only: bool,
        timeout: float | None,
    ) -> ShardPage: ...

    def copy_if_absent(
        self,
        collection: str,
        ids: list[str],
        vectors: np.ndarray,
        metadata: list[ItemMeta],
        overrides: IndexOverrides,
        fence: str,
        timeout: float | None,
    ) -> int:
        """Upsert only-if-absent from reshard run `fence`; returns how many were written.
        Raises AbortedError unless the shard's copy fence names `fence`."""
        ...

    def set_copy_fence(self, collection: str, run_id: str, timeout: float | None) -> str:
        """Accept copies from run `run_id` only ("" = none); returns the previous run.
        Raises AbortedError for a run the fence has dropped before."""
        ...

    def delete(
        self, collection: str, ids: list[str], timeout: float | None, tombstone: bool = False
    ) -> int: ...

    def clear_tombstones(self, collection: str, timeout: float | None) -> int: ...

    def stats(self, collection: str, timeout: float | None) -> ShardInfo: ...


@dataclass(frozen=True)
class ReshardSettings:
    page_size: int = 256
    # Pause after each page: limits the load a reshard adds to a serving cluster.
    page_pause_s: float = 0.0
    lock_ttl_s: float = 30.0
    rpc_timeout_s: float = 60.0
    # Pause between the flip and the clean-up, for requests that read the old layout.
    flip_grace_s: float = 1.0
    # An unavailable shard is retried this long (a restart) before the job fails; kept
    # below the lock's TTL so a stalled job notices it lost the lock before writing again.
    retry_for_s: float = 20.0


@dataclass(frozen=True)
class ReshardStatus:
    collection: str
    from_shards: int
    to_shards: int
    phase: str  # "none", "copying", "cleaning", "done", "failed"
    running: bool
    scanned: int
    total: int
    copied: int
    skipped: int
    removed: int
    error: str
    started_at: float
    updated_at: float


class LostLockError(Exception):
    """Another gateway replica took the job over (this one stalled past the lock's TTL)."""


class Resharder:
    def __init__(
        self,
        shards: list[ReshardShardPort],
        metadata: MetadataStore,
        store: ReshardStore,
        overrides_of: Callable[[CollectionConfig], IndexOverrides],
        settings: ReshardSettings | None = None,
    ) -> None:
        self._shards = shards
        self._metadata = metadata
        self._store = store
        self._overrides_of = overrides_of
        self._settings = settings or ReshardSettings()
        self._owner = f"gateway-{uuid.uuid4().hex[:12]}"
        self._threads: dict[str, threading.Thread] = {}

    # API -------------------------------------------------------------------

    def start(self, collection: str, shards: int) -> ReshardStatus:
        """Starts or resumes the job in a background thread; returns its status at once."""
        config = self._config(collection)
        if not 1 <= shards <= len(self._shards):
            raise FailedPreconditionError(
                f"reshard needs {shards} indexers; the cluster has {len(self._shards)}: scale "
                "the indexer StatefulSet first and list every shard in the gateway's "
                "VISEARCH_SHARD_ADDRS (locally, `visearch reshard` starts them for you)"
            )
        if config.pending_model_version:
            raise FailedPreconditionError(
                f"collection {collection!r} is being re-embedded (to "
                f"{config.pending_model_version}); reshard it once that has switched"
            )
        layout = Layout.of(config)
        if layout.resharding and layout.target != shards:
            raise FailedPreconditionError(
                f"collection {collection!r} is being resharded from {layout.shards} to "
                f"{layout.target} shards; finish that first (visearch reshard -c {collection} "
                f"--shards {layout.target})"
            )
        record = self._store.load(collection)
        pending_cleanup = (
            record is not None
            and record.phase == PHASE_CLEANING
            and record.to_shards == shards == config.shards
        )
        if not layout.resharding and config.shards == shards and not pending_cleanup:
            return ReshardStatus(
                collection, shards, shards, "none", False, 0, 0, 0, 0, 0, "", 0.0, 0.0
            )
        running_here = self._threads.get(collection)
        if running_here is not None and running_here.is_alive():
            return self.status(collection)
        if self._store.lease.acquire(collection, self._owner, self._settings.lock_ttl_s) == 0.0:
            thread = threading.Thread(
                target=self._run_logged, args=(collection, shards), name=f"reshard-{collection}"
            )
            thread.daemon = True
            self._threads[collection] = thread
            thread.start()
        status = self.status(collection)
        if status.to_shards == shards and status.phase in (PHASE_COPYING, PHASE_CLEANING):
            return status
        # The job has not saved its record yet: report what it is about to do.
        return ReshardStatus(
            collection,
            layout.shards if not pending_cleanup else record.from_shards,  # type: ignore[union-attr]
            shards,
            PHASE_CLEANING if pending_cleanup else PHASE_COPYING,
            True,
            0,
            0,
            0,
            0,
            0,
            "",
            time.time(),
            time.time(),
        )

    def status(self, collection: str) -> ReshardStatus:
        config = self._config(collection)
        record = self._store.load(collection)
        running = self._store.lease.holder(collection) is not None
        if record is None:
            return ReshardStatus(
                collection, config.shards, config.shards, "none", running, 0, 0, 0, 0, 0, "", 0, 0
            )
        phase = "failed" if record.error and not running else record.phase
        return ReshardStatus(
            collection,
            record.from_shards,
            record.to_shards,
            phase,
            running,
            record.scanned,
            record.total,
            record.copied,
            record.skipped,
            record.removed,
            record.error,
            record.started_at,
            record.updated_at,
        )

    def wait(self, collection: str, timeout_s: float | None = None) -> None:
        """Joins this replica's job thread (tests)."""
        thread = self._threads.get(collection)
        if thread is not None:
            thread.join(timeout_s)

    # The job ----------------------------------------------------------------

    def _run_logged(self, collection: str, shards: int) -> None:
        record: ReshardRecord | None = None
        try:
            record = self.run(collection, shards)
        except LostLockError:
            log.warning("reshard lock lost; another gateway continues", extra={"fields": {}})
        except Exception as exc:
            log.exception("reshard failed", extra={"fields": {"collection": collection}})
            record = self._store.load(collection)
            if record is not None:
                record.error = exc.message if isinstance(exc, VisearchError) else repr(exc)
                self._store.save(record)
        finally:
            self._store.lease.release(collection, self._owner)
        if record is not None and record.phase == PHASE_DONE:
            log.info("reshard done", extra={"fields": {"collection": collection}})

    def run(self, collection: str, shards: int) -> ReshardRecord:
        """Runs (or resumes) the whole job in this thread; the caller holds the lock."""
        config = self._config(collection)
        record = self._store.load(collection)
        cleaning = (
            record is not None
            and record.phase == PHASE_CLEANING
            and record.to_shards == shards == config.shards
        )
        if not config.target_shards and config.shards == shards and not cleaning:
            return record or self._new_record(config, shards)  # nothing to do (a race)
        if config.target_shards == shards:
            if record is None or record.phase != PHASE_COPYING or record.to_shards != shards:
                record = self._new_record(config, shards)
        elif not cleaning:
            record = self._open_window(config, shards)
        record.run_id = uuid.uuid4().hex
        record.error = ""
        self._store.save(record)
        if record.phase == PHASE_COPYING:
            self._copy(record)
            self._flip(record)
        self._clean_up(record)
        return record

    def _new_record(self, config: CollectionConfig, shards: int) -> ReshardRecord:
        old = range(config.shards)
        return ReshardRecord(
            config.name,
            config.shards,
            shards,
            PHASE_COPYING,
            total=self._sizes(config.index_name, old),
            namespace=config.index_name,
            started_at=time.time(),
        )

    def _open_window(self, config: CollectionConfig, shards: int) -> ReshardRecord:
        self._clear_tombstones(config.index_name, max(config.shards, shards))
        record = self._new_record(config, shards)
        self._store.save(record)
        self._update_config(
            config.name,
            lambda c: c.target_shards == 0 and not c.pending_model_version,
            target_shards=shards,
            # A DBA copy is laid out for the old shards and the copier does not move it:
            # searches use the collection's own vectors until the next augmentation pass.
            dba_pass=0,
            dba_pending_pass=0,
        )
        log.info(
            "reshard window open",
            extra={"fields": {"collection": config.name, "from": config.shards, "to": shards}},
        )
        return record

    def _copy(self, record: ReshardRecord) -> None:
        config = self._config(record.collection)
        overrides = self._overrides_of(config)
        self._renew(record)
        for target in range(record.to_shards):
            self._set_fence(record, target, record.run_id)
        for source in range(record.from_shards):
            if source in record.done_shards:
                continue
            for page in self._pages(record, source, ids_only=False):
                by_target: dict[int, list[int]] = defaultdict(list)
                for position, image_id in enumerate(page.ids):
                    by_target[shard_of(image_id, record.to_shards)].append(position)
                for target, positions in by_target.items():
                    self._renew(record)
                    written = self._copy_to(
                        record,
                        target,
                        [page.ids[i] for i in positions],
                        page.vectors[positions],
                        [page.metadata[i] for i in positions],
                        overrides,
                    )
                    record.copied += written
                    record.skipped += len(positions) - written

    def _copy_to(
        self,
        record: ReshardRecord,
        target: int,
        ids: list[str],
        vectors: np.ndarray,
        metadata: list[ItemMeta],
        overrides: IndexOverrides,
    ) -> int:
        """vectors: float32 [len(ids), d]. Returns how many the target shard wrote."""

        def copy() -> int:
            return self._shards[target].copy_if_absent(
                record.namespace, ids, vectors, metadata, overrides, record.run_id, self._rpc()
            )

        try:
            return self._retry(copy)
        except AbortedError:
            # The shard restarted (fences live in its memory), or this replica stalled and
            # another run took the job over; only the lock's holder sets the fence again.
            self._renew(record)
            self._set_fence(record, target, record.run_id)
            return self._retry(copy)

    def _set_fence(self, record: ReshardRecord, shard: int, run_id: str) -> None:
        try:
            self._retry(
                lambda: self._shards[shard].set_copy_fence(record.namespace, run_id, self._rpc())
            )
        except AbortedError as exc:  # another run took the job over while this one stalled
            raise LostLockError(record.collection) from exc

    def _flip(self, record: ReshardRecord) -> None:
        for target in range(record.to_shards):
            self._set_fence(record, target, "")
        self._update_config(
            record.collection,
            lambda c: c.target_shards == record.to_shards,
            shards=record.to_shards,
            target_shards=0,
        )
        record.phase = PHASE_CLEANING
        record.done_shards, record.cursors, record.scanned_by_shard = [], {}, {}
        record.total = self._sizes(record.namespace, range(record.from_shards))
        self._store.save(record)
        log.info("reshard flipped", extra={"fields": {"collection": record.collection}})
        time.sleep(self._settings.flip_grace_s)

    def _clean_up(self, record: ReshardRecord) -> None:
        for source in range(record.from_shards):
            if source in record.done_shards:
                continue
            for page in self._pages(record, source, ids_only=True):
                if page.ids:
                    record.removed += self._retry(
                        lambda s=source, ids=page.ids: self._shards[s].delete(
                            record.namespace, ids, self._rpc()
                        )
                    )
        self._clear_tombstones(record.namespace, max(record.from_shards, record.to_shards))
        record.phase = PHASE_DONE
        self._store.save(record)

    def _pages(self, record: ReshardRecord, source: int, ids_only: bool) -> Iterator[ShardPage]:
        """Pages of `source`'s moved ids from its saved cursor; saves progress after each
        page the caller has processed (so a resumed job redoes at most one page)."""
        key = str(source)
        while True:
            token = record.cursors.get(key, "")
            try:
                page = self._retry(
                    lambda token=token: self._shards[source].fetch(
                        record.namespace,
                        token,
                        self._settings.page_size,
                        record.to_shards,
                        ids_only,
                        self._rpc(),
                    )
                )
            except FailedPreconditionError:
                if not token:
                    raise
                # The shard restarted (its rows were renumbered): scan it again.
                record.cursors[key] = ""
                record.scanned_by_shard[key] = 0
                continue
            yield page
            record.scanned_by_shard[key] = page.scanned
            record.cursors[key] = page.next_page_token
            if not page.next_page_token:
                record.done_shards.append(source)
            self._store.save(record)
            self._renew(record)
            if not page.next_page_token:
                return
            time.sleep(self._settings.page_pause_s)

    # Helpers ----------------------------------------------------------------

    def _config(self, collection: str) -> CollectionConfig:
        config = self._metadata.get_collection(collection)
        if config is None:
            raise NotFoundError(f"collection {collection!r} does not exist")
        return config

    def _update_config(
        self, collection: str, precondition: Callable[[CollectionConfig], bool], **changes: int
    ) -> None:
        """Compare-and-set retried on concurrent edits of other fields of the config."""
        for _ in range(100):
            config = self._config(collection)
            if not precondition(config):
                raise FailedPreconditionError(
                    f"collection {collection!r} changed under the reshard: {config}"
                )
            if self._metadata.update_collection(config, replace(config, **changes)):  # type: ignore[arg-type]
                return
        raise UnavailableError(f"could not update collection {collection!r}: too much contention")

    def _sizes(self, collection: str, shards: range) -> int:
        return sum(
            self._retry(lambda s=s: self._shards[s].stats(collection, self._rpc())).size
            for s in shards
        )

    def _renew(self, record: ReshardRecord) -> None:
        if not self._store.lease.renew(record.collection, self._owner, self._settings.lock_ttl_s):
            raise LostLockError(record.collection)

    def _clear_tombstones(self, namespace: str, shards: int) -> None:
        for shard in range(shards):
            self._retry(lambda s=shard: self._shards[s].clear_tombstones(namespace, self._rpc()))

    def _rpc(self) -> float:
        return self._settings.rpc_timeout_s

    def _retry(self, call: Callable[[], T]) -> T:
        deadline = time.monotonic() + self._settings.retry_for_s
        while True:
            try:
                return call()
            except (UnavailableError, DeadlineExceededError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
