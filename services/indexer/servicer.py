"""gRPC adapter for the shard core."""

from __future__ import annotations

import time

import grpc

from services.common.errors import FailedPreconditionError, InvalidArgumentError
from services.common.index_types import IndexOverrides, ItemMeta, SearchFilter
from services.common.metrics import ServiceMetrics
from services.common.proto_convert import vectors_from_proto
from services.indexer.core import Shard
from visearch.v1 import indexer_pb2, indexer_pb2_grpc


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
        size = self._shard.upsert(
            request.collection, list(request.ids), vectors, metadata, overrides
        )
        self._record(request.collection)
        return indexer_pb2.UpsertResponse(upserted=len(request.ids), size=size)

    def Delete(
        self, request: indexer_pb2.IndexDeleteRequest, context: grpc.ServicerContext
    ) -> indexer_pb2.IndexDeleteResponse:
        deleted, size = self._shard.delete(request.collection, list(request.ids))
        if deleted:
            self._record(request.collection)
        return indexer_pb2.IndexDeleteResponse(deleted=deleted, size=size)

    def Search(
        self, request: indexer_pb2.IndexSearchRequest, context: grpc.ServicerContext
    ) -> indexer_pb2.IndexSearchResponse:
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
                    neighbors=[indexer_pb2.Neighbor(id=n.id, score=n.score) for n in neighbors]
                )
                for neighbors in results
            ],
        )

    def Stats(
        self, request: indexer_pb2.IndexStatsRequest, context: grpc.ServicerContext
    ) -> indexer_pb2.IndexStatsResponse:
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

    def Snapshot(
        self, request: indexer_pb2.SnapshotRequest, context: grpc.ServicerContext
    ) -> indexer_pb2.SnapshotResponse:
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
