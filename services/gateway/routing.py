"""Shard writes routed by the collection's layout, safe while a reshard changes it.

Why a write re-reads the config after it: a gateway that read the layout just
before a reshard started may write an id to its old shard after the reshard's
copier already copied that id's previous version. Re-reading the config after
the shard writes and, if the layout changed meanwhile, writing again under the
new layout before acknowledging closes that gap: a write that completed before
the config changed is seen by the copier, which scans only after the change;
one that straddles the change is redone under the new layout, and the redo's
plain upsert overwrites whatever the copier put there (copies are
only-if-absent). Searches do the same, so a search never misses ids that the
reshard's clean-up removed from the shards it asked.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from services.common.index_types import IndexOverrides, ItemMeta
from services.common.metadata import CollectionConfig, MetadataStore
from services.gateway.layout import Layout
from services.gateway.ports import ShardPort

# A layout changes at most twice per reshard (start, flip); more rounds mean a bug.
MAX_ROUNDS = 4


def latest_layout(metadata: MetadataStore, config: CollectionConfig) -> Layout:
    latest = metadata.get_collection(config.name)
    return Layout.of(latest) if latest is not None else Layout.of(config)


def upsert_routed(
    pool: ThreadPoolExecutor,
    shards: list[ShardPort],
    metadata: MetadataStore,
    config: CollectionConfig,
    ids: list[str],
    vectors: np.ndarray,
    item_meta: list[ItemMeta],
    overrides: IndexOverrides,
    remaining: Callable[[], float],
) -> Layout:
    """vectors: float32 [n, d]. Upserts each id on its shard under the write layout and
    drops it from its old-layout shard; returns the layout the writes ended under."""
    layout = Layout.of(config)
    for _ in range(MAX_ROUNDS):
        by_shard: dict[int, list[int]] = defaultdict(list)
        stale: dict[int, list[str]] = defaultdict(list)
        for position, image_id in enumerate(ids):
            by_shard[layout.write_shard(image_id)].append(position)
            old = layout.stale_shard(image_id)
            if old is not None:
                stale[old].append(image_id)
        _wait_all(
            [
                pool.submit(
                    shards[shard].upsert,
                    config.index_name,
                    [ids[p] for p in positions],
                    vectors[positions],
                    [item_meta[p] for p in positions],
                    overrides,
                    remaining(),
                )
                for shard, positions in by_shard.items()
            ]
        )
        # After the new copy is in place, so a search in between finds one or the other.
        _wait_all(
            [
                pool.submit(shards[shard].delete, config.index_name, shard_ids, remaining())
                for shard, shard_ids in stale.items()
            ]
        )
        latest = latest_layout(metadata, config)
        if latest == layout:
            return layout
        layout = latest
    return layout


def delete_routed(
    pool: ThreadPoolExecutor,
    shards: list[ShardPort],
    metadata: MetadataStore,
    config: CollectionConfig,
    ids: list[str],
    remaining: Callable[[], float],
    tombstone: bool = False,
) -> None:
    """Deletes ids from every shard that may hold them (tombstones on the new layout's, or
    on all of them with `tombstone`)."""
    layout = Layout.of(config)
    for _ in range(MAX_ROUNDS):
        plain: dict[int, list[str]] = defaultdict(list)
        tombstoned: dict[int, list[str]] = defaultdict(list)
        for image_id in ids:
            for shard, leave_tombstone in layout.delete_shards(image_id):
                (tombstoned if tombstone or leave_tombstone else plain)[shard].append(image_id)
        futures = [
            pool.submit(shards[shard].delete, config.index_name, shard_ids, remaining())
            for shard, shard_ids in plain.items()
        ]
        futures += [
            pool.submit(shards[shard].delete, config.index_name, shard_ids, remaining(), True)
            for shard, shard_ids in tombstoned.items()
        ]
        _wait_all(futures)
        latest = latest_layout(metadata, config)
        if latest == layout:
            return
        layout = latest


def _wait_all(futures: list[Future[object]]) -> None:
    for future in futures:
        future.result()
