"""Kept for existing imports: the jump hash lives in services.common.sharding (the indexer
needs it too, to page through the ids a reshard moves)."""

from services.common.sharding import id_key, jump_hash, shard_of

__all__ = ["id_key", "jump_hash", "shard_of"]
