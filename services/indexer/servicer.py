"""gRPC adapter for the shard core."""

from __future__ import annotations

import contextlib
import time

import grpc

from services.common.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    UnavailableError,
)
from services.common.index_types import IndexOverrides, ItemMeta, SearchFilter
from services.common.metrics import ServiceMetrics
from services.common.proto_convert import metadata_to_proto, vectors_from_proto, vectors_to_proto
from services.indexer.core import Shard
from services.indexer.vector_index import Neighbor
from visearch.v1 import indexer_pb2, indexer_pb2_grpc

DEFAULT_FETCH_LIMIT = 500


class IndexerServicer(indexer_pb2_grpc.IndexerServicer):
    def __init__(self, shard: Shard, metrics: ServiceMetrics) -> None:
        self._shard = shard
        shard_label = str(shard.shard_id)
        self._size = metrics.gauge(
            "index_size_vectors", "Vectors held per collection.", ("shard", "collection")
        )
        self._search_seconds = metrics.histogram(
            "search_duration_seconds", "Index search time per batch.", ("shard", "method")
        )
        self._shard_label = shard_label
        self._wal_lag = metrics.gauge(
            "wal_lag_entries",
            "Log entries written since the latest snapshot (replayed on restart).",
            ("shard", "collection"),
        )
        self._snapshot_time = metrics.gauge(
            "snapshot_timestamp_seconds",
            "Unix time of the latest snapshot (age = time() - this).",
            ("shard", "collection"),
        )

    def _check_loaded(self) -> None:
        if not self._shard.loaded:
            raise UnavailableError(
                f"shard {self._shard.shard_id} is still loading its snapshots and write-ahead "
                "log; retry shortly (a search counts this shard as missing meanwhile)"
            )

    def record_all(self) -> None:
        """Refreshes the per-collection gauges (after periodic snapshots)."""
        for stats in self._shard.stats():
            self._record(stats.collection)

    def _record(self, collection: str) -> None:
        for stats in self._shard.stats(collection):
            labels = (self._shard_label, stats.collection)
            self._size.labels(*labels).set(stats.size)
            self._wal_lag.labels(*labels).set(stats.wal_lag_entries)
            if stats.snapshot_at:
                self._snapshot_time.labels(*labels).set(stats.snapshot_at)

    def Upsert(
        self, request: indexer_pb2.UpsertRequest, context: grpc.ServicerContext
    ) -> indexer_pb2.UpsertResponse:
        self._check_loaded()
        vectors = vectors_from_proto(request.vectors)
        if len(request.ids) != len(vectors):
            raise InvalidArgumentError(f"{len(request.ids)} ids but {len(vectors)} vectors")
        metadata = [ItemMeta(m.label, dict(m.attributes)) for m in request.metadata] or None
        overrides = (
            IndexOverrides(
                exact_threshold=request.params.exact_threshold,
                num_leaves=request.params.num_leaves,
                leaves_to_search=request.params.leaves_to_search,
                reorder=request.params.reorder,
            )
            if request.HasField("params")
            else None
        )
        if request.only_if_absent:
            upserted, size = self._shard.upsert_if_absent(
                request.collection,
                list(request.ids),
                vectors,
                metadata,
                overrides,
                fence=request.copy_fence,
            )
        else:
            upserted = len(request.ids)
            size = self._shard.upsert(
                request.collection, list(request.ids), vectors, metadata, overrides
            )
        self._record(request.collection)
        return indexer_pb2.UpsertResponse(upserted=upserted, size=size)

    def Delete(
        self, request: indexer_pb2.IndexDeleteRequest, context: grpc.ServicerContext
    ) -> indexer_pb2.IndexDeleteResponse:
        self._check_loaded()
        deleted, size = self._shard.delete(
            request.collection, list(request.ids), tombstone=request.tombstone
        )
        if deleted:
            self._record(request.collection)
        return indexer_pb2.IndexDeleteResponse(deleted=deleted, size=size)

    def Search(
        self, request: indexer_pb2.IndexSearchRequest, context: grpc.ServicerContext
    ) -> indexer_pb2.IndexSearchResponse:
        self._check_loaded()
        queries = vectors_from_proto(request.queries)
        if len(queries) == 0:
            raise InvalidArgumentError("search needs at least one query vector")
        start = time.perf_counter()
        search_filter = SearchFilter(request.filter.label, dict(request.filter.attributes))
        results, method = self._shard.search(request.collection, queries, request.k, search_filter)
        self._search_seconds.labels(self._shard_label, method).observe(time.perf_counter() - start)
        return indexer_pb2.IndexSearchResponse(
            shard=self._shard.shard_id,
            method=method,
            results=[
                indexer_pb2.NeighborList(
                    neighbors=self._neighbors(
                        request.collection, neighbors, request.vectors_for_top
                    )
                )
                for neighbors in results
            ],
        )

    def _neighbors(
        self, collection: str, neighbors: list[Neighbor], vectors_for_top: int
    ) -> list[indexer_pb2.Neighbor]:
        """Protos of one query's neighbours; the first `vectors_for_top` carry their vector
        (float32 little-endian; empty if the id was deleted since the search)."""
        if vectors_for_top < 0:
            raise InvalidArgumentError(f"vectors_for_top must be >= 0, got {vectors_for_top}")
        top = [n.id for n in neighbors[:vectors_for_top]]
        vectors = self._shard.vectors(collection, top) if top else []
        packed = [b"" if v is None else v.astype("<f4").tobytes() for v in vectors]
        packed += [b""] * (len(neighbors) - len(packed))
        return [
            indexer_pb2.Neighbor(id=n.id, score=n.score, vector=data)
            for n, data in zip(neighbors, packed, strict=True)
        ]

    def Stats(
        self, request: indexer_pb2.IndexStatsRequest, context: grpc.ServicerContext
    ) -> indexer_pb2.IndexStatsResponse:
        self._check_loaded()
        return indexer_pb2.IndexStatsResponse(
            shard=self._shard.shard_id,
            collections=[
                indexer_pb2.CollectionIndexStats(
                    collection=s.collection,
                    size=s.size,
                    dims=s.dims,
                    method=s.method,
                    applied_seq=s.applied_seq,
                    snapshot_seq=s.snapshot_seq,
                )
                for s in self._shard.stats(request.collection)
            ],
        )

    def Fetch(
        self, request: indexer_pb2.FetchRequest, context: grpc.ServicerContext
    ) -> indexer_pb2.FetchResponse:
        self._check_loaded()
        page = self._shard.fetch(
            request.collection,
            request.page_token,
            request.limit or DEFAULT_FETCH_LIMIT,
            request.moved_under_shards,
            request.ids_only,
        )
        return indexer_pb2.FetchResponse(
            ids=page.ids,
            vectors=vectors_to_proto(page.vectors) if page.metadata else [],
            metadata=[metadata_to_proto(m.label, m.attributes) for m in page.metadata],
            next_page_token=page.next_page_token,
            scanned=page.scanned,
            size=page.size,
        )

    def ClearTombstones(
        self, request: indexer_pb2.ClearTombstonesRequest, context: grpc.ServicerContext
    ) -> indexer_pb2.ClearTombstonesResponse:
        self._check_loaded()
        return indexer_pb2.ClearTombstonesResponse(
            cleared=self._shard.clear_tombstones(request.collection)
        )

    def SetCopyFence(
        self, request: indexer_pb2.SetCopyFenceRequest, context: grpc.ServicerContext
    ) -> indexer_pb2.SetCopyFenceResponse:
        self._check_loaded()
        previous = self._shard.set_copy_fence(request.collection, request.run_id)
        return indexer_pb2.SetCopyFenceResponse(previous_run_id=previous)

    def DropCollection(
        self, request: indexer_pb2.DropCollectionRequest, context: grpc.ServicerContext
    ) -> indexer_pb2.DropCollectionResponse:
        self._check_loaded()
        dropped = self._shard.drop(request.collection)
        for gauge in (self._size, self._wal_lag, self._snapshot_time):
            with contextlib.suppress(KeyError):
                gauge.remove(self._shard_label, request.collection)
        return indexer_pb2.DropCollectionResponse(dropped=dropped)

    def Snapshot(
        self, request: indexer_pb2.SnapshotRequest, context: grpc.ServicerContext
    ) -> indexer_pb2.SnapshotResponse:
        self._check_loaded()
        if not self._shard.durable:
            raise FailedPreconditionError(
                f"shard {self._shard.shard_id} runs without a write-ahead log and snapshot store "
                "(set VISEARCH_REDIS_URL and VISEARCH_S3_ENDPOINT)"
            )
        if request.collection:
            covered = {request.collection: self._shard.snapshot(request.collection)}
        else:
            covered = self._shard.snapshot_all()
        for name in covered:
            self._record(name)
        return indexer_pb2.SnapshotResponse(
            covered_seq={name: seq for name, seq in covered.items() if seq is not None}
        )
