"""The shard: one VectorIndex per collection. No grpc here."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

import numpy as np

from services.common.errors import InvalidArgumentError, NotFoundError
from services.indexer.vector_index import Neighbor, VectorIndex

COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_collection_name(name: str) -> None:
    if not COLLECTION_NAME.match(name):
        raise InvalidArgumentError(
            f"collection name {name!r} must be 1-64 characters of letters, digits, '_', '.', '-'"
            " starting with a letter or digit"
        )


@dataclass(frozen=True)
class CollectionStats:
    collection: str
    size: int
    dims: int
    method: str


class Shard:
    def __init__(self, shard_id: int, exact_threshold: int) -> None:
        self.shard_id = shard_id
        self.exact_threshold = exact_threshold
        self._indexes: dict[str, VectorIndex] = {}
        self._lock = threading.Lock()

    def upsert(self, collection: str, ids: list[str], vectors: np.ndarray) -> int:
        """vectors: float32 [n, d]. Returns the collection's size afterwards."""
        check_collection_name(collection)
        if len(set(ids)) != len(ids):
            raise InvalidArgumentError("duplicate ids in one upsert")
        if vectors.ndim != 2 or vectors.shape[0] == 0:
            raise InvalidArgumentError("upsert needs at least one vector")
        index = self._index(collection, create_dims=vectors.shape[1])
        index.upsert(ids, vectors)
        return index.size

    def delete(self, collection: str, ids: list[str]) -> tuple[int, int]:
        """Returns (deleted, size afterwards); an unknown collection deletes nothing."""
        check_collection_name(collection)
        with self._lock:
            index = self._indexes.get(collection)
        if index is None:
            return 0, 0
        return index.delete(ids), index.size

    def search(
        self, collection: str, queries: np.ndarray, k: int
    ) -> tuple[list[list[Neighbor]], str]:
        """queries: float32 [q, d]. A collection this shard never saw is empty."""
        check_collection_name(collection)
        with self._lock:
            index = self._indexes.get(collection)
        if index is None:
            return [[] for _ in range(len(queries))], "exact"
        return index.search(queries, k), index.method

    def stats(self, collection: str = "") -> list[CollectionStats]:
        with self._lock:
            items = sorted(self._indexes.items())
        if collection:
            items = [(name, index) for name, index in items if name == collection]
            if not items:
                raise NotFoundError(f"shard {self.shard_id} holds no collection {collection!r}")
        return [CollectionStats(name, ix.size, ix.dims, ix.method) for name, ix in items]

    def _index(self, collection: str, create_dims: int) -> VectorIndex:
        with self._lock:
            index = self._indexes.get(collection)
            if index is None:
                index = VectorIndex(create_dims, self.exact_threshold)
                self._indexes[collection] = index
            return index
