"""The WAITAOF acknowledgement barrier's settings and checks (a scripted Redis client)."""

import pytest

from services.common.ack_durability import FENCE_KEY, AckBarrier, AckDurability
from services.common.config import redis_url_from_env
from services.common.errors import ConfigError, UnavailableError
from services.gateway.main import GatewayConfig
from visearch import localstack


class ScriptedPipeline:
    def __init__(self, acks, log):
        self._acks, self._log = acks, log

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def incr(self, key):
        self._log.append(("INCR", key))

    def execute_command(self, *args):
        self._log.append(args)

    def execute(self):
        return [1, self._acks]


class ScriptedRedis:
    def __init__(self, acks):
        self.acks, self.log = acks, []

    def pipeline(self, transaction=True):
        assert transaction is False  # the fence and WAITAOF on one connection, in order
        return ScriptedPipeline(self.acks, self.log)


def test_settings_come_from_the_environment_and_default_to_off():
    assert not AckDurability.from_env({}).enabled
    d = AckDurability.from_env(
        {"VISEARCH_WAITAOF_LOCAL": "1", "VISEARCH_WAITAOF_TIMEOUT_MS": "250"}
    )
    assert (d.local, d.replicas, d.timeout_ms, d.enabled) == (1, 0, 250, True)
    with pytest.raises(ConfigError):
        AckDurability.from_env({"VISEARCH_WAITAOF_LOCAL": "2"})


def test_the_barrier_writes_a_fence_then_waits_on_the_same_connection():
    client = ScriptedRedis([1, 0])
    AckBarrier(client, AckDurability(local=1, timeout_ms=300)).wait()
    assert client.log == [("INCR", FENCE_KEY), ("WAITAOF", 1, 0, 300)]


def test_too_few_fsyncs_is_unavailable():
    with pytest.raises(UnavailableError, match="not yet durable"):
        AckBarrier(ScriptedRedis([1, 0]), AckDurability(local=1, replicas=1)).wait()
    with pytest.raises(UnavailableError):
        AckBarrier(ScriptedRedis([0, 0]), AckDurability(local=1)).wait()


def test_an_off_barrier_sends_nothing():
    client = ScriptedRedis([0, 0])
    AckBarrier(client, AckDurability()).wait()
    assert client.log == []


def test_gateway_auth_mode_and_bootstrap_key_are_validated():
    base = {"VISEARCH_SHARD_ADDRS": "a:1", "VISEARCH_REDIS_URL": "redis://x",
            "VISEARCH_EMBEDDER_ADDR": "e:1", "VISEARCH_VERIFIER_ADDR": "v:1",
            "VISEARCH_S3_ENDPOINT": "s:1", "VISEARCH_S3_ACCESS_KEY": "a",
            "VISEARCH_S3_SECRET_KEY": "b"}  # fmt: skip
    assert GatewayConfig.from_env(base).auth_required
    assert not GatewayConfig.from_env({**base, "VISEARCH_AUTH": "off"}).auth_required
    with pytest.raises(ConfigError):
        GatewayConfig.from_env({**base, "VISEARCH_AUTH": "maybe"})
    with pytest.raises(ConfigError):
        GatewayConfig.from_env({**base, "VISEARCH_BOOTSTRAP_API_KEY": "secret"})


def test_local_valkey_config_has_an_acl_user_and_the_fsync_policy(tmp_path):
    path = localstack._valkey_config(tmp_path, "pw123", "always")
    lines = path.read_text().splitlines()
    assert "user default off" in lines
    assert f"user {localstack.VALKEY_USER} on >pw123 {localstack.VALKEY_ACL_RULES}" in lines
    assert "appendfsync always" in lines
    assert path.stat().st_mode & 0o077 == 0
    with pytest.raises(localstack.StackError):
        localstack._valkey_config(tmp_path, "pw", "sometimes")


def test_the_redis_password_from_a_secret_is_added_to_the_url():
    env = {"VISEARCH_REDIS_URL": "redis://redis:6379/0"}
    assert redis_url_from_env(env) == "redis://redis:6379/0"
    secret = {"VISEARCH_REDIS_USERNAME": "visearch", "VISEARCH_REDIS_PASSWORD": "p@ss/word"}
    assert redis_url_from_env({**env, **secret}) == "redis://visearch:p%40ss%2Fword@redis:6379/0"
    assert redis_url_from_env({}, required=False) == ""
    with pytest.raises(ConfigError):
        redis_url_from_env({"VISEARCH_REDIS_URL": "redis://u:p@redis:6379/0", **secret})
