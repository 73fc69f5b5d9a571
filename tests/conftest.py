"""Session fixtures shared by unit and integration tests."""

import logging
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def restore_root_logging():
    """A tested main() points the root logger at this test's captured stderr, which pytest
    closes afterwards; later tests' background threads would log into the closed stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The built models (make models); built here when absent. VISEARCH_MODELS_DIR overrides."""
    models = Path(os.environ.get("VISEARCH_MODELS_DIR", ROOT / "models"))
    if not list((models / "global").glob("*/manifest.json")):
        pytest.importorskip("torch", reason="building the model needs the [build] extra")
        from services.models import build

        build.main(["--out", str(models)])
    return models


@pytest.fixture(scope="session")
def built_model_dir(models_dir) -> Path:
    from visearch.localstack import find_model_dir

    return find_model_dir(models_dir)


@pytest.fixture(scope="session")
def storage(tmp_path_factory):
    """Real Valkey and SeaweedFS S3 servers: (redis_url, s3_endpoint)."""
    from visearch import localstack

    launcher = localstack.Launcher(tmp_path_factory.mktemp("storage"))
    try:
        yield localstack.start_storage(launcher, timeout_s=60)
    finally:
        localstack.stop_processes(launcher.processes)
