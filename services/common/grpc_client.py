"""Client-side gRPC plumbing: channels with retries, and status codes back to VisearchError."""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from services.common.errors import (
    ERRORS_BY_STATUS,
    InternalError,
    ResourceExhaustedError,
    VisearchError,
)
from services.common.tls import TlsConfig, channel_credentials, channel_options

ResponseT = TypeVar("ResponseT")
MAX_RECONNECT_BACKOFF_MS = 2000
# How often a channel with a client certificate looks at its files' stamps.
TLS_CHECK_INTERVAL_S = 5.0
# A replaced channel is closed this long after (its in-flight calls have finished by then).
RETIRED_CHANNEL_CLOSE_S = 600.0
log = logging.getLogger(__name__)

RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"
# Names one call in every error message and in the service's log (the caller may set it).
REQUEST_ID_KEY = "x-request-id"


def retry_service_config(*codes: str) -> str:
    """gRPC's own retry machinery (service config) for calls that are safe to repeat."""
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": [{}],
                    "retryPolicy": {
                        "maxAttempts": 4,
                        "initialBackoff": "0.05s",
                        "maxBackoff": "1s",
                        "backoffMultiplier": 2.0,
                        "retryableStatusCodes": list(codes),
                    },
                }
            ]
        }
    )


RETRY_SERVICE_CONFIG = retry_service_config("UNAVAILABLE")
# Clients at the edge (visearch.client) also retry load shedding: a server that sheds
# answers RESOURCE_EXHAUSTED before running the call, with a positive
# `grpc-retry-pushback-ms`, and the retry waits that long (other RESOURCE_EXHAUSTED, e.g. an
# image over the limits, carry -1 and are not retried). Services inside the cluster do not:
# a shed call goes straight back to the edge, rather than being retried inside a request
# whose deadline is running out, multiplying work under overload.
SHED_RETRY_SERVICE_CONFIG = retry_service_config("UNAVAILABLE", "RESOURCE_EXHAUSTED")


def make_channel(
    address: str,
    max_message_bytes: int,
    *,
    retries: bool = True,
    tls: TlsConfig | None = None,
    retry_shed: bool = False,
) -> grpc.Channel:
    """A channel with retries; over TLS (mutual when `tls` names a client certificate)
    when `tls` is given, plaintext otherwise. retry_shed: also retry RESOURCE_EXHAUSTED
    that carries a retry pushback (clients at the edge)."""
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
        config = SHED_RETRY_SERVICE_CONFIG if retry_shed else RETRY_SERVICE_CONFIG
        options.append(("grpc.service_config", config))
    if tls is None:
        return grpc.insecure_channel(address, options=options)
    options.extend(channel_options(tls))

    def make() -> grpc.Channel:
        return grpc.secure_channel(address, channel_credentials(tls), options=options)

    return ReloadingChannel(make, tls) if tls.cert else make()


class _ReloadingUnaryUnary(grpc.UnaryUnaryMultiCallable):
    """A unary method of a ReloadingChannel: each call goes to its current channel."""

    def __init__(self, parent: ReloadingChannel, method: str, kwargs: dict[str, Any]) -> None:
        self._parent = parent
        self._method = method
        self._kwargs = kwargs
        self._cache: tuple[grpc.Channel, grpc.UnaryUnaryMultiCallable] | None = None

    def _current(self) -> grpc.UnaryUnaryMultiCallable:
        channel = self._parent.current()
        cache = self._cache
        if cache is None or cache[0] is not channel:
            cache = (channel, channel.unary_unary(self._method, **self._kwargs))
            self._cache = cache
        return cache[1]

    def __call__(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        return self._current()(request, *args, **kwargs)

    def with_call(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        return self._current().with_call(request, *args, **kwargs)

    def future(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        return self._current().future(request, *args, **kwargs)


class ReloadingChannel(grpc.Channel):
    """A TLS channel whose client certificate follows its files: when they change (checked
    at most every `check_interval_s`, on a call), later calls go to a channel made anew with
    the new files; the old one finishes its calls and is closed after a while. A pair that
    does not load (a half-done rotation) is ignored until it does. Unary methods follow the
    reload; streaming ones stay on the channel current when they were looked up."""

    def __init__(
        self,
        make: Callable[[], grpc.Channel],
        tls: TlsConfig,
        check_interval_s: float = TLS_CHECK_INTERVAL_S,
    ) -> None:
        self._make = make
        self._tls = tls
        self._interval = check_interval_s
        self._lock = threading.Lock()
        self._stamp = tls.stamp()
        self._channel = make()
        self._next_check = time.monotonic() + check_interval_s
        self._retired: list[tuple[float, grpc.Channel]] = []
        self.reloads = 0

    def current(self) -> grpc.Channel:
        now = time.monotonic()
        if now < self._next_check:
            return self._channel
        with self._lock:
            if now >= self._next_check:
                self._next_check = now + self._interval
                self._reload_if_changed(now)
            return self._channel

    def _reload_if_changed(self, now: float) -> None:
        try:
            stamp = self._tls.stamp()
            if stamp == self._stamp:
                return
            if self._tls.cert:
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(
                    self._tls.cert, self._tls.key
                )
            channel = self._make()
        except (OSError, ssl.SSLError) as exc:
            log.warning("client TLS files changed but do not load (%s); keeping the old", exc)
            return
        self._retired.append((now, self._channel))
        self._channel, self._stamp = channel, stamp
        self.reloads += 1
        log.info("client TLS files reloaded")
        while self._retired and now - self._retired[0][0] > RETIRED_CHANNEL_CLOSE_S:
            self._retired.pop(0)[1].close()

    def unary_unary(
        self,
        method: str,
        request_serializer: Callable[..., Any] | None = None,
        response_deserializer: Callable[..., Any] | None = None,
        _registered_method: bool | None = False,
    ) -> grpc.UnaryUnaryMultiCallable:
        kwargs = {
            "request_serializer": request_serializer,
            "response_deserializer": response_deserializer,
            "_registered_method": _registered_method,
        }
        return _ReloadingUnaryUnary(self, method, kwargs)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self.current().unary_stream(method, *args, **kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self.current().stream_unary(method, *args, **kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self.current().stream_stream(method, *args, **kwargs)

    def subscribe(self, callback: Callable[..., Any], try_to_connect: bool = False) -> None:
        self.current().subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Callable[..., Any]) -> None:
        self._channel.unsubscribe(callback)

    def close(self) -> None:
        with self._lock:
            for _, channel in self._retired:
                channel.close()
            self._retired.clear()
            self._channel.close()

    def __enter__(self) -> ReloadingChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def error_from_rpc(exc: grpc.RpcError, peer: str) -> VisearchError:
    """Maps a failed call to the VisearchError of its status code, naming the peer."""
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    name = code.name if code is not None else "UNKNOWN"
    cls = ERRORS_BY_STATUS.get(name, InternalError)
    prefix = f"{peer}: " if peer else ""
    message = f"{prefix}{details or name}"
    if cls is ResourceExhaustedError:
        # Load shed with a retry pushback stays retryable when passed on (the gateway
        # answers its own caller with a pushback too); a refusal without one does not.
        pushback = retry_pushback_ms(exc)
        if pushback is not None and pushback >= 0:
            return ResourceExhaustedError(message, retryable=True, retry_after_ms=pushback)
    return cls(message)


def retry_pushback_ms(exc: grpc.RpcError) -> int | None:
    """The `grpc-retry-pushback-ms` trailer of a failed call (None when absent)."""
    trailers = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailers or ():
        if key == RETRY_PUSHBACK_KEY:
            try:
                return int(value)
            except (TypeError, ValueError):
                return None
    return None


def call(
    method: Callable[..., ResponseT], request: Any, *, timeout: float | None, peer: str
) -> ResponseT:
    """Invokes a unary stub method; raises the VisearchError matching its status."""
    try:
        return method(request, timeout=timeout)
    except grpc.RpcError as exc:
        raise error_from_rpc(exc, peer) from exc
