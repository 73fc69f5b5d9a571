"""Client-side gRPC plumbing: channels with retries, and status codes back to VisearchError."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from services.common.errors import ERRORS_BY_STATUS, InternalError, VisearchError

ResponseT = TypeVar("ResponseT")
MAX_RECONNECT_BACKOFF_MS = 2000

# gRPC's own retry machinery (service config) for calls that are safe to repeat.
RETRY_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2.0,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


def make_channel(address: str, max_message_bytes: int, *, retries: bool = True) -> grpc.Channel:
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.enable_retries", 1 if retries else 0),
        # Spread calls over every address a name resolves to (headless Services on Kubernetes).
        ("grpc.lb_policy_name", "round_robin"),
        # A restarted peer (a shard after a crash) is reached again within seconds, not the
        # default two minutes of reconnect backoff.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
    ]
    if retries:
        options.append(("grpc.service_config", RETRY_SERVICE_CONFIG))
    return grpc.insecure_channel(address, options=options)


def error_from_rpc(exc: grpc.RpcError, peer: str) -> VisearchError:
    """Maps a failed call to the VisearchError of its status code, naming the peer."""
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    name = code.name if code is not None else "UNKNOWN"
    cls = ERRORS_BY_STATUS.get(name, InternalError)
    prefix = f"{peer}: " if peer else ""
    return cls(f"{prefix}{details or name}")


def call(
    method: Callable[..., ResponseT], request: Any, *, timeout: float | None, peer: str
) -> ResponseT:
    """Invokes a unary stub method; raises the VisearchError matching its status."""
    try:
        return method(request, timeout=timeout)
    except grpc.RpcError as exc:
        raise error_from_rpc(exc, peer) from exc
