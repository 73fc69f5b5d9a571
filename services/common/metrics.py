"""Prometheus metrics: one registry per server, names visearch_<service>_<thing>_<unit>."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS_SECONDS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class ServiceMetrics:
    """The metrics of one server process; services add their own through the factories."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        self.requests = self.counter(
            "requests", "RPCs handled, by method and gRPC status code.", ("method", "code")
        )
        self.request_seconds = self.histogram(
            "request_duration_seconds", "RPC latency by method.", ("method",)
        )
        self.ready = self.gauge("ready", "1 when the server reports SERVING.")
        self.inflight = self.gauge("inflight_requests", "visearch RPCs running now.")
        self.inflight_limit = self.gauge(
            "inflight_limit", "visearch RPCs allowed at once now (adapts to deadlines)."
        )
        self.shed = self.counter(
            "shed_requests",
            "RPCs refused before their handler ran, by method and reason "
            "(inflight_limit: RESOURCE_EXHAUSTED; deadline: it had already passed).",
            ("method", "reason"),
        )

    def name(self, thing: str) -> str:
        return f"visearch_{self.service}_{thing}"

    def counter(self, thing: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(self.name(thing), doc, labels, registry=self.registry)

    def gauge(self, thing: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(self.name(thing), doc, labels, registry=self.registry)

    def histogram(
        self,
        thing: str,
        doc: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS_SECONDS,
    ) -> Histogram:
        return Histogram(self.name(thing), doc, labels, buckets=buckets, registry=self.registry)

    def serve_http(self, host: str, port: int) -> int:
        """Starts the /metrics endpoint; returns the bound port (port 0 picks a free one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)
