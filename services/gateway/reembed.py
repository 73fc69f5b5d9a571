"""Re-embed a collection with another model version, then switch to it in one step.

The job (run by the gateway's `Reembed` RPC; `visearch reembed` drives it):

1. Probes the embedder with the target version (unknown -> NOT_FOUND, nothing changed).
2. Publishes a pending generation G = generation + 1 in the collection config (one
   compare-and-set). From then on every ingest and delete also reaches namespace
   `<name>@G` on the same shards, embedded with the target version
   (services/gateway/generations.py explains why that, not a catch-up pass).
3. Takes the list of ids and checkpoints it in Redis (services/gateway/reembed_store.py),
   then re-embeds it batch by batch: metadata -> image bytes from the object store ->
   embedder(target version) -> upsert into `<name>@G`. A batch counts as done only
   after its shard writes are acknowledged (logged in the shards' WAL); a resumed job
   skips done batches. After writing a batch it re-reads the batch's metadata: an id
   deleted meanwhile is deleted from `<name>@G`, an id re-ingested with other bytes is
   redone, so the job never leaves a stale vector behind a concurrent write.
4. Switches: one compare-and-set of the config sets model_version, generation = G and
   clears the pending fields. A search reads the config once and embeds with its model
   version and searches its namespace, so before the switch it uses the old pair, after
   it the new pair: never a mix.
5. Waits `drop_grace_s` (requests that read the old config finish), then drops the old
   namespace on every shard (Indexer.DropCollection: durable, the WAL stream goes too).

A crash anywhere resumes from the checkpoint when the command is run again (the lease,
renewed by a heartbeat, expires `lease_s` after the crash): before the switch it
continues the batches; after it, it finishes the drop.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from services.common.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from services.common.index_types import ItemMeta
from services.common.lease import held
from services.common.metadata import CollectionConfig, ImageMeta, dba_index_name, index_name
from services.common.model_registry import check_version
from services.gateway.core import Services
from services.gateway.generations import GenerationWriter
from services.gateway.model_probe import check_embedder_serves
from services.gateway.reembed_store import PHASE_SWITCHED, JobState, ReembedStore
from services.gateway.routing import upsert_routed

log = logging.getLogger(__name__)
DEFAULT_BATCH = 32
MAX_BATCH = 256
# Re-checks of a batch whose ids were re-ingested while it was being written.
MAX_REDO_ROUNDS = 5


@dataclass(frozen=True)
class ReembedProgress:
    collection: str
    model_version: str  # the target
    phase: str  # started | resumed | embedding | switched | done | noop
    generation: int
    previous_model_version: str
    total: int = 0  # ids the job covers
    done: int = 0  # of those, re-embedded (in completed batches)
    batches_total: int = 0
    batches_done: int = 0
    # Batches completed before this run started (a resumed job does not redo them).
    batches_skipped: int = 0


@dataclass(frozen=True)
class ReembedSettings:
    images_bucket: str
    default_drop_grace_s: float = 30.0
    lease_s: float = 10.0
    timeout_s: float = 60.0  # per embedder / shard call


class Reembedder:
    def __init__(self, services: Services, store: ReembedStore, settings: ReembedSettings) -> None:
        self._s = services
        self._store = store
        self._settings = settings
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="reembed")
        self._writer = GenerationWriter(
            self._pool, services.embedder, services.shards, services.metadata
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def run(
        self,
        collection: str,
        model_version: str,
        batch_size: int = 0,
        max_images_per_s: float = 0.0,
        drop_grace_s: float = -1.0,
    ) -> Iterator[ReembedProgress]:
        """Runs (or resumes) the job, yielding progress; stops between batches when the
        caller stops iterating."""
        check_version(model_version)
        batch_size = batch_size or DEFAULT_BATCH
        if not 1 <= batch_size <= MAX_BATCH:
            raise InvalidArgumentError(f"batch_size must be in 1..{MAX_BATCH}")
        if max_images_per_s < 0:
            raise InvalidArgumentError("max_images_per_s must be >= 0 (0 = unlimited)")
        grace = self._settings.default_drop_grace_s if drop_grace_s < 0 else drop_grace_s
        job = f"a re-embed of {collection!r}"
        with held(self._store.lease, collection, self._settings.lease_s, job):
            yield from self._run(collection, model_version, batch_size, max_images_per_s, grace)

    def _config(self, collection: str) -> CollectionConfig:
        config = self._s.metadata.get_collection(collection)
        if config is None:
            raise NotFoundError(f"collection {collection!r} does not exist")
        return config

    def _run(
        self, collection: str, version: str, batch_size: int, rate: float, grace: float
    ) -> Iterator[ReembedProgress]:
        config = self._config(collection)
        state = self._store.load(collection)
        if state is not None and state.phase == PHASE_SWITCHED:
            yield from self._finish(collection, state, grace)  # crashed after the switch
            if state.model_version == version:
                return
            config = self._config(collection)
        if config.pending_model_version and config.pending_model_version != version:
            raise FailedPreconditionError(
                f"collection {collection!r} is being re-embedded to "
                f"{config.pending_model_version!r}; finish that first (visearch reembed "
                f"--collection {collection} --model {config.pending_model_version})"
            )
        if not config.pending_model_version and config.model_version == version:
            yield ReembedProgress(collection, version, "noop", config.generation, version)
            return
        if config.target_shards:
            raise FailedPreconditionError(
                f"collection {collection!r} is being resharded; re-embed it afterwards"
            )
        resumed = bool(config.pending_model_version)
        if not resumed:
            config = self._publish_pending(config, version)
        generation = config.pending_generation
        stale = state is None or (state.model_version, state.generation) != (version, generation)
        if not resumed or stale:
            ids = self._s.metadata.list_ids(collection)  # after the pending generation exists
            state = JobState(version, generation, batch_size, len(ids))
            self._store.begin(collection, state, ids)
            resumed = False
        batches = math.ceil(state.total / state.batch_size)
        done = self._store.done_batches(collection)
        skipped = len(done)
        progress = ReembedProgress(
            collection,
            version,
            "resumed" if resumed else "started",
            generation,
            config.model_version,
            state.total,
            min(state.total, skipped * state.batch_size),
            batches,
            skipped,
            skipped,
        )
        yield progress
        target = config.pending_view()
        assert target is not None
        started = time.monotonic()
        embedded_here = 0
        for batch in range(batches):
            if batch in done:
                continue
            ids = self._store.ids(
                collection, batch * state.batch_size, (batch + 1) * state.batch_size
            )
            embedded_here += self._reembed_batch(target, ids)
            self._store.mark_done(collection, batch)
            done.add(batch)
            progress = replace(
                progress,
                phase="embedding",
                done=min(state.total, progress.done + len(ids)),
                batches_done=len(done),
            )
            yield progress
            if rate > 0:  # spare the serving path: at most `rate` images per second
                ahead = embedded_here / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        switched = self._switch(collection, version, generation)
        state = replace(
            state,
            phase=PHASE_SWITCHED,
            old_generation=switched.generation,
            old_model_version=switched.model_version,
        )
        self._store.save(collection, state)
        yield replace(progress, phase="switched")
        yield from self._finish(collection, state, grace)

    def _publish_pending(self, config: CollectionConfig, version: str) -> CollectionConfig:
        check_embedder_serves(self._s.embedder, version, self._settings.timeout_s)
        generation = config.generation + 1
        # Leftovers of an abandoned attempt at this generation would mix with the new one.
        self._drop(index_name(config.name, generation))
        pending = replace(config, pending_model_version=version, pending_generation=generation)
        if not self._s.metadata.update_collection(config, pending):
            raise FailedPreconditionError(
                f"collection {config.name!r} changed while the re-embed started; run it again"
            )
        log.info(
            "re-embed started",
            extra={"fields": {"collection": config.name, "to": version, "gen": generation}},
        )
        return pending

    def _reembed_batch(self, target: CollectionConfig, ids: list[str]) -> int:
        """Upserts `ids` into the target generation; returns images embedded."""
        embedded = 0
        todo = ids
        for _ in range(MAX_REDO_ROUNDS):
            metas = self._s.metadata.get_images(target.name, todo)
            live = [meta for meta in metas if meta is not None]
            if live:
                self._write(target, live)
                embedded += len(live)
            # Writes that raced with this batch: deletes are undone here, replaced bytes redone.
            after = self._s.metadata.get_images(target.name, todo)
            gone = [i for i, meta in zip(todo, after, strict=True) if meta is None]
            if gone:
                self._writer.delete([target], set(), gone, self._remaining)
            written = {meta.id: meta.sha256 for meta in live}
            todo = [
                meta.id
                for meta in after
                if meta is not None and written.get(meta.id) != meta.sha256
            ]
            if not todo:
                break
        return embedded

    def _write(self, target: CollectionConfig, metas: list[ImageMeta]) -> None:
        bucket = self._settings.images_bucket
        images = list(self._pool.map(lambda m: self._s.store.get(f"{bucket}/{m.sha256}"), metas))
        embedded = self._s.embedder.embed_global(
            images, self._settings.timeout_s, target.model_version
        )
        if embedded.model_version != target.model_version:
            raise FailedPreconditionError(
                f"the embedder answered with {embedded.model_version!r}, "
                f"not {target.model_version!r}"
            )
        upsert_routed(
            self._pool,
            self._s.shards,
            self._s.metadata,
            target,
            [meta.id for meta in metas],
            embedded.vectors,
            [ItemMeta(meta.label, dict(meta.attributes)) for meta in metas],
            target.index_overrides(),
            self._remaining,
        )

    def _remaining(self) -> float:
        return self._settings.timeout_s

    def _switch(self, collection: str, version: str, generation: int) -> CollectionConfig:
        """One compare-and-set: the pending generation becomes the collection's. Returns
        the config it replaced."""
        for _ in range(10):
            config = self._config(collection)
            if config.pending_model_version != version or config.pending_generation != generation:
                raise FailedPreconditionError(
                    f"collection {collection!r} no longer awaits {version!r} (generation "
                    f"{generation}); was it re-embedded elsewhere?"
                )
            switched = replace(
                config,
                model_version=version,
                generation=generation,
                pending_model_version="",
                pending_generation=0,
                # The DBA copies augment the old generation's vectors (services/gateway/dba.py).
                dba_pass=0,
                dba_pending_pass=0,
            )
            if self._s.metadata.update_collection(config, switched):
                log.info(
                    "re-embed switched",
                    extra={"fields": {"collection": collection, "to": version, "gen": generation}},
                )
                return config
        raise UnavailableError(f"collection {collection!r} kept changing; run the job again")

    def _finish(self, collection: str, state: JobState, grace: float) -> Iterator[ReembedProgress]:
        """After the switch: waits out requests that read the old config, drops it."""
        if grace > 0:
            time.sleep(grace)
        old = index_name(collection, state.old_generation)
        self._drop(old)
        config = self._config(collection)  # the old generation's DBA copies, if any
        for dba_pass in range(config.dba_dropped_through + 1, config.dba_last_pass + 1):
            self._drop(dba_index_name(old, dba_pass))
        self._store.clear(collection)
        batches = math.ceil(state.total / state.batch_size)
        yield ReembedProgress(
            collection,
            state.model_version,
            "done",
            state.generation,
            state.old_model_version,
            state.total,
            state.total,
            batches,
            batches,
        )

    def _drop(self, namespace: str) -> None:
        futures = [
            self._pool.submit(port.drop, namespace, self._settings.timeout_s)
            for port in self._s.shards
        ]
        for future in futures:
            future.result()
