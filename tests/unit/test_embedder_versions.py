"""The embedder core serving several model versions from a registry (real ONNX sessions)."""

import io
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.common.errors import InvalidArgumentError, NotFoundError
from services.common.imaging import ImageLimits
from services.common.model_registry import check_version, fetch, load_local, publish
from services.common.objectstore import InMemoryObjectStore
from services.embedder.core import BatchingSettings, EmbedderCore, GlobalModel, create_session
from tests.variant_model import build_variant

pytest.importorskip("onnx")


def png(seed: int) -> bytes:
    array = np.random.default_rng(seed).integers(0, 255, (80, 96, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """An in-memory registry holding variants v-a (64-d), v-b (32-d), v-c (64-d, other seed)."""
    root = tmp_path_factory.mktemp("variants")
    store = InMemoryObjectStore()
    for version, dims, seed in (("v-a", 64, 1), ("v-b", 32, 2), ("v-c", 64, 3)):
        publish(store, "models", build_variant(root, version, dims, seed))
    return store, root


def make_core(registry, tmp_path: Path, max_sessions: int, loads: list[str]) -> EmbedderCore:
    store, root = registry
    manifest, path = load_local(root / "global" / "v-a")
    cache = tmp_path / "cache"

    def loader(version: str) -> GlobalModel:
        check_version(version)
        loads.append(version)
        loaded_manifest, loaded_path = fetch(store, "models", "global", version, cache)
        return GlobalModel(
            loaded_manifest, create_session(loaded_path, ["CPUExecutionProvider"], 1)
        )

    return EmbedderCore(
        GlobalModel(manifest, create_session(path, ["CPUExecutionProvider"], 1)),
        ImageLimits(max_bytes=1_000_000),
        BatchingSettings(max_batch=4, max_wait_ms=2.0),
        max_local_features=100,
        loader=loader,
        max_sessions=max_sessions,
    )


def test_versions_load_on_first_use_and_say_who_embedded(registry, tmp_path):
    loads: list[str] = []
    core = make_core(registry, tmp_path, max_sessions=3, loads=loads)
    try:
        default = core.embed_with([png(0)], "")
        other = core.embed_with([png(0), png(1)], "v-b")
        assert default.manifest.version == "v-a" and default.vectors.shape == (1, 64)
        assert other.manifest.version == "v-b" and other.vectors.shape == (2, 32)
        assert np.allclose(np.linalg.norm(other.vectors, axis=1), 1.0, atol=1e-5)
        core.embed_with([png(2)], "v-b")
        assert loads == ["v-b"]  # loaded once, then served from memory
        assert core.models.loaded_versions() == ["v-a", "v-b"]
        assert core.embedded_by_version() == {"v-a": 1, "v-b": 3}
    finally:
        core.close()


def test_sessions_are_bounded_least_recently_used_first(registry, tmp_path):
    loads: list[str] = []
    core = make_core(registry, tmp_path, max_sessions=2, loads=loads)
    try:
        core.embed_with([png(0)], "v-b")
        core.embed_with([png(0)], "v-c")  # evicts v-b; the default stays
        assert core.models.loaded_versions() == ["v-a", "v-c"]
        again = core.embed_with([png(0)], "v-b")
        assert loads == ["v-b", "v-c", "v-b"]
        assert again.vectors.shape == (1, 32)
        assert len(core.models.loaded_versions()) == 2
    finally:
        core.close()


def test_a_version_evicted_while_in_use_finishes_its_requests(registry, tmp_path):
    core = make_core(registry, tmp_path, max_sessions=2, loads=[])
    try:
        with core.models.use("v-b") as held:
            core.embed_with([png(0)], "v-c")  # v-b is evicted but still held
            assert held.evicted
            out = held.batcher.run(np.stack([held.model.preprocess(np.zeros((9, 9, 3), np.uint8))]))
            assert out.shape == (1, 32)
        assert "v-b" not in core.models.loaded_versions()
    finally:
        core.close()


def test_unknown_or_malformed_versions_are_refused(registry, tmp_path):
    core = make_core(registry, tmp_path, max_sessions=3, loads=[])
    try:
        with pytest.raises(NotFoundError, match="'v-missing' is not in the registry"):
            core.embed_with([png(0)], "v-missing")
        with pytest.raises(InvalidArgumentError, match="model version"):
            core.embed_with([png(0)], "../etc")
        assert core.models.loaded_versions() == ["v-a"]
        assert not core.models._loading  # no lock left behind per unknown version
    finally:
        core.close()


def test_concurrent_requests_of_two_versions_are_batched_apart(registry, tmp_path):
    core = make_core(registry, tmp_path, max_sessions=3, loads=[])
    images = [png(i) for i in range(6)]
    try:
        expected = {v: core.embed_with(images, v).vectors for v in ("v-a", "v-b")}
        results: dict[tuple[str, int], np.ndarray] = {}
        errors: list[BaseException] = []

        def worker(version: str, position: int) -> None:
            try:
                results[(version, position)] = core.embed_with(
                    [images[position]], version, timeout=10
                ).vectors[0]
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [
            threading.Thread(target=worker, args=(v, p)) for p in range(6) for v in ("v-a", "v-b")
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        for (version, position), vector in results.items():
            assert np.allclose(vector, expected[version][position], atol=1e-5)
    finally:
        core.close()
