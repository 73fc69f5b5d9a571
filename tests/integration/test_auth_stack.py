"""Authentication on the real local stack: API keys with per-collection roles at the
gateway, health and reflection open, Valkey behind an ACL user and password."""

import json
import stat
from pathlib import Path
from urllib.parse import urlparse

import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from typer.testing import CliRunner

from services.common.errors import PermissionDeniedError, UnauthenticatedError
from visearch import demo, localstack
from visearch.cli import app
from visearch.client import IngestItem

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def collections(client, tmp_path_factory):
    """Collections auth-a (one image) and auth-b, made with the bootstrap admin key."""
    sample = demo.write_samples(tmp_path_factory.mktemp("auth-samples"))[0]
    image = sample.read_bytes()
    for name in ("auth-a", "auth-b"):
        client.ingest(name, [IngestItem("one", image=image, label="x")])
    return image


def test_a_call_without_a_key_is_unauthenticated(stack, collections):
    with localstack.connect(stack, api_key="") as anonymous:
        with pytest.raises(UnauthenticatedError):
            anonymous.stats("auth-a")
        with pytest.raises(UnauthenticatedError):
            anonymous.search("auth-a", collections, k=1)


def test_roles_are_per_collection_and_a_revoked_key_is_refused(stack, client, collections):
    key, info = client.create_api_key("reader-a", ["read:auth-a"])
    with localstack.connect(stack, api_key=key) as reader:
        assert reader.search("auth-a", collections, k=1).hits[0].id == "one"
        assert reader.get("auth-a", "one").label == "x"
        with pytest.raises(PermissionDeniedError):
            reader.ingest("auth-a", [IngestItem("two", image=collections, label="y")])
        with pytest.raises(PermissionDeniedError):
            reader.delete("auth-a", ["one"])
        with pytest.raises(PermissionDeniedError):
            reader.stats("auth-b")
        with pytest.raises(PermissionDeniedError):
            reader.search("auth-b", collections, k=1)
        client.revoke_api_key(info.id)
        with pytest.raises(UnauthenticatedError):
            reader.stats("auth-a")
    assert client.get("auth-a", "one").label == "x"  # the refused delete did nothing


def test_a_writer_ingests_but_cannot_create_collections(stack, client, collections):
    key, _ = client.create_api_key("writer-a", ["write:auth-a"])
    with localstack.connect(stack, api_key=key) as writer:
        writer.ingest("auth-a", [IngestItem("two", image=collections, label="y")])
        assert writer.delete("auth-a", ["two"]) == (1, [])
        with pytest.raises(PermissionDeniedError):
            writer.create_collection("auth-a")
        with pytest.raises(PermissionDeniedError):
            writer.list_api_keys()


def test_health_and_reflection_are_open_without_a_key(stack):
    with localstack.grpc_channel(stack, stack.gateway) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        response = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        names = {s.name for a in answers for s in a.list_services_response.service}
    assert "visearch.v1.Gateway" in names


def test_keys_commands_create_list_and_revoke(stack):
    runner = CliRunner()
    where = ["--state-dir", stack.state_dir]
    created = runner.invoke(
        app, ["keys", "create", "--name", "cli", "--role", "read:auth-a", "--json", *where]
    )
    assert created.exit_code == 0, created.output
    made = json.loads(created.stdout)
    assert made["key"].startswith("vsk_") and made["grants"] == ["read:auth-a"]
    listed = runner.invoke(app, ["keys", "list", "--json", *where])
    assert listed.exit_code == 0, listed.output
    rows = {row["id"]: row for row in json.loads(listed.stdout)}
    assert rows[made["id"]]["revoked_at"] == 0 and "key" not in rows[made["id"]]
    assert made["key"] not in listed.stdout
    revoked = runner.invoke(app, ["keys", "revoke", made["id"], *where])
    assert revoked.exit_code == 0, revoked.output
    with (
        localstack.connect(stack, api_key=made["key"]) as holder,
        pytest.raises(UnauthenticatedError),
    ):
        holder.stats("auth-a")


def test_valkey_refuses_connections_without_the_password(stack):
    url = urlparse(stack.redis_url)
    assert url.username and url.password
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=url.hostname, port=url.port).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=url.hostname, port=url.port, username=url.username, password="x").ping()
    authorised = redis.Redis.from_url(stack.redis_url)
    assert authorised.ping()
    # The services' user may not administer the server.
    with pytest.raises(redis.exceptions.NoPermissionError):
        authorised.config_get("appendfsync")


def test_keys_are_stored_hashed(stack, client):
    key, info = client.create_api_key("hashed", ["read:auth-a"])
    stored = redis.Redis.from_url(stack.redis_url, decode_responses=True).hgetall(
        f"apikey:{info.id}"
    )
    secret = key.split("_", 2)[2]
    assert stored["secret_sha256"] and secret not in json.dumps(stored)
    client.revoke_api_key(info.id)


def test_the_state_folder_with_the_secrets_is_private(stack):
    state_dir = Path(stack.state_dir)
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((state_dir / localstack.SECRETS_FILE).stat().st_mode) == 0o600
