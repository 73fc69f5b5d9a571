"""Entry point: python -m services.gateway.main (configured by environment)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace

import grpc
import redis

from services.common.ack_durability import AckBarrier, AckDurability
from services.common.api_keys import KEY_PATTERN, ApiKeys, RedisApiKeyStore
from services.common.blob_ledger import RedisBlobLedger
from services.common.config import (
    ObjectStoreConfig,
    ServerConfig,
    env_float,
    env_int,
    env_list,
    env_str,
    redis_url_from_env,
)
from services.common.errors import ConfigError, UnavailableError
from services.common.grpc_client import call
from services.common.grpc_server import LoadingSlot, serve_forever
from services.common.lease import RedisLease
from services.common.logging_setup import configure_logging
from services.common.metadata import RedisMetadataStore
from services.common.metrics import ServiceMetrics
from services.common.objectstore import S3ObjectStore
from services.common.tls import INTERNAL_VARIABLES, TlsConfig
from services.gateway.auth import AuthInterceptor
from services.gateway.clients import GrpcEmbedder, GrpcShard, GrpcVerifier
from services.gateway.core import GatewayCore, GatewaySettings, Services
from services.gateway.dba import DatabaseAugmenter, DbaSettings
from services.gateway.janitor import Janitor, JanitorSettings
from services.gateway.reembed import Reembedder, ReembedSettings
from services.gateway.reembed_store import RedisReembedStore
from services.gateway.reshard import ReshardSettings
from services.gateway.reshard_store import RedisReshardStore
from services.gateway.servicer import GatewayServicer
from visearch.v1 import embedder_pb2, embedder_pb2_grpc, gateway_pb2, gateway_pb2_grpc

DEFAULT_PORT = 50051
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatewayConfig:
    server: ServerConfig
    object_store: ObjectStoreConfig
    redis_url: str
    embedder_address: str
    shard_addresses: tuple[str, ...]
    verifier_address: str
    default_timeout_s: float
    rerank_depth: int
    # Shards of a new collection (0 = every indexer listed; fewer leave room to reshard).
    default_shards: int
    reshard: ReshardSettings
    startup_timeout_s: float
    log_level: str
    # A re-embed job's lease; a crashed job can be resumed this long after it died.
    reembed_lease_s: float = 10.0
    # TLS of the calls to the embedder, shards and verifier (None = plaintext):
    # VISEARCH_INTERNAL_TLS_*, else the gateway's own VISEARCH_TLS_* files.
    internal_tls: TlsConfig | None = None
    # VISEARCH_AUTH: "required" (every Gateway call needs an API key with the right role;
    # services/gateway/auth.py) or "off".
    auth_required: bool = True
    # VISEARCH_BOOTSTRAP_API_KEY (from a secret): registered as "bootstrap" with admin:*
    # at start unless its id is already known (a revoked bootstrap key stays revoked).
    bootstrap_api_key: str = ""
    # VISEARCH_WAITAOF_*: wait for Valkey's (and replicas') fsync before acknowledging writes.
    ack_durability: AckDurability = AckDurability()
    # Erasure of unreferenced images and the orphan sweep (services/gateway/janitor.py).
    janitor: JanitorSettings = JanitorSettings()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GatewayConfig:
        shards = env_list(env, "VISEARCH_SHARD_ADDRS", "")
        if not shards:
            raise ConfigError("VISEARCH_SHARD_ADDRS must list the indexer shards, in shard order")
        server = ServerConfig.from_env(env, "gateway", DEFAULT_PORT)
        internal_tls = TlsConfig.from_env(
            env, client_auth_default=False, variables=INTERNAL_VARIABLES
        )
        return cls(
            server=server,
            object_store=ObjectStoreConfig.from_env(env),
            redis_url=redis_url_from_env(env),
            embedder_address=env_str(env, "VISEARCH_EMBEDDER_ADDR"),
            shard_addresses=shards,
            verifier_address=env_str(env, "VISEARCH_VERIFIER_ADDR"),
            default_timeout_s=env_float(env, "VISEARCH_DEFAULT_TIMEOUT_S", 30.0, minimum=0.01),
            rerank_depth=env_int(env, "VISEARCH_RERANK_DEPTH", 50, minimum=1, maximum=1000),
            default_shards=env_int(
                env, "VISEARCH_DEFAULT_SHARDS", 0, minimum=0, maximum=len(shards)
            ),
            reshard=ReshardSettings(
                page_size=env_int(env, "VISEARCH_RESHARD_PAGE_SIZE", 256, minimum=1, maximum=2000),
                page_pause_s=env_float(env, "VISEARCH_RESHARD_PAGE_PAUSE_S", 0.0, minimum=0.0),
            ),
            startup_timeout_s=env_float(env, "VISEARCH_STARTUP_TIMEOUT_S", 120.0, minimum=1.0),
            log_level=env_str(env, "VISEARCH_LOG_LEVEL", "INFO"),
            reembed_lease_s=env_float(env, "VISEARCH_REEMBED_LEASE_S", 10.0, minimum=1.0),
            internal_tls=internal_tls or _outgoing(server.tls),
            auth_required=_auth_mode(env),
            bootstrap_api_key=_bootstrap_key(env),
            ack_durability=AckDurability.from_env(env),
            janitor=JanitorSettings(
                erase_after_s=env_float(env, "VISEARCH_ERASE_AFTER_S", 60.0, minimum=0.0),
                erase_interval_s=env_float(env, "VISEARCH_ERASE_INTERVAL_S", 10.0, minimum=0.1),
                orphan_grace_s=env_float(env, "VISEARCH_ORPHAN_GRACE_S", 600.0, minimum=1.0),
                orphan_interval_s=env_float(
                    env, "VISEARCH_ORPHAN_SWEEP_INTERVAL_S", 300.0, minimum=1.0
                ),
            ),
        )


def _auth_mode(env: Mapping[str, str]) -> bool:
    mode = env_str(env, "VISEARCH_AUTH", "required").strip().lower()
    if mode not in ("required", "off"):
        raise ConfigError(f"VISEARCH_AUTH must be 'required' or 'off', got {mode!r}")
    return mode == "required"


def _bootstrap_key(env: Mapping[str, str]) -> str:
    key = env.get("VISEARCH_BOOTSTRAP_API_KEY", "").strip()
    if key and not KEY_PATTERN.match(key):
        raise ConfigError("VISEARCH_BOOTSTRAP_API_KEY must look like vsk_<16 hex>_<secret>")
    return key


def _outgoing(tls: TlsConfig | None) -> TlsConfig | None:
    """The server's files as a client's: its certificate becomes the client certificate."""
    return None if tls is None else replace(tls, require_client_cert=False)


def wait_for_model_version(embedder: GrpcEmbedder, timeout_s: float) -> str:
    """The embedder's model version; collections created here are bound to it."""
    stub = embedder_pb2_grpc.EmbedderStub(embedder.channel)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            stats = call(
                stub.Stats, embedder_pb2.EmbedderStatsRequest(), timeout=5, peer="embedder"
            )
            return stats.model_version
        except UnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def build_core(config: GatewayConfig) -> GatewayCore:
    store = S3ObjectStore.from_config(config.object_store)
    store.ensure_buckets(config.object_store.buckets)
    metadata = RedisMetadataStore(config.redis_url)
    metadata.ping()
    limit = config.server.max_message_bytes
    tls = config.internal_tls
    embedder = GrpcEmbedder(config.embedder_address, limit, tls)
    model_version = wait_for_model_version(embedder, config.startup_timeout_s)
    services = Services(
        embedder=embedder,
        shards=[
            GrpcShard(i, address, limit, tls) for i, address in enumerate(config.shard_addresses)
        ],
        verifier=GrpcVerifier(config.verifier_address, limit, tls),
        store=store,
        metadata=metadata,
        reshard_store=RedisReshardStore(config.redis_url),
        ledger=RedisBlobLedger(_redis(config)),
    )
    settings = GatewaySettings(
        images_bucket=config.object_store.images_bucket,
        features_bucket=config.object_store.features_bucket,
        max_image_bytes=config.server.max_image_bytes,
        model_version=model_version,
        uploads_bucket=config.object_store.uploads_bucket,
        default_timeout_s=config.default_timeout_s,
        default_rerank_depth=config.rerank_depth,
        default_shards=config.default_shards,
        reshard=config.reshard,
    )
    log.info("gateway ready", extra={"fields": {"model_version": model_version}})
    return GatewayCore(services, settings)


def build_reembedder(config: GatewayConfig, core: GatewayCore) -> Reembedder:
    return Reembedder(
        core.services,
        RedisReembedStore(config.redis_url),
        ReembedSettings(
            images_bucket=config.object_store.images_bucket,
            default_drop_grace_s=config.default_timeout_s,
            lease_s=config.reembed_lease_s,
            timeout_s=max(config.default_timeout_s, 60.0),
        ),
    )


def build_augmenter(config: GatewayConfig, core: GatewayCore) -> DatabaseAugmenter:
    client = redis.Redis.from_url(config.redis_url, decode_responses=True, socket_timeout=10)
    return DatabaseAugmenter(
        core.services.shards,  # type: ignore[arg-type]  # the gRPC shards implement both ports
        core.services.metadata,
        RedisLease(client, "dba:{}:lease", "augmentation lease"),
        DbaSettings(
            lease_s=config.reembed_lease_s,
            timeout_s=max(config.default_timeout_s, 60.0),
            drop_grace_s=config.default_timeout_s,
        ),
    )


def _redis(config: GatewayConfig) -> redis.Redis:
    return redis.Redis.from_url(config.redis_url, decode_responses=True, socket_timeout=10)


def build_janitor(config: GatewayConfig, core: GatewayCore) -> Janitor:
    return Janitor(
        core.services.shards,  # type: ignore[arg-type]  # the gRPC shards implement both ports
        core.services.metadata,
        core.ledger,
        core.services.store,
        RedisLease(_redis(config), "housekeeping:{}:lease", "housekeeping lease"),
        config.janitor,
    )


def add_gateway(
    server: grpc.Server,
    slot: LoadingSlot[GatewayCore],
    reembed_slot: LoadingSlot[Reembedder] | None = None,
    augment_slot: LoadingSlot[DatabaseAugmenter] | None = None,
    api_keys: ApiKeys | None = None,
    ack_barrier: AckBarrier | None = None,
) -> list[str]:
    barrier = ack_barrier.wait if ack_barrier is not None else None
    servicer = GatewayServicer(slot, reembed_slot, augment_slot, api_keys, barrier)
    gateway_pb2_grpc.add_GatewayServicer_to_server(servicer, server)
    return [gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name]


def main() -> None:
    config = GatewayConfig.from_env(os.environ)
    configure_logging("gateway", config.log_level)
    metrics = ServiceMetrics("gateway")
    slot: LoadingSlot[GatewayCore] = LoadingSlot("the gateway")
    reembed_slot: LoadingSlot[Reembedder] = LoadingSlot("the re-embed job runner")
    augment_slot: LoadingSlot[DatabaseAugmenter] = LoadingSlot("the augmentation pass runner")
    api_keys = ApiKeys(RedisApiKeyStore.from_url(config.redis_url))
    barrier = AckBarrier(
        redis.Redis.from_url(config.redis_url, socket_timeout=30), config.ack_durability
    )
    log.info("durability: %s", config.ack_durability.describe())
    if not config.auth_required:
        log.warning("VISEARCH_AUTH=off: every caller may use every Gateway method")

    def load() -> None:
        if config.auth_required and config.bootstrap_api_key:
            added = api_keys.ensure(config.bootstrap_api_key, "bootstrap", ["admin:*"])
            log.info("bootstrap API key %s", "registered" if added else "already known")
        core = build_core(config)
        reembed_slot.set(build_reembedder(config, core))
        augment_slot.set(build_augmenter(config, core))
        slot.set(core)
        build_janitor(config, core).start()

    serve_forever(
        config.server,
        metrics,
        lambda server: add_gateway(
            server,
            slot,
            reembed_slot,
            augment_slot,
            api_keys if config.auth_required else None,
            barrier,
        ),
        load=load,
        interceptors=[AuthInterceptor(api_keys)] if config.auth_required else (),
    )


if __name__ == "__main__":
    main()
