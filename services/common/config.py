"""Reading and validating configuration from the environment.

Each service defines one frozen dataclass built by `from_env(env)` in its
`main()`; these helpers make every bad value fail at start-up with the
variable's name in the message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit, urlunsplit

from services.common.errors import ConfigError

if TYPE_CHECKING:
    from services.common.tls import TlsConfig

MIB = 1024 * 1024
DEFAULT_MAX_IMAGE_BYTES = 20 * MIB
# Room for protobuf framing around the largest image.
GRPC_MESSAGE_OVERHEAD_BYTES = 4 * MIB
# The most visearch RPCs a server runs at once before answering RESOURCE_EXHAUSTED (load
# shedding, VISEARCH_MAX_INFLIGHT): a ceiling per service; below it the limit adapts so
# that admitted calls finish inside their deadlines (grpc_server.AdaptiveLimit). Raise it
# where the hardware is bigger (a GPU embedder).
DEFAULT_MAX_INFLIGHT = {"gateway": 32, "embedder": 32, "verifier": 8, "indexer": 64}
# Handler threads beyond the in-flight limit: they refuse the excess at once (a request
# waiting for a thread is neither counted nor refused) and answer health checks.
SPARE_WORKERS = 8


def env_str(env: Mapping[str, str], name: str, default: str | None = None) -> str:
    value = env.get(name, default)
    if value is None or value == "":
        if default is not None:
            return default
        raise ConfigError(f"{name} is required")
    return value


def env_int(
    env: Mapping[str, str],
    name: str,
    default: int,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        value = default
    else:
        try:
            value = int(raw)
        except ValueError as exc:
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be <= {maximum}, got {value}")
    return value


def env_float(
    env: Mapping[str, str],
    name: str,
    default: float,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        value = default
    else:
        try:
            value = float(raw)
        except ValueError as exc:
            raise ConfigError(f"{name} must be a number, got {raw!r}") from exc
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be <= {maximum}, got {value}")
    return value


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def env_list(env: Mapping[str, str], name: str, default: str) -> tuple[str, ...]:
    raw = env_str(env, name, default)
    return tuple(part.strip() for part in raw.split(",") if part.strip())


@dataclass(frozen=True)
class ServerConfig:
    """What every gRPC server process shares."""

    service: str
    host: str
    grpc_port: int
    metrics_port: int
    workers: int
    max_image_bytes: int
    max_message_bytes: int
    grace_seconds: float
    # When set, the bound ports are written there as JSON once serving.
    port_file: str
    # TLS on the gRPC port (services.common.tls); None = plaintext.
    tls: TlsConfig | None = None
    # A plaintext port that serves only grpc.health.v1 (-1 = none): the kubelet's gRPC
    # probes speak no TLS.
    health_port: int = -1
    # Load shedding (services.common.grpc_server.ErrorMetricsInterceptor): at most this many
    # visearch RPCs run at once (an adaptive limit's ceiling); the rest get RESOURCE_EXHAUSTED
    # with a retry pushback of at least retry_pushback_ms.
    max_inflight: int = 64
    retry_pushback_ms: int = 100

    @classmethod
    def from_env(cls, env: Mapping[str, str], service: str, default_port: int) -> ServerConfig:
        from services.common.tls import TlsConfig  # imports this module

        max_image = env_int(env, "VISEARCH_MAX_IMAGE_BYTES", DEFAULT_MAX_IMAGE_BYTES, minimum=1024)
        # Internal services require client certificates; the public gateway does not.
        tls = TlsConfig.from_env(env, client_auth_default=service != "gateway")
        if tls is not None and not tls.cert:
            raise ConfigError("TLS on a server needs VISEARCH_TLS_CERT and VISEARCH_TLS_KEY")
        max_inflight = env_int(
            env, "VISEARCH_MAX_INFLIGHT", DEFAULT_MAX_INFLIGHT.get(service, 64), minimum=1
        )
        workers = env_int(
            env, "VISEARCH_WORKERS", max(16, max_inflight + SPARE_WORKERS), minimum=1, maximum=1024
        )
        if workers <= max_inflight:
            raise ConfigError(
                f"VISEARCH_WORKERS ({workers}) must exceed VISEARCH_MAX_INFLIGHT ({max_inflight}): "
                "requests beyond the limit need a free thread to be refused quickly"
            )
        return cls(
            service=service,
            host=env_str(env, "VISEARCH_HOST", "127.0.0.1"),
            grpc_port=env_int(env, "VISEARCH_GRPC_PORT", default_port, minimum=0, maximum=65535),
            metrics_port=env_int(env, "VISEARCH_METRICS_PORT", 0, minimum=0, maximum=65535),
            workers=workers,
            max_image_bytes=max_image,
            max_message_bytes=max_image + GRPC_MESSAGE_OVERHEAD_BYTES,
            grace_seconds=env_float(env, "VISEARCH_GRACE_SECONDS", 5.0, minimum=0.0),
            port_file=env.get("VISEARCH_PORT_FILE", ""),
            tls=tls,
            health_port=env_int(env, "VISEARCH_HEALTH_PORT", -1, minimum=-1, maximum=65535),
            max_inflight=max_inflight,
            retry_pushback_ms=env_int(
                env, "VISEARCH_RETRY_PUSHBACK_MS", 100, minimum=1, maximum=60_000
            ),
        )


@dataclass(frozen=True)
class ObjectStoreConfig:
    endpoint: str
    access_key: str
    secret_key: str
    secure: bool
    images_bucket: str
    features_bucket: str
    models_bucket: str
    snapshots_bucket: str
    # Where clients may stage images to ingest or search by object key.
    uploads_bucket: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ObjectStoreConfig:
        return cls(
            endpoint=env_str(env, "VISEARCH_S3_ENDPOINT"),
            access_key=env_str(env, "VISEARCH_S3_ACCESS_KEY"),
            secret_key=env_str(env, "VISEARCH_S3_SECRET_KEY"),
            secure=env_bool(env, "VISEARCH_S3_SECURE", False),
            images_bucket=env_str(env, "VISEARCH_BUCKET_IMAGES", "images"),
            features_bucket=env_str(env, "VISEARCH_BUCKET_FEATURES", "features"),
            models_bucket=env_str(env, "VISEARCH_BUCKET_MODELS", "models"),
            snapshots_bucket=env_str(env, "VISEARCH_BUCKET_SNAPSHOTS", "snapshots"),
            uploads_bucket=env_str(env, "VISEARCH_BUCKET_UPLOADS", "uploads"),
        )

    @property
    def buckets(self) -> list[str]:
        return [
            self.images_bucket,
            self.features_bucket,
            self.models_bucket,
            self.snapshots_bucket,
            self.uploads_bucket,
        ]


def redis_url_from_env(env: Mapping[str, str], *, required: bool = True) -> str:
    """VISEARCH_REDIS_URL with the credentials of VISEARCH_REDIS_USERNAME (default
    "default") and VISEARCH_REDIS_PASSWORD added when the password is set (a Secret on
    Kubernetes) and the URL carries none. "" when not required and unset."""
    url = env_str(env, "VISEARCH_REDIS_URL", None if required else "")
    password = env.get("VISEARCH_REDIS_PASSWORD", "")
    if not url or not password:
        return url
    parts = urlsplit(url)
    if parts.password:
        raise ConfigError(
            "set the Redis password in VISEARCH_REDIS_URL or VISEARCH_REDIS_PASSWORD, not both"
        )
    username = env.get("VISEARCH_REDIS_USERNAME", "") or "default"
    netloc = (
        f"{quote(username, safe='')}:{quote(password, safe='')}@{parts.netloc.rpartition('@')[2]}"
    )
    return urlunsplit(parts._replace(netloc=netloc))
