"""The shared bootstrap on a real in-process server: health, reflection, errors, metrics."""

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.config import ServerConfig
from services.common.errors import InvalidArgumentError, UnavailableError
from services.common.grpc_client import call, make_channel
from services.common.grpc_server import LoadingSlot, RunningServer
from services.common.metrics import ServiceMetrics
from services.common.proto_convert import vectors_to_proto
from services.indexer.core import Shard
from services.indexer.main import add_indexer
from services.indexer.servicer import IndexerServicer
from visearch.v1 import indexer_pb2, indexer_pb2_grpc


@pytest.fixture
def server():
    config = ServerConfig.from_env({"VISEARCH_GRPC_PORT": "0"}, "indexer", 0)
    metrics = ServiceMetrics("indexer")
    running = RunningServer(
        config, metrics, lambda s: add_indexer(s, IndexerServicer(Shard(0, 100), metrics))
    )
    yield running
    running.stop(0)


def test_health_is_gated_on_readiness(server):
    with grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="visearch.v1.Indexer")
        assert stub.Check(request).status == health_pb2.HealthCheckResponse.NOT_SERVING
        server.set_serving(True)
        assert stub.Check(request).status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(server):
    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert "visearch.v1.Indexer" in names
    assert "grpc.health.v1.Health" in names


def test_errors_map_to_status_codes_and_are_counted(server):
    channel = make_channel(server.address, 8 * 1024 * 1024)
    stub = indexer_pb2_grpc.IndexerStub(channel)
    bad = indexer_pb2.UpsertRequest(
        collection="c", ids=["a", "b"], vectors=vectors_to_proto(np.eye(3, dtype=np.float32)[:1])
    )
    with pytest.raises(grpc.RpcError) as raised:
        stub.Upsert(bad)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "2 ids but 1 vectors" in raised.value.details()
    with pytest.raises(InvalidArgumentError, match="shard 0: 2 ids"):
        call(stub.Upsert, bad, timeout=5, peer="shard 0")
    samples = {
        (s.labels["method"], s.labels["code"]): s.value
        for m in server.metrics.registry.collect()
        if m.name == "visearch_indexer_requests"
        for s in m.samples
        if s.name.endswith("_total")
    }
    assert samples[("Upsert", "INVALID_ARGUMENT")] == 2
    channel.close()


def test_loading_slot_answers_unavailable_until_set():
    slot: LoadingSlot[int] = LoadingSlot("the model")
    with pytest.raises(UnavailableError, match="still loading"):
        slot.get()
    slot.set(3)
    assert slot.get() == 3


class FlakyIndexer(indexer_pb2_grpc.IndexerServicer):
    def __init__(self, retryable: bool):
        self.calls = 0
        self.retryable = retryable

    def Search(self, request, context):
        self.calls += 1
        raise UnavailableError("shard down", retryable=self.retryable)


@pytest.mark.parametrize(("retryable", "expected_calls"), [(True, 4), (False, 1)])
def test_client_retries_unavailable_unless_the_server_pushes_back(retryable, expected_calls):
    config = ServerConfig.from_env({"VISEARCH_GRPC_PORT": "0"}, "indexer", 0)
    metrics = ServiceMetrics("indexer")
    flaky = FlakyIndexer(retryable)

    def add(server):
        indexer_pb2_grpc.add_IndexerServicer_to_server(flaky, server)
        return ["visearch.v1.Indexer"]

    running = RunningServer(config, metrics, add)
    channel = make_channel(running.address, 8 * 1024 * 1024)
    try:
        with pytest.raises(UnavailableError, match="shard down"):
            call(
                indexer_pb2_grpc.IndexerStub(channel).Search,
                indexer_pb2.IndexSearchRequest(collection="c", k=1),
                timeout=10,
                peer="",
            )
        assert flaky.calls == expected_calls
    finally:
        channel.close()
        running.stop(0)
