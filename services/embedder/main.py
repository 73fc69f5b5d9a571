"""Entry point: python -m services.embedder.main (configured by environment)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from services.common.config import (
    ObjectStoreConfig,
    ServerConfig,
    env_float,
    env_int,
    env_list,
    env_str,
)
from services.common.errors import ConfigError
from services.common.grpc_server import LoadingSlot, serve_forever
from services.common.imaging import ImageLimits
from services.common.logging_setup import configure_logging
from services.common.metrics import ServiceMetrics
from services.common.model_registry import check_version, fetch, load_local
from services.common.objectstore import S3ObjectStore
from services.embedder.core import BatchingSettings, EmbedderCore, GlobalModel, create_session
from services.embedder.local_model import LocalModelSource, load_delf_model
from services.embedder.servicer import EmbedderServicer
from visearch.v1 import embedder_pb2, embedder_pb2_grpc

DEFAULT_PORT = 50052
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass(frozen=True)
class EmbedderConfig:
    server: ServerConfig
    providers: tuple[str, ...]
    # Either a local model folder, or a version fetched from the registry.
    model_dir: str
    model_version: str
    model_cache_dir: str
    # The model registry; None with a local model folder and no VISEARCH_S3_ENDPOINT.
    object_store: ObjectStoreConfig | None
    # ONNX sessions kept in memory, the default model's included (LRU beyond it).
    max_model_sessions: int
    intra_op_threads: int
    batching: BatchingSettings
    max_image_bytes: int
    max_local_features: int
    log_level: str
    local_model: LocalModelSource = LocalModelSource()
    # Threads for decode, preprocessing, local features and texture; 0 = one per core.
    cpu_workers: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> EmbedderConfig:
        server = ServerConfig.from_env(env, "embedder", DEFAULT_PORT)
        model_dir = env.get("VISEARCH_MODEL_DIR", "")
        model_version = env.get("VISEARCH_MODEL_VERSION", "")
        if not model_dir and not model_version:
            raise ConfigError("set VISEARCH_MODEL_DIR or VISEARCH_MODEL_VERSION")
        providers = env_list(
            env, "VISEARCH_ORT_PROVIDERS", "CUDAExecutionProvider,CPUExecutionProvider"
        )
        return cls(
            server=server,
            providers=providers,
            model_dir=model_dir,
            model_version=model_version,
            model_cache_dir=env_str(
                env, "VISEARCH_MODEL_CACHE", str(Path.home() / ".cache" / "visearch" / "models")
            ),
            object_store=(
                ObjectStoreConfig.from_env(env)
                if model_version or env.get("VISEARCH_S3_ENDPOINT")
                else None
            ),
            max_model_sessions=env_int(
                env, "VISEARCH_MAX_MODEL_SESSIONS", 3, minimum=1, maximum=64
            ),
            intra_op_threads=env_int(env, "VISEARCH_ORT_THREADS", 0, minimum=0),
            batching=BatchingSettings(
                max_batch=env_int(env, "VISEARCH_MAX_BATCH", 16, minimum=1, maximum=512),
                max_wait_ms=env_float(env, "VISEARCH_MAX_WAIT_MS", 5.0, minimum=0.0),
            ),
            max_image_bytes=server.max_image_bytes,
            max_local_features=env_int(env, "VISEARCH_MAX_LOCAL_FEATURES", 1000, minimum=16),
            log_level=env_str(env, "VISEARCH_LOG_LEVEL", "INFO"),
            local_model=LocalModelSource.from_env(env),
            cpu_workers=env_int(env, "VISEARCH_CPU_WORKERS", 0, minimum=0, maximum=256),
        )


def registry_loader(config: EmbedderConfig) -> Callable[[str], GlobalModel] | None:
    """Loads a version from the model registry (cached in VISEARCH_MODEL_CACHE)."""
    if config.object_store is None:
        return None
    store = S3ObjectStore.from_config(config.object_store)
    bucket = config.object_store.models_bucket
    cache = Path(config.model_cache_dir)

    def load(version: str) -> GlobalModel:
        check_version(version)
        manifest, path = fetch(store, bucket, "global", version, cache)
        return GlobalModel(
            manifest, create_session(path, config.providers, config.intra_op_threads)
        )

    return load


def load_model(config: EmbedderConfig) -> GlobalModel:
    if config.model_dir:
        manifest, path = load_local(Path(config.model_dir))
        return GlobalModel(
            manifest, create_session(path, config.providers, config.intra_op_threads)
        )
    loader = registry_loader(config)
    assert loader is not None
    return loader(config.model_version)


def build_core(config: EmbedderConfig, metrics: ServiceMetrics) -> EmbedderCore:
    batch_size = metrics.histogram(
        "batch_size_images", "Images per model run.", buckets=BATCH_SIZE_BUCKETS
    )
    queue_seconds = metrics.histogram("queue_duration_seconds", "Wait before a model run.")
    provider = metrics.gauge("provider_info", "Active ONNX Runtime provider.", ("provider",))
    images = metrics.counter(
        "images_embedded", "Images embedded per model version.", ("model_version",)
    )
    runs = metrics.counter("model_runs", "Model runs (batches) per version.", ("model_version",))
    sessions = metrics.gauge("model_sessions", "Model versions loaded in memory.")
    loads = metrics.counter("model_loads", "Model versions loaded on demand.", ("model_version",))
    expired = metrics.counter(
        "expired_images", "Images not decoded or not run: their deadline had passed."
    )
    model = load_model(config)
    provider.labels(model.providers[0]).set(1)
    sessions.set(1)

    def on_batch(rows: int, queued: float) -> None:
        batch_size.observe(rows)
        queue_seconds.observe(queued)

    def on_version_batch(version: str, rows: int, queued: float) -> None:
        images.labels(version).inc(rows)
        runs.labels(version).inc()

    def on_load(version: str, loaded: int) -> None:
        loads.labels(version).inc()
        sessions.set(loaded)

    return EmbedderCore(
        model,
        ImageLimits(max_bytes=config.max_image_bytes),
        config.batching,
        config.max_local_features,
        on_batch=on_batch,
        loader=registry_loader(config),
        max_sessions=config.max_model_sessions,
        on_version_batch=on_version_batch,
        on_load=on_load,
        delf=load_delf_model(
            config.local_model,
            config.object_store,
            Path(config.model_cache_dir),
            config.intra_op_threads,
        ),
        max_delf_features=config.local_model.max_features,
        on_expired=expired.inc,
        cpu_workers=config.cpu_workers,
    )


def add_embedder(server: grpc.Server, slot: LoadingSlot[EmbedderCore]) -> list[str]:
    embedder_pb2_grpc.add_EmbedderServicer_to_server(EmbedderServicer(slot), server)
    return [embedder_pb2.DESCRIPTOR.services_by_name["Embedder"].full_name]


def main() -> None:
    config = EmbedderConfig.from_env(os.environ)
    configure_logging("embedder", config.log_level)
    metrics = ServiceMetrics("embedder")
    slot: LoadingSlot[EmbedderCore] = LoadingSlot("the embedding model")
    serve_forever(
        config.server,
        metrics,
        lambda server: add_embedder(server, slot),
        load=lambda: slot.set(build_core(config, metrics)),
    )


if __name__ == "__main__":
    main()
