"""API keys (hashed, per-collection roles) and the gateway's auth interceptor, on a real
in-process gateway server whose core never loads: a call that passes the checks gets
UNAVAILABLE ("still loading"), one that fails them UNAUTHENTICATED or PERMISSION_DENIED."""

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.api_keys import (
    ApiKeys,
    Grant,
    InMemoryApiKeyStore,
    generate_key,
    grants_allow,
    hash_secret,
    parse_key,
)
from services.common.config import ServerConfig
from services.common.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
    UnavailableError,
)
from services.common.grpc_server import LoadingSlot, RunningServer
from services.common.metrics import ServiceMetrics
from services.gateway.auth import METHOD_POLICY, AuthInterceptor
from services.gateway.main import add_gateway
from visearch.client import IngestItem, VisearchClient
from visearch.v1 import gateway_pb2


def test_a_key_is_stored_as_the_hash_of_its_secret_only():
    keys = ApiKeys(InMemoryApiKeyStore())
    key, record = keys.create("ci", ["read:shoes"])
    key_id, secret = parse_key(key)
    assert record.id == key_id
    assert record.secret_sha256 == hash_secret(secret)
    assert secret not in repr(keys.store.list())
    assert keys.authenticate(key) == record


@pytest.mark.parametrize(
    "mangle",
    [
        lambda k: k[:-1] + ("A" if k[-1] != "A" else "B"),  # wrong secret
        lambda k: "vsk_0123456789abcdef_" + k.split("_", 2)[2],  # unknown id
        lambda k: k.replace("vsk_", "key_"),  # malformed
        lambda k: "",
    ],
)
def test_wrong_unknown_or_malformed_keys_are_unauthenticated(mangle):
    keys = ApiKeys(InMemoryApiKeyStore())
    key, _ = keys.create("ci", ["read:*"])
    with pytest.raises(UnauthenticatedError):
        keys.authenticate(mangle(key))


def test_a_revoked_key_is_refused_and_stays_listed():
    keys = ApiKeys(InMemoryApiKeyStore())
    key, record = keys.create("ci", ["write:shoes"])
    revoked = keys.revoke(record.id)
    assert revoked.revoked_at > 0
    with pytest.raises(UnauthenticatedError):
        keys.authenticate(key)
    assert [r.id for r in keys.store.list()] == [record.id]
    with pytest.raises(NotFoundError):
        keys.revoke("0123456789abcdef")


def test_a_bootstrap_key_is_registered_once_and_a_revoked_one_stays_revoked():
    keys = ApiKeys(InMemoryApiKeyStore())
    key = generate_key()
    assert keys.ensure(key, "bootstrap", ["admin:*"])
    assert keys.authenticate(key).allows("anything", "admin")
    keys.revoke(parse_key(key)[0])
    assert not keys.ensure(key, "bootstrap", ["admin:*"])
    with pytest.raises(UnauthenticatedError):
        keys.authenticate(key)


@pytest.mark.parametrize("text", ["owner:shoes", "read", "read:", "read:a b", "READ:x"])
def test_bad_grants_are_invalid(text):
    with pytest.raises(InvalidArgumentError):
        Grant.parse(text)


def test_roles_are_ordered_and_scoped_to_their_collection():
    grants = (Grant("write", "shoes"), Grant("read", "*"))
    assert grants_allow(grants, "shoes", "write")
    assert grants_allow(grants, "bags", "read")
    assert not grants_allow(grants, "bags", "write")
    assert not grants_allow(grants, "shoes", "admin")
    assert not grants_allow(grants, "*", "write")  # every collection needs a * grant
    assert grants_allow((Grant("admin", "*"),), "*", "admin")


@pytest.fixture
def gateway():
    """A gateway server with auth, an in-memory key store and a core that never loads."""
    keys = ApiKeys(InMemoryApiKeyStore())
    config = ServerConfig.from_env({"VISEARCH_GRPC_PORT": "0"}, "gateway", 0)
    slot = LoadingSlot("the gateway")
    running = RunningServer(
        config,
        ServiceMetrics("gateway"),
        lambda s: add_gateway(s, slot, None, None, keys),
        [AuthInterceptor(keys)],
    )
    running.set_serving(True)
    yield running, keys
    running.stop(0)


def _client(address, key):
    return VisearchClient(address, timeout_s=10, api_key=key)


def _outcome(action):
    """The error class a call ended with (UNAVAILABLE = it passed the checks)."""
    try:
        action()
    except (UnauthenticatedError, PermissionDeniedError, UnavailableError) as exc:
        return type(exc)
    except FailedPreconditionError as exc:
        return type(exc)
    return None


CALLS = {
    "Search": lambda c, col: c.search(col, b"x"),
    "Get": lambda c, col: c.get(col, "a"),
    "GetImage": lambda c, col: c.get_image(col, "a"),
    "Stats": lambda c, col: c.stats(col),
    "GetReshardStatus": lambda c, col: c.reshard_status(col),
    "Ingest": lambda c, col: c.ingest(col, [IngestItem("a", image=b"x")]),
    "Delete": lambda c, col: c.delete(col, ["a"]),
    "CreateCollection": lambda c, col: c.create_collection(col),
    "Reshard": lambda c, col: c.reshard(col, 2),
    # Streams: past the checks, this gateway runs no jobs (FAILED_PRECONDITION).
    "Reembed": lambda c, col: list(c.reembed(col, "v2", timeout_s=10)),
    "AugmentDatabase": lambda c, col: list(c.augment_database(col, 5, timeout_s=10)),
}
ROLE_RANK = {"read": 0, "write": 1, "admin": 2}


def test_every_gateway_method_has_a_policy_and_a_test_call():
    methods = set(gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].methods_by_name)
    assert methods == set(METHOD_POLICY)
    assert set(CALLS) | {"CreateApiKey", "ListApiKeys", "RevokeApiKey"} == methods


@pytest.mark.parametrize("role", ["read", "write", "admin"])
def test_each_role_reaches_exactly_its_methods_on_its_collection(gateway, role):
    server, keys = gateway
    key, _ = keys.create(f"{role}-shoes", [f"{role}:shoes"])
    with _client(server.address, key) as client:
        for method, action in CALLS.items():
            passed = (
                FailedPreconditionError
                if method in ("Reembed", "AugmentDatabase")
                else UnavailableError
            )
            allowed = ROLE_RANK[role] >= ROLE_RANK[METHOD_POLICY[method].role]
            expected = passed if allowed else PermissionDeniedError
            assert _outcome(lambda a=action: a(client, "shoes")) is expected, (method, role)
            # Another collection: refused whatever the role.
            assert _outcome(lambda a=action: a(client, "bags")) is PermissionDeniedError, method


def test_no_key_a_wrong_key_and_a_revoked_key_are_unauthenticated(gateway):
    server, keys = gateway
    key, record = keys.create("reader", ["read:*"])
    with _client(server.address, "") as anonymous:
        assert _outcome(lambda: anonymous.stats("shoes")) is UnauthenticatedError
        assert _outcome(lambda: list(anonymous.reembed("shoes", "v2"))) is UnauthenticatedError
    with _client(server.address, key[:-2] + "zz") as wrong:
        assert _outcome(lambda: wrong.stats("shoes")) is UnauthenticatedError
    with _client(server.address, key) as reader:
        assert _outcome(lambda: reader.stats("shoes")) is UnavailableError
        keys.revoke(record.id)
        assert _outcome(lambda: reader.stats("shoes")) is UnauthenticatedError


def test_the_client_reads_its_key_from_the_environment(gateway, monkeypatch):
    server, keys = gateway
    key, _ = keys.create("env", ["read:*"])
    monkeypatch.setenv("VISEARCH_API_KEY", key)
    with VisearchClient(server.address, timeout_s=10) as client:
        assert _outcome(lambda: client.stats("shoes")) is UnavailableError


def test_key_management_needs_admin_of_every_collection(gateway):
    server, keys = gateway
    root, _ = keys.create("root", ["admin:*"])
    shoes_admin, _ = keys.create("shoes-admin", ["admin:shoes"])
    with _client(server.address, shoes_admin) as client:
        assert _outcome(lambda: client.list_api_keys()) is PermissionDeniedError
        assert _outcome(lambda: client.create_api_key("x", ["admin:*"])) is PermissionDeniedError
    with _client(server.address, root) as admin:
        secret, info = admin.create_api_key("ci", ["read:shoes", "write:bags"])
        assert info.grants == ["read:shoes", "write:bags"] and secret.startswith("vsk_")
        assert secret not in str(admin.list_api_keys())
        with _client(server.address, secret) as ci:
            assert _outcome(lambda: ci.delete("bags", ["a"])) is UnavailableError
            assert _outcome(lambda: ci.delete("shoes", ["a"])) is PermissionDeniedError
            assert admin.revoke_api_key(info.id).revoked_at > 0
            assert _outcome(lambda: ci.delete("bags", ["a"])) is UnauthenticatedError
        with pytest.raises(InvalidArgumentError):
            admin.create_api_key("bad", ["owner:*"])


def test_health_and_reflection_are_open(gateway):
    server, _ = gateway
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service="")).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert "visearch.v1.Gateway" in names
