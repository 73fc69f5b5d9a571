"""Entry point: python -m services.indexer.main (configured by environment)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from services.common.config import ServerConfig, env_int, env_str
from services.common.grpc_server import serve_forever
from services.common.logging_setup import configure_logging
from services.common.metrics import ServiceMetrics
from services.indexer.core import Shard
from services.indexer.servicer import IndexerServicer
from visearch.v1 import indexer_pb2, indexer_pb2_grpc

DEFAULT_PORT = 50061


@dataclass(frozen=True)
class IndexerConfig:
    server: ServerConfig
    shard_id: int
    exact_threshold: int
    log_level: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> IndexerConfig:
        return cls(
            server=ServerConfig.from_env(env, "indexer", DEFAULT_PORT),
            shard_id=env_int(env, "VISEARCH_SHARD_ID", 0, minimum=0, maximum=4095),
            exact_threshold=env_int(env, "VISEARCH_EXACT_THRESHOLD", 20_000, minimum=1),
            log_level=env_str(env, "VISEARCH_LOG_LEVEL", "INFO"),
        )


def add_indexer(server: grpc.Server, shard: Shard, metrics: ServiceMetrics) -> list[str]:
    indexer_pb2_grpc.add_IndexerServicer_to_server(IndexerServicer(shard, metrics), server)
    return [indexer_pb2.DESCRIPTOR.services_by_name["Indexer"].full_name]


def main() -> None:
    config = IndexerConfig.from_env(os.environ)
    configure_logging("indexer", config.log_level)
    metrics = ServiceMetrics("indexer")
    shard = Shard(config.shard_id, config.exact_threshold)
    serve_forever(
        config.server,
        metrics,
        lambda server: add_indexer(server, shard, metrics),
        load=lambda: None,
    )


if __name__ == "__main__":
    main()
