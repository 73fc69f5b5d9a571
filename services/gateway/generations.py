"""Writes to every generation of a collection while a re-embed runs.

A collection's vectors live on the shards under `config.index_name`; a re-embed
(services/gateway/reembed.py) builds the next generation under the pending
name, embedded with the pending model version. Why ingests are written to both
generations during the job rather than caught up afterwards: the job works from
a list of ids taken after the pending generation was published, so an ingest
either committed before that list was taken (the job embeds it) or commits
after, and then its re-read of the config (below) finds the pending generation
and writes the item there too. A catch-up pass would instead need a change log
and a second window in which new writes could slip between catch-up and switch.

Deletes go to every generation the same way. The write to the pending
generation costs an ingest one more embedding while the job runs.

The database-side augmented copies of the current generation (services/gateway/dba.py)
are views too: an ingest writes the item's own vector there (it is augmented by the next
pass), and a delete from a copy still being built leaves a tombstone, so the pass's
only-if-absent writes never bring the id back.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from services.common.index_types import ItemMeta
from services.common.metadata import CollectionConfig, MetadataStore
from services.gateway.ports import EmbedderPort, IngestItem, ShardPort
from services.gateway.routing import delete_routed, upsert_routed


class GenerationWriter:
    """Upserts / deletes in the generations of a collection a request has not reached yet."""

    def __init__(
        self,
        pool: ThreadPoolExecutor,
        embedder: EmbedderPort,
        shards: list[ShardPort],
        metadata: MetadataStore,
    ) -> None:
        self._pool = pool
        self._embedder = embedder
        self._shards = shards
        self._metadata = metadata

    def latest_views(self, collection: str) -> list[CollectionConfig]:
        """The generations a write must reach according to the config as it is now."""
        latest = self._metadata.get_collection(collection)
        return [] if latest is None else latest.generation_views()

    def upsert(
        self,
        views: list[CollectionConfig],
        written: set[str],
        items: list[IngestItem],
        images: list[bytes],
        remaining: Callable[[], float],
        embedded: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Embeds `images` with each view's model version and upserts them into each view's
        namespace not in `written` (which is updated). embedded: float32 [n, d] vectors of
        `images` by model version, already computed (filled as this embeds)."""
        known = {} if embedded is None else embedded
        for view in views:
            if view.index_name in written:
                continue
            if view.model_version not in known:
                known[view.model_version] = self._embedder.embed_global(
                    images, remaining(), view.model_version
                ).vectors
            upsert_routed(
                self._pool,
                self._shards,
                self._metadata,
                view,
                [item.id for item in items],
                known[view.model_version],
                [ItemMeta(item.label, dict(item.attributes)) for item in items],
                view.index_overrides(),
                remaining,
            )
            written.add(view.index_name)

    def delete(
        self,
        views: list[CollectionConfig],
        done: set[str],
        ids: list[str],
        remaining: Callable[[], float],
    ) -> None:
        for view in views:
            if view.index_name in done:
                continue
            building = view.view_dba_pass != 0 and view.view_dba_pass == view.dba_pending_pass
            delete_routed(
                self._pool, self._shards, self._metadata, view, ids, remaining, tombstone=building
            )
            done.add(view.index_name)
