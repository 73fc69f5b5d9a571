"""gRPC server bootstrap shared by every service.

Health (NOT_SERVING until the service has loaded its models or index),
reflection, one interceptor that maps VisearchError to status codes and
records request metrics, /metrics over HTTP, and a graceful stop on SIGTERM.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any, Generic, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.config import ServerConfig
from services.common.errors import UnavailableError, VisearchError
from services.common.metrics import ServiceMetrics

log = logging.getLogger(__name__)
CoreT = TypeVar("CoreT")
# gRPC retry pushback: a negative value tells the client's retry policy not to retry.
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"


def grpc_message_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


class ErrorMetricsInterceptor(grpc.ServerInterceptor):
    """Turns VisearchError into its status code; counts and times visearch RPCs."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics

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
            try:
                return inner(request, context)
            except VisearchError as exc:
                code = exc.status
                if not exc.retryable:
                    context.set_trailing_metadata(((RETRY_PUSHBACK_KEY, "-1"),))
                context.abort(grpc.StatusCode[exc.status], exc.message)
            except Exception as exc:
                code = "INTERNAL"
                log.exception("unhandled error in %s", method)
                context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}: {exc}")
            finally:
                metrics.requests.labels(method, code).inc()
                metrics.request_seconds.labels(method).observe(time.perf_counter() - start)

        return grpc.unary_unary_rpc_method_handler(
            wrapper,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class RunningServer:
    """A started gRPC server whose health reports NOT_SERVING until `set_serving(True)`."""

    def __init__(
        self,
        config: ServerConfig,
        metrics: ServiceMetrics,
        add_servicers: Callable[[grpc.Server], Sequence[str]],
    ) -> None:
        self.config = config
        self.metrics = metrics
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.workers),
            interceptors=[ErrorMetricsInterceptor(metrics)],
            options=grpc_message_options(config.max_message_bytes),
        )
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self._service_names = list(add_servicers(self._server))
        reflection.enable_server_reflection(
            [*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server
        )
        self.port = self._server.add_insecure_port(f"{config.host}:{config.grpc_port}")
        if self.port == 0:
            raise OSError(f"cannot bind {config.host}:{config.grpc_port}")
        self.set_serving(False)
        self._server.start()
        self.address = f"{config.host}:{self.port}"

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

    def wait(self) -> None:
        self._server.wait_for_termination()


def serve_forever(
    config: ServerConfig,
    metrics: ServiceMetrics,
    add_servicers: Callable[[grpc.Server], Sequence[str]],
    load: Callable[[], None],
) -> None:
    """Runs a service process: bind, expose metrics, load, report SERVING, stop on SIGTERM."""
    server = RunningServer(config, metrics, add_servicers)
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
