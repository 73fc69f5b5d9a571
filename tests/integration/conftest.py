"""A real local stack (Valkey, SeaweedFS S3, embedder, 2 shards, verifier, gateway) per session."""

from pathlib import Path

import pytest

from visearch import localstack
from visearch.client import VisearchClient

ROOT = Path(__file__).resolve().parents[2]
DATASETS = ROOT.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def stack(tmp_path_factory, models_dir):
    state_dir = tmp_path_factory.mktemp("stack")
    state = localstack.up(state_dir, shards=2, models_dir=models_dir)
    yield state
    localstack.down(state_dir)


@pytest.fixture(scope="session")
def client(stack):
    with VisearchClient(stack.gateway, timeout_s=120) as c:
        yield c
