"""Reading and validating configuration from the environment.

Each service defines one frozen dataclass built by `from_env(env)` in its
`main()`; these helpers make every bad value fail at start-up with the
variable's name in the message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.common.errors import ConfigError

MIB = 1024 * 1024
DEFAULT_MAX_IMAGE_BYTES = 20 * MIB
# Room for protobuf framing around the largest image.
GRPC_MESSAGE_OVERHEAD_BYTES = 4 * MIB


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

    @classmethod
    def from_env(cls, env: Mapping[str, str], service: str, default_port: int) -> ServerConfig:
        max_image = env_int(env, "VISEARCH_MAX_IMAGE_BYTES", DEFAULT_MAX_IMAGE_BYTES, minimum=1024)
        return cls(
            service=service,
            host=env_str(env, "VISEARCH_HOST", "127.0.0.1"),
            grpc_port=env_int(env, "VISEARCH_GRPC_PORT", default_port, minimum=0, maximum=65535),
            metrics_port=env_int(env, "VISEARCH_METRICS_PORT", 0, minimum=0, maximum=65535),
            workers=env_int(env, "VISEARCH_WORKERS", 16, minimum=1, maximum=1024),
            max_image_bytes=max_image,
            max_message_bytes=max_image + GRPC_MESSAGE_OVERHEAD_BYTES,
            grace_seconds=env_float(env, "VISEARCH_GRACE_SECONDS", 5.0, minimum=0.0),
            port_file=env.get("VISEARCH_PORT_FILE", ""),
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
