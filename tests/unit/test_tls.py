"""TLS and mutual TLS on a real in-process server, with certificates from a local CA."""

import socket
import ssl
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.config import ServerConfig
from services.common.errors import ConfigError
from services.common.grpc_client import ReloadingChannel, make_channel
from services.common.grpc_server import RunningServer
from services.common.metrics import ServiceMetrics
from services.common.tls import TlsConfig, channel_credentials
from services.indexer.core import Shard
from services.indexer.main import add_indexer
from services.indexer.servicer import IndexerServicer
from visearch import local_ca
from visearch.localstack import health_serving


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> local_ca.LocalCa:
    return local_ca.ensure_local_ca(tmp_path_factory.mktemp("tls"))


def tls_env(ca: local_ca.LocalCa, **extra: str) -> dict[str, str]:
    return {
        "VISEARCH_GRPC_PORT": "0",
        "VISEARCH_TLS_CERT": str(ca.service_cert),
        "VISEARCH_TLS_KEY": str(ca.service_key),
        "VISEARCH_TLS_CA": str(ca.ca_cert),
        **extra,
    }


def start(env: dict[str, str], service: str = "indexer") -> RunningServer:
    config = ServerConfig.from_env(env, service, 0)
    metrics = ServiceMetrics(service)
    running = RunningServer(
        config, metrics, lambda s: add_indexer(s, IndexerServicer(Shard(0, 100), metrics))
    )
    running.set_serving(True)
    return running


def client_tls(ca: local_ca.LocalCa, with_cert: bool = True) -> TlsConfig:
    if with_cert:
        return TlsConfig(str(ca.client_cert), str(ca.client_key), str(ca.ca_cert))
    return TlsConfig(ca=str(ca.ca_cert))


def served_certificate(address: str, ca: local_ca.LocalCa) -> x509.Certificate:
    """The certificate a server presents to a new TLS connection (with a client cert)."""
    context = ssl.create_default_context(cafile=str(ca.ca_cert))
    context.load_cert_chain(str(ca.client_cert), str(ca.client_key))
    context.set_alpn_protocols(["h2"])
    host, port = address.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_internal_service_requires_client_certificates_by_default(ca):
    server = start(tls_env(ca))
    try:
        assert server.config.tls is not None and server.config.tls.require_client_cert
        assert health_serving(server.address, tls=client_tls(ca))
        # TLS without a client certificate: the handshake is refused.
        assert not health_serving(server.address, tls=client_tls(ca, with_cert=False))
        # Plaintext: refused.
        assert not health_serving(server.address)
    finally:
        server.stop(0)


def test_gateway_port_accepts_tls_clients_without_certificates(ca):
    server = start(tls_env(ca), service="gateway")
    try:
        assert server.config.tls is not None and not server.config.tls.require_client_cert
        assert health_serving(server.address, tls=client_tls(ca, with_cert=False))
        assert not health_serving(server.address)
    finally:
        server.stop(0)


def test_client_refuses_a_server_of_another_ca(ca, tmp_path):
    other = local_ca.ensure_local_ca(tmp_path / "other")
    server = start(tls_env(ca, VISEARCH_TLS_CLIENT_AUTH="false"))
    try:
        assert not health_serving(server.address, tls=TlsConfig(ca=str(other.ca_cert)))
    finally:
        server.stop(0)


def test_replaced_certificate_is_served_without_restart(ca, tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    cert, key = folder / "service.pem", folder / "service.key"
    first = local_ca.issue(ca, cert, key, "first")
    server = start(tls_env(ca, VISEARCH_TLS_CERT=str(cert), VISEARCH_TLS_KEY=str(key)))
    try:
        assert served_certificate(server.address, ca).serial_number == first.serial_number
        second = local_ca.issue(ca, cert, key, "second")
        assert second.serial_number != first.serial_number
        assert served_certificate(server.address, ca).serial_number == second.serial_number
        assert health_serving(server.address, tls=client_tls(ca))
    finally:
        server.stop(0)


def test_mismatched_pair_keeps_the_old_certificate(ca, tmp_path):
    folder = tmp_path / "half"
    folder.mkdir()
    cert, key = folder / "service.pem", folder / "service.key"
    first = local_ca.issue(ca, cert, key, "first")
    server = start(tls_env(ca, VISEARCH_TLS_CERT=str(cert), VISEARCH_TLS_KEY=str(key)))
    try:
        # A rotation half done: the new certificate is there, its key not yet.
        local_ca.issue(ca, folder / "next.pem", folder / "next.key", "next")
        cert.write_bytes((folder / "next.pem").read_bytes())
        assert served_certificate(server.address, ca).serial_number == first.serial_number
        key.write_bytes((folder / "next.key").read_bytes())
        assert served_certificate(server.address, ca).serial_number != first.serial_number
    finally:
        server.stop(0)


def test_plaintext_health_port_serves_health_only(ca):
    server = start(tls_env(ca, VISEARCH_HEALTH_PORT="0"))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.health_port}") as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=10
            )
            assert response.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as raised:
                channel.unary_unary("/visearch.v1.Indexer/Stats")(b"", timeout=10)
            assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(0)


def test_config_fails_fast_on_missing_or_partial_files(ca, tmp_path: Path):
    with pytest.raises(ConfigError, match="VISEARCH_TLS_CERT"):
        ServerConfig.from_env(tls_env(ca, VISEARCH_TLS_CERT=str(tmp_path / "nope.pem")), "x", 0)
    with pytest.raises(ConfigError, match="together"):
        ServerConfig.from_env(tls_env(ca, VISEARCH_TLS_KEY=""), "x", 0)
    with pytest.raises(ConfigError, match="VISEARCH_TLS_CA"):
        ServerConfig.from_env(tls_env(ca, VISEARCH_TLS_CA=""), "indexer", 0)
    assert ServerConfig.from_env({}, "indexer", 0).tls is None


def test_client_certificate_replaced_on_disk_is_presented_on_new_connections(ca, tmp_path):
    """The gateway's channels follow their client certificate files: after a rotation to a
    new CA, a server that trusts only the new CA accepts the same (reloading) channel."""
    new_ca = local_ca.ensure_local_ca(tmp_path / "new-ca")
    trusted = tmp_path / "trusted-clients.pem"
    trusted.write_bytes(ca.ca_cert.read_bytes())
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    local_ca.issue(ca, cert, key, "client")
    server = start(tls_env(ca, VISEARCH_TLS_CA=str(trusted)))
    port = server.port
    tls = TlsConfig(str(cert), str(key), str(ca.ca_cert))
    channel = ReloadingChannel(
        lambda: grpc.secure_channel(server.address, channel_credentials(tls)),
        tls,
        check_interval_s=0.0,
    )
    request = health_pb2.HealthCheckRequest(service="")
    try:
        assert health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status == 1
        server.stop(0)
        # Rotation: clients now get certificates of the new CA, the only one servers trust.
        trusted.write_bytes(new_ca.ca_cert.read_bytes())
        local_ca.issue(new_ca, cert, key, "client")
        server = start(tls_env(ca, VISEARCH_TLS_CA=str(trusted), VISEARCH_GRPC_PORT=str(port)))
        assert health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status == 1
        assert channel.reloads == 1
    finally:
        channel.close()
        server.stop(0)


def test_make_channel_reloads_only_with_a_client_certificate(ca):
    assert isinstance(make_channel("127.0.0.1:1", 1024, tls=client_tls(ca)), ReloadingChannel)
    plain_tls = make_channel("127.0.0.1:1", 1024, tls=client_tls(ca, with_cert=False))
    assert not isinstance(plain_tls, ReloadingChannel)


def test_gateway_calls_inside_with_its_own_files_or_the_internal_ones(ca, tmp_path):
    from services.gateway.main import GatewayConfig

    env = tls_env(
        ca,
        VISEARCH_S3_ENDPOINT="s3:9000",
        VISEARCH_S3_ACCESS_KEY="a",
        VISEARCH_S3_SECRET_KEY="b",
        VISEARCH_REDIS_URL="redis://r:6379/0",
        VISEARCH_EMBEDDER_ADDR="embedder:50052",
        VISEARCH_VERIFIER_ADDR="verifier:50071",
        VISEARCH_SHARD_ADDRS="indexer-0.indexer:50061",
    )
    config = GatewayConfig.from_env(env)
    assert config.server.tls is not None and not config.server.tls.require_client_cert
    assert config.internal_tls == TlsConfig(
        str(ca.service_cert), str(ca.service_key), str(ca.ca_cert)
    )
    cert, key = tmp_path / "inside.pem", tmp_path / "inside.key"
    local_ca.issue(ca, cert, key, "inside")
    env |= {"VISEARCH_INTERNAL_TLS_CERT": str(cert), "VISEARCH_INTERNAL_TLS_KEY": str(key)}
    env["VISEARCH_INTERNAL_TLS_CA"] = str(ca.ca_cert)
    assert GatewayConfig.from_env(env).internal_tls == TlsConfig(
        str(cert), str(key), str(ca.ca_cert)
    )
    assert (
        GatewayConfig.from_env(
            {**env, "VISEARCH_TLS_CERT": "", "VISEARCH_TLS_KEY": "", "VISEARCH_TLS_CA": ""}
        ).server.tls
        is None
    )
