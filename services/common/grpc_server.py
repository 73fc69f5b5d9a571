"""gRPC server bootstrap shared by every service.

Health (NOT_SERVING until the service has loaded its models or index),
reflection, one interceptor that maps VisearchError to status codes and
records request metrics, /metrics over HTTP, and a graceful stop on SIGTERM.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any, Generic, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.config import ServerConfig
from services.common.errors import (
    DeadlineExceededError,
    ResourceExhaustedError,
    UnavailableError,
    VisearchError,
)
from services.common.grpc_client import (  # pushback -1: the client must not retry
    REQUEST_ID_KEY,
    RETRY_PUSHBACK_KEY,
)
from services.common.metrics import ServiceMetrics
from services.common.tls import server_credentials

log = logging.getLogger(__name__)
CoreT = TypeVar("CoreT")
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def grpc_message_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


# Load-shedding pushback: weight of the latest call in the running mean of call durations,
# and the longest pushback sent (a refused client should come back within a deadline).
CALL_SECONDS_WEIGHT = 0.1
MAX_PUSHBACK_MS = 1000
# The adaptive in-flight limit: a call that used more than LATE_SHARE of its deadline (or
# ran out of it) cuts the limit by CUT_FACTOR; one done within QUICK_SHARE raises it.
LATE_SHARE = 0.8
QUICK_SHARE = 0.5
CUT_FACTOR = 0.9
# More time left than this (a year) means the call has no deadline.
NO_DEADLINE_S = 365 * 24 * 3600.0


class AdaptiveLimit:
    """How many calls may run at once: at most `ceiling` (0 = no limit), adapted so that
    admitted calls finish inside their deadlines (additive increase, multiplicative
    decrease). A late call cuts the limit by a tenth, at most once per typical call time
    (calls admitted together end late together: one signal); a quick call raises it by
    1/limit, so about one per limit's worth of quick calls. Never below `floor`. Calls
    without a deadline leave it alone."""

    def __init__(self, ceiling: int, floor: int = 4) -> None:
        self.ceiling = ceiling
        self.floor = max(1, min(ceiling, floor))
        self.value = float(ceiling)
        self._last_cut = float("-inf")

    def allows(self, inflight: int) -> bool:
        return not self.ceiling or inflight < int(self.value)

    def observe(
        self, seconds: float, budget: float | None, timed_out: bool, now: float, typical: float
    ) -> None:
        """One admitted call ended after `seconds` of its `budget` (its deadline at start)."""
        if not self.ceiling or budget is None or budget <= 0:
            return
        if timed_out or seconds > LATE_SHARE * budget:
            if now - self._last_cut >= typical:
                self.value = max(float(self.floor), self.value * CUT_FACTOR)
                self._last_cut = now
        elif seconds < QUICK_SHARE * budget:
            self.value = min(float(self.ceiling), self.value + 1.0 / self.value)


class ErrorMetricsInterceptor(grpc.ServerInterceptor):
    """Turns VisearchError into its status code; counts and times visearch RPCs; sheds load.

    Shedding, before the handler runs (so before any image is decoded or model run): a call
    whose deadline already passed gets DEADLINE_EXCEEDED (no retry); beyond `max_inflight`
    visearch calls running at once (0 = no limit; the limit adapts below that ceiling,
    AdaptiveLimit, so that what is admitted finishes inside its deadline) the rest get
    RESOURCE_EXHAUSTED at once, with a positive retry pushback that the clients' retry
    policy honours (services.common.grpc_client): about the mean time of recent calls (when
    a slot is likely to be free again), at least `retry_pushback_ms`, at most
    MAX_PUSHBACK_MS, jittered.
    """

    def __init__(
        self, metrics: ServiceMetrics, max_inflight: int = 0, retry_pushback_ms: int = 100
    ) -> None:
        self._metrics = metrics
        self._limit = AdaptiveLimit(max_inflight)
        self._retry_pushback_ms = retry_pushback_ms
        self._inflight = 0
        self._call_seconds = 0.0  # running mean of admitted calls' durations
        self._lock = threading.Lock()
        metrics.inflight_limit.set(max_inflight)

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def limit(self) -> AdaptiveLimit:
        return self._limit

    def _admit(self) -> bool:
        with self._lock:
            if not self._limit.allows(self._inflight):
                return False
            self._inflight += 1
            self._metrics.inflight.set(self._inflight)
            return True

    def _leave(self, seconds: float, budget: float | None, code: str) -> None:
        with self._lock:
            self._inflight -= 1
            self._metrics.inflight.set(self._inflight)
            self._call_seconds += CALL_SECONDS_WEIGHT * (seconds - self._call_seconds)
            self._limit.observe(
                seconds, budget, code == "DEADLINE_EXCEEDED", time.monotonic(), self._call_seconds
            )
            self._metrics.inflight_limit.set(int(self._limit.value))

    def _pushback_ms(self, exc: VisearchError) -> str | None:
        """The retry pushback to send with `exc`: -1 (do not retry), a delay, or none."""
        if not exc.retryable:
            return "-1"
        if isinstance(exc, ResourceExhaustedError):
            typical_ms = min(int(self._call_seconds * 1000), MAX_PUSHBACK_MS)
            base = exc.retry_after_ms or max(self._retry_pushback_ms, typical_ms)
            # Jitter, so that the refused clients do not all come back at the same moment.
            return str(max(1, int(base * (0.5 + random.random()))))
        return None

    def _shed(self, method: str, context: grpc.ServicerContext) -> float | None:
        """Raises when the call must not run: its deadline passed, or the server is full.
        Returns the seconds left to its deadline (None: it has none)."""
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            self._metrics.shed.labels(method, "deadline").inc()
            raise DeadlineExceededError(
                f"{method}: the deadline passed before the call started; not run",
                retryable=False,
            )
        if not self._admit():
            self._metrics.shed.labels(method, "inflight_limit").inc()
            raise ResourceExhaustedError(
                f"{self._metrics.service} is busy ({self._inflight} requests in flight); "
                "retry after the pushback",
                retryable=True,
            )
        # gRPC reports a call without a deadline as one with a practically infinite one.
        return None if remaining is None or remaining > NO_DEADLINE_S else remaining

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(handler_call_details)
        full_method: str = handler_call_details.method
        if (
            handler is None
            or handler.unary_unary is None
            or not full_method.startswith("/visearch.")
        ):
            return handler
        method = full_method.rsplit("/", 1)[-1]
        inner = handler.unary_unary
        metrics = self._metrics

        def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            code = "OK"
            admitted = False
            budget: float | None = None
            request_id = request_id_of(context.invocation_metadata())
            try:
                budget = self._shed(method, context)
                admitted = True
                return inner(request, context)
            except VisearchError as exc:
                code = exc.status
                trailers = [(REQUEST_ID_KEY, request_id)]
                pushback = self._pushback_ms(exc)
                if pushback is not None:
                    trailers.append((RETRY_PUSHBACK_KEY, pushback))
                context.set_trailing_metadata(tuple(trailers))
                log.info(
                    "request failed",
                    extra={"fields": {"method": method, "code": code, "request_id": request_id}},
                )
                context.abort(
                    grpc.StatusCode[exc.status], f"{exc.message} (request id {request_id})"
                )
            except Exception:
                code = "INTERNAL"
                fields = {"method": method, "request_id": request_id}
                log.exception("unhandled error", extra={"fields": fields})
                context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
                context.abort(
                    grpc.StatusCode.INTERNAL,
                    f"internal error in {method} (request id {request_id}); the service log "
                    "has the details under that id",
                )
            finally:
                if admitted:
                    self._leave(time.perf_counter() - start, budget, code)
                metrics.requests.labels(method, code).inc()
                metrics.request_seconds.labels(method).observe(time.perf_counter() - start)

        return grpc.unary_unary_rpc_method_handler(
            wrapper,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def request_id_of(metadata: Any) -> str:
    """The caller's `x-request-id` when it is a short printable token, else a new one."""
    for entry in metadata or ():
        key, value = entry[0], entry[1]
        if key == REQUEST_ID_KEY and isinstance(value, str) and REQUEST_ID_PATTERN.match(value):
            return value
    return uuid.uuid4().hex[:16]


class RunningServer:
    """A started gRPC server whose health reports NOT_SERVING until `set_serving(True)`."""

    def __init__(
        self,
        config: ServerConfig,
        metrics: ServiceMetrics,
        add_servicers: Callable[[grpc.Server], Sequence[str]],
        interceptors: Sequence[grpc.ServerInterceptor] = (),
    ) -> None:
        """interceptors: run inside the error interceptor (e.g. the gateway's auth), so a
        VisearchError they raise becomes its status code and is counted."""
        self.config = config
        self.metrics = metrics
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.workers),
            interceptors=[
                ErrorMetricsInterceptor(metrics, config.max_inflight, config.retry_pushback_ms),
                *interceptors,
            ],
            options=grpc_message_options(config.max_message_bytes),
        )
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self._service_names = list(add_servicers(self._server))
        reflection.enable_server_reflection(
            [*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server
        )
        bind = f"{config.host}:{config.grpc_port}"
        if config.tls is None:
            self.port = self._server.add_insecure_port(bind)
        else:
            self.port = self._server.add_secure_port(bind, server_credentials(config.tls))
        if self.port == 0:
            raise OSError(f"cannot bind {config.host}:{config.grpc_port}")
        self._health_server: grpc.Server | None = None
        self.health_port = 0
        if config.health_port >= 0:
            self._health_server, self.health_port = self._start_health_server(config)
        self.set_serving(False)
        self._server.start()
        self.address = f"{config.host}:{self.port}"

    def _start_health_server(self, config: ServerConfig) -> tuple[grpc.Server, int]:
        """A plaintext server of grpc.health.v1 only (the same statuses), for probes."""
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        port = server.add_insecure_port(f"{config.host}:{config.health_port}")
        if port == 0:
            raise OSError(f"cannot bind {config.host}:{config.health_port}")
        server.start()
        return server, port

    def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self._service_names]:
            self._health.set(name, status)
        self.metrics.ready.set(1 if serving else 0)

    def stop(self, grace: float | None = None) -> None:
        self.set_serving(False)
        self._server.stop(self.config.grace_seconds if grace is None else grace).wait()
        if self._health_server is not None:
            self._health_server.stop(0).wait()

    def wait(self) -> None:
        self._server.wait_for_termination()


def serve_forever(
    config: ServerConfig,
    metrics: ServiceMetrics,
    add_servicers: Callable[[grpc.Server], Sequence[str]],
    load: Callable[[], None],
    interceptors: Sequence[grpc.ServerInterceptor] = (),
) -> None:
    """Runs a service process: bind, expose metrics, load, report SERVING, stop on SIGTERM."""
    server = RunningServer(config, metrics, add_servicers, interceptors)
    metrics_port = metrics.serve_http(config.host, config.metrics_port)
    stop_requested = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %s: stopping gracefully", signum)
        stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "listening",
        extra={"fields": {"grpc_port": server.port, "metrics_port": metrics_port}},
    )
    load()
    server.set_serving(True)
    log.info("serving")
    if config.port_file:
        _write_port_file(config.port_file, server.port, metrics_port)
    stop_requested.wait()
    server.stop()
    log.info("stopped")


def _write_port_file(path: str, grpc_port: int, metrics_port: int) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(
            {"grpc_port": grpc_port, "metrics_port": metrics_port, "pid": os.getpid()}, handle
        )
    os.replace(tmp, path)


class LoadingSlot(Generic[CoreT]):
    """Holds a service core that is loaded after the server starts listening.

    Until `set` is called, `get` raises UnavailableError, so early callers get
    UNAVAILABLE (which clients retry) while health reports NOT_SERVING.
    """

    def __init__(self, what: str) -> None:
        self._what = what
        self._value: CoreT | None = None

    def set(self, value: CoreT) -> None:
        self._value = value

    def get(self) -> CoreT:
        if self._value is None:
            raise UnavailableError(f"{self._what} is still loading; retry shortly")
        return self._value
