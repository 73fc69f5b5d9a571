"""Entry point: python -m services.indexer.main (configured by environment)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import grpc
import redis

from services.common.config import (
    ObjectStoreConfig,
    ServerConfig,
    env_float,
    env_int,
    env_str,
    redis_url_from_env,
)
from services.common.grpc_server import serve_forever
from services.common.logging_setup import configure_logging
from services.common.metrics import ServiceMetrics
from services.common.objectstore import S3ObjectStore
from services.indexer.core import Shard
from services.indexer.durability import ObjectSnapshotStore, RedisWriteAheadLog
from services.indexer.servicer import IndexerServicer
from visearch.v1 import indexer_pb2, indexer_pb2_grpc

DEFAULT_PORT = 50061
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexerConfig:
    server: ServerConfig
    shard_id: int
    exact_threshold: int
    # Durability is on when both are set: WAL in Redis, snapshots in the object store.
    redis_url: str
    object_store: ObjectStoreConfig | None
    snapshot_interval_s: float
    log_level: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> IndexerConfig:
        redis_url = redis_url_from_env(env, required=False)
        return cls(
            server=ServerConfig.from_env(env, "indexer", DEFAULT_PORT),
            shard_id=env_int(env, "VISEARCH_SHARD_ID", 0, minimum=0, maximum=4095),
            exact_threshold=env_int(env, "VISEARCH_EXACT_THRESHOLD", 20_000, minimum=1),
            redis_url=redis_url,
            object_store=ObjectStoreConfig.from_env(env) if redis_url else None,
            snapshot_interval_s=env_float(env, "VISEARCH_SNAPSHOT_INTERVAL_S", 300.0, minimum=1.0),
            log_level=env_str(env, "VISEARCH_LOG_LEVEL", "INFO"),
        )


def build_shard(config: IndexerConfig) -> Shard:
    if not config.redis_url or config.object_store is None:
        log.warning("no VISEARCH_REDIS_URL: running without a write-ahead log (not durable)")
        return Shard(config.shard_id, config.exact_threshold)
    client = redis.Redis.from_url(config.redis_url, socket_timeout=30)
    store = S3ObjectStore.from_config(config.object_store)
    return Shard(
        config.shard_id,
        config.exact_threshold,
        RedisWriteAheadLog(client, config.shard_id),
        ObjectSnapshotStore(store, config.object_store.snapshots_bucket, client, config.shard_id),
    )


def snapshot_periodically(
    shard: Shard, servicer: IndexerServicer, interval_s: float, stop: threading.Event
) -> None:
    while not stop.wait(interval_s):
        try:
            started = time.perf_counter()
            covered = shard.snapshot_all()
            servicer.record_all()
            log.info(
                "snapshots written",
                extra={"fields": {"collections": len(covered), "s": time.perf_counter() - started}},
            )
        except Exception:
            log.exception("periodic snapshot failed; will retry")


def add_indexer(server: grpc.Server, servicer: IndexerServicer) -> list[str]:
    indexer_pb2_grpc.add_IndexerServicer_to_server(servicer, server)
    return [indexer_pb2.DESCRIPTOR.services_by_name["Indexer"].full_name]


def main() -> None:
    config = IndexerConfig.from_env(os.environ)
    configure_logging("indexer", config.log_level)
    metrics = ServiceMetrics("indexer")
    shard = build_shard(config)
    servicer = IndexerServicer(shard, metrics)
    stop = threading.Event()

    def load() -> None:
        shard.recover()
        servicer.record_all()
        if shard.durable:
            threading.Thread(
                target=snapshot_periodically,
                args=(shard, servicer, config.snapshot_interval_s, stop),
                name="snapshots",
                daemon=True,
            ).start()

    try:
        serve_forever(
            config.server, metrics, lambda server: add_indexer(server, servicer), load=load
        )
    finally:
        stop.set()


if __name__ == "__main__":
    main()
