"""Where a collection's ids live, stable or in the middle of a reshard.

A collection uses shards 0..shards-1 of the cluster's indexers. While a reshard
to `target` shards runs (config.target_shards > 0), every gateway replica reads
the same layout from the collection config in Redis on each request:

- an upsert goes to the id's shard under the new count, and is deleted from
  its shard under the old count where that differs (so no stale version stays
  searchable beside the new one);
- a delete goes to both shards, leaving a tombstone on the new one, so a
  reshard copy of the id made later is skipped (services.indexer.core.Shard);
- a search asks every shard of both layouts and keeps each id once.

A request that read the config, wrote, and finds on re-reading it that the
write routing changed meanwhile (a reshard started or flipped) writes again
under the new layout before it answers: see GatewayCore.ingest / delete.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.errors import FailedPreconditionError
from services.common.metadata import CollectionConfig
from services.common.sharding import shard_of


@dataclass(frozen=True)
class Layout:
    shards: int
    target: int = 0  # > 0 while resharding to this many shards

    @classmethod
    def of(cls, config: CollectionConfig) -> Layout:
        return cls(config.shards, config.target_shards)

    @property
    def resharding(self) -> bool:
        return self.target > 0

    @property
    def write_shards(self) -> int:
        return self.target or self.shards

    @property
    def search_shards(self) -> range:
        """Every shard that may hold an id of the collection."""
        return range(max(self.shards, self.target))

    def write_shard(self, image_id: str) -> int:
        return shard_of(image_id, self.write_shards)

    def stale_shard(self, image_id: str) -> int | None:
        """The old-layout shard an upsert must also delete the id from, if any."""
        if not self.resharding:
            return None
        old = shard_of(image_id, self.shards)
        return None if old == self.write_shard(image_id) else old

    def delete_shards(self, image_id: str) -> list[tuple[int, bool]]:
        """(shard, leave a tombstone) pairs a delete of the id goes to."""
        new = self.write_shard(image_id)
        if not self.resharding:
            return [(new, False)]
        old = shard_of(image_id, self.shards)
        return [(new, True)] if old == new else [(new, True), (old, False)]


def check_fits(config: CollectionConfig, indexers: int) -> Layout:
    """The collection's layout, if the gateway knows enough indexers for it."""
    layout = Layout.of(config)
    needed = len(layout.search_shards)
    if needed > indexers:
        raise FailedPreconditionError(
            f"collection {config.name!r} uses {needed} shards but this gateway knows "
            f"{indexers} indexers (VISEARCH_SHARD_ADDRS): list every indexer shard"
        )
    return layout
