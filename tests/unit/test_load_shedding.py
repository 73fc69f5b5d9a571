"""Load shedding: work past its deadline is not run, an in-flight limit answers
RESOURCE_EXHAUSTED with a retry pushback, and the gateway names its own deadline expiry."""

import threading
import time
from types import SimpleNamespace

import grpc
import numpy as np
import pytest

from services.common.config import ServerConfig
from services.common.errors import (
    ConfigError,
    DeadlineExceededError,
    ResourceExhaustedError,
    UnavailableError,
)
from services.common.grpc_client import call, make_channel
from services.common.grpc_server import (
    RETRY_PUSHBACK_KEY,
    AdaptiveLimit,
    ErrorMetricsInterceptor,
    RunningServer,
)
from services.common.imaging import ImageLimits
from services.common.metrics import ServiceMetrics
from services.embedder import core as embedder_core
from services.embedder.batching import MicroBatcher
from services.embedder.core import BatchingSettings, EmbedderCore
from services.gateway.core import SearchQuery
from tests.unit.test_gateway_core import gateway, ingest_three, jpeg  # noqa: F401  (fixture)
from visearch.v1 import indexer_pb2, indexer_pb2_grpc

SEARCH = indexer_pb2.IndexSearchRequest(collection="c", k=1)


def shed_count(metrics: ServiceMetrics, reason: str) -> float:
    return sum(
        s.value
        for m in metrics.registry.collect()
        if m.name == "visearch_indexer_shed_requests"
        for s in m.samples
        if s.name.endswith("_total") and s.labels["reason"] == reason
    )


class BlockingIndexer(indexer_pb2_grpc.IndexerServicer):
    """Search blocks until released; counts the calls that ran."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def Search(self, request, context):
        self.calls += 1
        self.entered.set()
        self.release.wait(10)
        return indexer_pb2.IndexSearchResponse()


def start(servicer, env: dict[str, str]) -> tuple[RunningServer, ServiceMetrics]:
    config = ServerConfig.from_env({"VISEARCH_GRPC_PORT": "0", **env}, "indexer", 0)
    metrics = ServiceMetrics("indexer")

    def add(server):
        indexer_pb2_grpc.add_IndexerServicer_to_server(servicer, server)
        return ["visearch.v1.Indexer"]

    return RunningServer(config, metrics, add), metrics


def test_beyond_the_inflight_limit_calls_get_resource_exhausted_with_pushback():
    blocking = BlockingIndexer()
    running, metrics = start(blocking, {"VISEARCH_MAX_INFLIGHT": "1"})
    channel = make_channel(running.address, 8 * 1024 * 1024, retries=False)
    stub = indexer_pb2_grpc.IndexerStub(channel)
    first = threading.Thread(target=lambda: stub.Search(SEARCH, timeout=10))
    try:
        first.start()
        assert blocking.entered.wait(5)
        with pytest.raises(grpc.RpcError) as raised:
            stub.Search(SEARCH, timeout=10)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        pushback = dict(raised.value.trailing_metadata())[RETRY_PUSHBACK_KEY]
        assert int(pushback) > 0
        with pytest.raises(ResourceExhaustedError, match="busy") as mapped:
            call(stub.Search, SEARCH, timeout=10, peer="shard 0")
        assert mapped.value.retryable and mapped.value.retry_after_ms > 0
        assert blocking.calls == 1  # the refused calls never reached the handler
        assert shed_count(metrics, "inflight_limit") == 2
        blocking.release.set()
        first.join(5)
        stub.Search(SEARCH, timeout=10)  # room again
        assert blocking.calls == 2
    finally:
        blocking.release.set()
        channel.close()
        running.stop(0)


class RefusingIndexer(indexer_pb2_grpc.IndexerServicer):
    def __init__(self, retryable: bool) -> None:
        self.calls = 0
        self.retryable = retryable

    def Search(self, request, context):
        self.calls += 1
        raise ResourceExhaustedError("full", retryable=self.retryable)


@pytest.mark.parametrize(
    ("retryable", "retry_shed", "expected_calls"),
    [(True, True, 4), (False, True, 1), (True, False, 1)],
)
def test_edge_clients_retry_resource_exhausted_only_with_a_positive_pushback(
    retryable, retry_shed, expected_calls
):
    """retry_shed: the edge client's channel; inside the cluster a shed call is not retried."""
    refusing = RefusingIndexer(retryable)
    running, _metrics = start(refusing, {"VISEARCH_RETRY_PUSHBACK_MS": "10"})
    channel = make_channel(running.address, 8 * 1024 * 1024, retry_shed=retry_shed)
    try:
        with pytest.raises(ResourceExhaustedError, match="full"):
            call(indexer_pb2_grpc.IndexerStub(channel).Search, SEARCH, timeout=10, peer="")
        assert refusing.calls == expected_calls
    finally:
        channel.close()
        running.stop(0)


class FakeContext:
    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining
        self.trailers: tuple = ()

    def time_remaining(self):
        return self.remaining

    def invocation_metadata(self):
        return ()

    def set_trailing_metadata(self, trailers):
        self.trailers = trailers

    def abort(self, code, details):
        raise RuntimeError(f"{code.name}: {details}")


def intercepted(handler_fn):
    interceptor = ErrorMetricsInterceptor(ServiceMetrics("indexer"), max_inflight=8)
    handler = grpc.unary_unary_rpc_method_handler(handler_fn)
    details = SimpleNamespace(method="/visearch.v1.Indexer/Search")
    return interceptor.intercept_service(lambda _d: handler, details).unary_unary, interceptor


def test_a_call_whose_deadline_passed_is_not_run():
    ran = []
    wrapped, interceptor = intercepted(lambda request, context: ran.append(request))
    context = FakeContext(remaining=-0.01)
    with pytest.raises(RuntimeError, match="DEADLINE_EXCEEDED: Search: the deadline passed"):
        wrapped("request", context)
    assert ran == []
    assert (RETRY_PUSHBACK_KEY, "-1") in context.trailers
    assert interceptor.inflight == 0
    wrapped("request", FakeContext(remaining=5.0))
    wrapped("request", FakeContext(remaining=None))  # no deadline
    assert ran == ["request", "request"] and interceptor.inflight == 0


def test_the_inflight_limit_adapts_to_deadlines():
    limit = AdaptiveLimit(10, floor=4)
    assert limit.allows(9) and not limit.allows(10)
    limit.observe(0.9, budget=1.0, timed_out=False, now=100.0, typical=0.5)  # late: cut
    assert limit.value == 9.0 and not limit.allows(9)
    limit.observe(0.1, budget=1.0, timed_out=True, now=100.1, typical=0.5)  # same wave: kept
    assert limit.value == 9.0
    for step in range(30):  # a run of late calls, each after a typical call's time
        limit.observe(1.0, budget=1.0, timed_out=True, now=101.0 + step, typical=0.5)
    assert limit.value == 4.0  # the floor
    limit.observe(5.0, budget=None, timed_out=False, now=200.0, typical=0.5)  # no deadline
    assert limit.value == 4.0
    for _ in range(200):  # quick calls raise it back to the ceiling
        limit.observe(0.1, budget=1.0, timed_out=False, now=300.0, typical=0.5)
    assert limit.value == 10.0
    assert AdaptiveLimit(0).allows(10_000)  # 0: no limit


def test_a_call_that_uses_up_its_deadline_lowers_the_limit():
    wrapped, interceptor = intercepted(lambda request, context: time.sleep(0.01))
    wrapped("request", FakeContext(remaining=0.001))  # the handler outlives the budget
    assert interceptor.limit.value < 8


def test_workers_must_exceed_the_inflight_limit():
    config = ServerConfig.from_env({"VISEARCH_MAX_INFLIGHT": "40"}, "gateway", 0)
    assert config.max_inflight == 40 and config.workers > 40
    assert ServerConfig.from_env({}, "embedder", 0).max_inflight > 0
    with pytest.raises(ConfigError, match="VISEARCH_WORKERS"):
        ServerConfig.from_env({"VISEARCH_MAX_INFLIGHT": "8", "VISEARCH_WORKERS": "8"}, "x", 0)


def test_the_batcher_drops_expired_requests_before_the_model():
    seen: list[np.ndarray] = []
    expired: list[int] = []

    def run(batch: np.ndarray) -> np.ndarray:
        seen.append(batch.copy())
        return batch * 2

    batcher = MicroBatcher(run, max_batch=8, max_wait_s=0.05, on_expired=expired.append)
    try:
        late = batcher.submit(np.full((2, 3), 7.0, np.float32), deadline=time.monotonic() - 1)
        live = batcher.submit(np.full((1, 3), 1.0, np.float32), deadline=time.monotonic() + 30)
        assert np.array_equal(live.result(5), np.full((1, 3), 2.0, np.float32))
        with pytest.raises(DeadlineExceededError, match="not run"):
            late.result(5)
        assert expired == [2]
        assert not any((batch == 7.0).any() for batch in seen)
    finally:
        batcher.close()


def test_the_batcher_drops_a_request_whose_run_would_end_past_its_deadline():
    runs = []

    def slow(batch: np.ndarray) -> np.ndarray:
        runs.append(len(batch))
        time.sleep(0.2)  # every run of one row takes at least 200 ms
        return batch

    batcher = MicroBatcher(slow, max_batch=4, max_wait_s=0.0)
    try:
        batcher.run(np.zeros((1, 2), np.float32), timeout=30)
        assert batcher.expected_seconds(1) >= 0.2
        doomed = batcher.submit(np.zeros((1, 2), np.float32), deadline=time.monotonic() + 0.05)
        with pytest.raises(DeadlineExceededError, match="not run"):
            doomed.result(5)
        assert runs == [1]
    finally:
        batcher.close()


class RecordingModel:
    """A stand-in global model that records what reaches it."""

    manifest = SimpleNamespace(version="fake-v1", output_dims=3)

    def __init__(self) -> None:
        self.preprocessed = 0
        self.runs = 0

    def preprocess(self, image_rgb: np.ndarray) -> np.ndarray:
        self.preprocessed += 1
        return np.zeros(3, np.float32)

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.runs += 1
        return np.ones((len(batch), 3), np.float32)


def test_an_expired_embed_request_is_neither_decoded_nor_run(monkeypatch):
    decoded = []
    monkeypatch.setattr(
        embedder_core, "decode_rgb", lambda data, limits: decoded.append(data) or np.zeros(1)
    )
    model = RecordingModel()
    expired: list[int] = []
    core = EmbedderCore(
        model,  # type: ignore[arg-type]
        ImageLimits(max_bytes=1_000_000),
        BatchingSettings(max_batch=4, max_wait_ms=1.0),
        max_local_features=100,
        on_expired=expired.append,
    )
    try:
        with pytest.raises(DeadlineExceededError, match="before decoding"):
            core.embed_global([b"image-a", b"image-b"], timeout=0.0)
        assert decoded == [] and model.preprocessed == 0 and model.runs == 0
        assert expired == [2] and core.images_embedded == 0
        assert core.embed_global([b"image-a"], timeout=30.0).shape == (1, 3)
        assert decoded == [b"image-a"] and model.runs == 1
    finally:
        core.close()


def test_the_gateway_reports_its_own_deadline_expiry_as_deadline_exceeded(gateway):  # noqa: F811
    ingest_three(gateway)
    for shard in gateway.shards:
        shard.delay_s = 1.0
    with pytest.raises(DeadlineExceededError, match="deadline ran out before any shard"):
        gateway.search(SearchQuery("c", image=jpeg(0), k=3, rerank="none"), 0.3)


def test_the_gateway_still_reports_unavailable_when_every_shard_is_down(gateway):  # noqa: F811
    ingest_three(gateway)
    for shard in gateway.shards:
        shard.broken = True
    with pytest.raises(UnavailableError, match="no shard answered"):
        gateway.search(SearchQuery("c", image=jpeg(0), k=3, rerank="none"), 5.0)
