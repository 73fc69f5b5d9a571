"""Where the embedder's DELF-style local model comes from (a folder or the model registry)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.common.config import ObjectStoreConfig, env_int
from services.common.model_registry import check_version, fetch, load_local
from services.common.objectstore import S3ObjectStore
from services.embedder.core import create_session, delf_from_session
from services.embedder.delf import DEFAULT_MAX_FEATURES, DelfExtractor

LOCAL_KIND = "local"


@dataclass(frozen=True)
class LocalModelSource:
    """VISEARCH_LOCAL_MODEL_DIR (a built folder) or VISEARCH_LOCAL_MODEL_VERSION (registry);
    neither: the embedder serves RootSIFT only. VISEARCH_MAX_DELF_FEATURES: keypoints kept
    per image (per rotation) when a request says 0."""

    model_dir: str = ""
    model_version: str = ""
    max_features: int = DEFAULT_MAX_FEATURES

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LocalModelSource:
        return cls(
            model_dir=env.get("VISEARCH_LOCAL_MODEL_DIR", ""),
            model_version=env.get("VISEARCH_LOCAL_MODEL_VERSION", ""),
            max_features=env_int(
                env, "VISEARCH_MAX_DELF_FEATURES", DEFAULT_MAX_FEATURES, minimum=16, maximum=4000
            ),
        )


def load_delf_model(
    source: LocalModelSource,
    object_store: ObjectStoreConfig | None,
    cache_dir: Path,
    threads: int,
) -> DelfExtractor | None:
    """The DELF extractor of ``source``, or None when no local model is configured.

    It runs on the CPU provider whatever the global model uses: the DELF pyramid runs the
    network at a new input size per level, and on an H100 with onnxruntime-gpu 1.31 the CUDA
    provider took 3.4 s per image against 34 ms on the CPU provider
    (bench/results/embedder_providers.json).
    """
    if source.model_dir:
        manifest, path = load_local(Path(source.model_dir))
    elif source.model_version and object_store is not None:
        check_version(source.model_version)
        store = S3ObjectStore.from_config(object_store)
        manifest, path = fetch(
            store, object_store.models_bucket, LOCAL_KIND, source.model_version, cache_dir
        )
    else:
        return None
    return delf_from_session(manifest, create_session(path, ["CPUExecutionProvider"], threads))
