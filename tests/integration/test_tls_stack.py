"""TLS on every hop of the real local stack (`visearch up --tls`, the fixture's default)."""

from pathlib import Path

import grpc
import pytest

from services.common.errors import UnavailableError
from services.common.tls import TlsConfig
from tests.unit.test_tls import served_certificate
from visearch import demo, local_ca, localstack
from visearch.client import IngestItem, VisearchClient
from visearch.v1 import embedder_pb2, embedder_pb2_grpc

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tls_stack(stack) -> localstack.StackState:
    if not stack.tls_dir:
        pytest.skip("the stack runs without TLS (VISEARCH_TEST_TLS=0)")
    return stack


def address(stack: localstack.StackState, name: str) -> str:
    state = localstack.StackState.load(Path(stack.state_dir))
    return next(p.address for p in state.processes if p.name == name)


def ca_only(stack: localstack.StackState) -> TlsConfig:
    return TlsConfig(ca=str(local_ca.LocalCa(Path(stack.tls_dir)).ca_cert))


def test_plaintext_clients_are_refused(tls_stack):
    with VisearchClient(tls_stack.gateway, timeout_s=10) as plain, pytest.raises(UnavailableError):
        plain.stats("anything")
    for name in ("gateway", "embedder", "indexer-0", "verifier"):
        where = address(tls_stack, name)
        assert not localstack.health_serving(where), name
        assert localstack.health_serving(where, tls=localstack.stack_tls(tls_stack)), name


def test_internal_services_refuse_clients_without_a_certificate(tls_stack):
    embedder = address(tls_stack, "embedder")
    request = embedder_pb2.EmbedderStatsRequest()
    with (
        grpc.secure_channel(
            embedder, grpc.ssl_channel_credentials(Path(ca_only(tls_stack).ca).read_bytes())
        ) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        embedder_pb2_grpc.EmbedderStub(channel).Stats(request, timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    with localstack.grpc_channel(tls_stack, embedder) as channel:
        assert embedder_pb2_grpc.EmbedderStub(channel).Stats(request, timeout=30).model_version
    # The public gateway port takes TLS clients that hold no certificate.
    assert localstack.health_serving(tls_stack.gateway, tls=ca_only(tls_stack))


def test_a_renewed_certificate_is_served_without_restart(tls_stack, tmp_path):
    ca = local_ca.LocalCa(Path(tls_stack.tls_dir))
    embedder, gateway = address(tls_stack, "embedder"), address(tls_stack, "gateway")
    before = served_certificate(embedder, ca)
    renewed = local_ca.issue(ca, ca.service_cert, ca.service_key, "visearch service")
    assert renewed.serial_number != before.serial_number
    assert served_certificate(embedder, ca).serial_number == renewed.serial_number
    assert served_certificate(gateway, ca).serial_number == renewed.serial_number
    # Every hop still works: the gateway reaches the embedder, shards and verifier.
    image = demo.write_samples(tmp_path)[0].read_bytes()
    with localstack.connect(tls_stack, timeout_s=120) as client:
        client.ingest("tls-renewal", [IngestItem("one", image=image)])
        assert client.search("tls-renewal", image, k=1, rerank="geometric").hits[0].id == "one"
