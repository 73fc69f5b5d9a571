import pytest

from services.common.config import ServerConfig, env_bool, env_int
from services.common.errors import ConfigError
from services.gateway.main import GatewayConfig
from services.indexer.main import IndexerConfig


def test_defaults_and_overrides():
    config = IndexerConfig.from_env({"VISEARCH_SHARD_ID": "3", "VISEARCH_GRPC_PORT": "0"})
    assert config.shard_id == 3
    assert config.server.grpc_port == 0
    assert config.exact_threshold == 20_000
    assert config.server.max_image_bytes == 20 * 1024 * 1024
    assert config.server.max_message_bytes > config.server.max_image_bytes


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"VISEARCH_GRPC_PORT": "http"}, "VISEARCH_GRPC_PORT must be an integer"),
        ({"VISEARCH_GRPC_PORT": "70000"}, "<= 65535"),
        ({"VISEARCH_SHARD_ID": "-1"}, ">= 0"),
        ({"VISEARCH_MAX_IMAGE_BYTES": "10"}, ">= 1024"),
    ],
)
def test_bad_values_fail_fast_naming_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        IndexerConfig.from_env(env)


def test_gateway_requires_its_peers():
    with pytest.raises(ConfigError, match="VISEARCH_SHARD_ADDRS"):
        GatewayConfig.from_env({})


def test_config_is_frozen():
    config = ServerConfig.from_env({}, "x", 1)
    with pytest.raises(AttributeError):
        config.grpc_port = 2  # type: ignore[misc]


def test_helpers():
    assert env_bool({"A": "yes"}, "A", False) is True
    with pytest.raises(ConfigError):
        env_bool({"A": "maybe"}, "A", False)
    assert env_int({}, "A", 5) == 5
