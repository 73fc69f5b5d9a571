"""Entry point: python -m services.verifier.main (configured by environment)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from services.common.config import (
    ObjectStoreConfig,
    ServerConfig,
    env_float,
    env_int,
    env_str,
)
from services.common.grpc_server import serve_forever
from services.common.logging_setup import configure_logging
from services.common.metrics import ServiceMetrics
from services.common.objectstore import S3ObjectStore
from services.verifier.core import FeatureCache, GeometricReranker
from services.verifier.fusion import FusionSettings
from services.verifier.geometry import GeometrySettings
from services.verifier.servicer import VerifierServicer
from services.verifier.texture import HistogramCache, TextureReranker, TextureSettings
from visearch.v1 import verifier_pb2, verifier_pb2_grpc

DEFAULT_PORT = 50071
MIB = 1024 * 1024


@dataclass(frozen=True)
class VerifierConfig:
    server: ServerConfig
    object_store: ObjectStoreConfig
    cache_bytes: int
    workers: int
    log_level: str
    texture: TextureSettings = TextureSettings()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> VerifierConfig:
        return cls(
            server=ServerConfig.from_env(env, "verifier", DEFAULT_PORT),
            object_store=ObjectStoreConfig.from_env(env),
            cache_bytes=env_int(env, "VISEARCH_FEATURE_CACHE_MB", 512, minimum=0) * MIB,
            workers=env_int(env, "VISEARCH_VERIFY_WORKERS", 4, minimum=1, maximum=64),
            log_level=env_str(env, "VISEARCH_LOG_LEVEL", "INFO"),
            texture=texture_settings_from_env(env),
        )


def texture_settings_from_env(env: Mapping[str, str]) -> TextureSettings:
    defaults = TextureSettings()
    return TextureSettings(
        min_global_score=env_float(env, "VISEARCH_TEXTURE_MIN_GLOBAL", defaults.min_global_score),
        svc_c=env_float(env, "VISEARCH_TEXTURE_SVC_C", defaults.svc_c),
        kernel=env_str(env, "VISEARCH_TEXTURE_KERNEL", defaults.kernel),
    )


def build_texture_reranker(config: VerifierConfig) -> TextureReranker:
    return TextureReranker(
        S3ObjectStore.from_config(config.object_store),
        config.texture,
        HistogramCache(),
        max_workers=config.workers,
        features_bucket=config.object_store.features_bucket,
    )


def build_reranker(config: VerifierConfig) -> GeometricReranker:
    store = S3ObjectStore.from_config(config.object_store)
    return GeometricReranker(
        store,
        GeometrySettings(),
        FusionSettings(),
        FeatureCache(config.cache_bytes),
        max_workers=config.workers,
        features_bucket=config.object_store.features_bucket,
    )


def add_verifier(
    server: grpc.Server,
    reranker: GeometricReranker,
    metrics: ServiceMetrics,
    texture: TextureReranker | None = None,
) -> list[str]:
    verifier_pb2_grpc.add_VerifierServicer_to_server(
        VerifierServicer(reranker, metrics, texture), server
    )
    return [verifier_pb2.DESCRIPTOR.services_by_name["Verifier"].full_name]


def main() -> None:
    config = VerifierConfig.from_env(os.environ)
    configure_logging("verifier", config.log_level)
    metrics = ServiceMetrics("verifier")
    reranker = build_reranker(config)
    texture = build_texture_reranker(config)
    serve_forever(
        config.server,
        metrics,
        lambda server: add_verifier(server, reranker, metrics, texture),
        load=lambda: None,
    )


if __name__ == "__main__":
    main()
