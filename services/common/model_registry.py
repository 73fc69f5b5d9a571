"""Model registry in the object store: models/<kind>/<version>/{model.onnx, manifest.json}."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from services.common.objectstore import ObjectStore

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class ModelManifest:
    """The fields of manifest.json the serving path relies on."""

    version: str
    kind: str
    sha256: str
    input_name: str
    output_name: str
    input_size: tuple[int, int]  # (height, width)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    output_dims: int
    raw: dict[str, Any]
    # Multi-scale models: the smaller (height, width) sizes embedded beside input_size (the
    # largest), each fed to its own input (scale_input_name); () = one scale.
    extra_scales: tuple[tuple[int, int], ...] = ()

    @classmethod
    def from_json(cls, text: str) -> ModelManifest:
        raw = json.loads(text)
        try:
            height, width = raw["input_size"]
            return cls(
                version=raw["version"],
                kind=raw.get("kind", "global"),
                sha256=raw["sha256"],
                input_name=raw["input_name"],
                output_name=raw["output_name"],
                input_size=(int(height), int(width)),
                mean=tuple(float(v) for v in raw["mean"]),  # type: ignore[arg-type]
                std=tuple(float(v) for v in raw["std"]),  # type: ignore[arg-type]
                output_dims=int(raw["output_dims"]),
                raw=raw,
                extra_scales=tuple((int(h), int(w)) for h, w in raw.get("extra_scales", [])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FailedPreconditionError(f"model manifest is incomplete: {exc}") from exc


def scale_input_name(input_name: str, size: tuple[int, int]) -> str:
    """The ONNX input of a multi-scale model that takes the images at ``size`` (H, W)."""
    return f"{input_name}_{size[0]}x{size[1]}"


def sha256_file(path: Path) -> str:
    """Hex sha256 of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_local(model_dir: Path) -> tuple[ModelManifest, Path]:
    """Reads a model folder and checks the ONNX file against the manifest's sha256."""
    manifest_path = model_dir / MANIFEST_FILE
    model_path = model_dir / MODEL_FILE
    if not manifest_path.exists() or not model_path.exists():
        raise NotFoundError(
            f"no model in {model_dir}: build one with "
            "`python -m services.models.build --out models`"
        )
    manifest = ModelManifest.from_json(manifest_path.read_text(encoding="utf-8"))
    actual = sha256_file(model_path)
    if actual != manifest.sha256:
        raise FailedPreconditionError(
            f"{model_path} sha256 {actual[:12]} does not match its manifest {manifest.sha256[:12]}"
        )
    return manifest, model_path


VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")


def check_version(version: str) -> None:
    if not VERSION_PATTERN.match(version):
        raise InvalidArgumentError(
            f"model version {version!r} must be 1-128 characters of letters, digits, "
            "'_', '.', '+', '-' starting with a letter or digit"
        )


def registry_prefix(bucket: str, kind: str, version: str) -> str:
    return f"{bucket}/{kind}/{version}"


def publish(store: ObjectStore, bucket: str, model_dir: Path) -> ModelManifest:
    """Uploads a local model folder unless that version is already registered."""
    manifest, model_path = load_local(model_dir)
    prefix = registry_prefix(bucket, manifest.kind, manifest.version)
    if not store.exists(f"{prefix}/{MANIFEST_FILE}"):
        store.put(f"{prefix}/{MODEL_FILE}", model_path.read_bytes())
        # The manifest goes last: its presence means the version is complete.
        store.put(
            f"{prefix}/{MANIFEST_FILE}",
            (model_dir / MANIFEST_FILE).read_bytes(),
            content_type="application/json",
        )
    return manifest


def fetch(
    store: ObjectStore, bucket: str, kind: str, version: str, cache_dir: Path
) -> tuple[ModelManifest, Path]:
    """Downloads a registered version into cache_dir (once) and verifies it."""
    target = cache_dir / kind / version
    if (target / MANIFEST_FILE).exists():
        try:
            return load_local(target)
        except FailedPreconditionError:
            pass  # a torn download: fetch again
    prefix = registry_prefix(bucket, kind, version)
    try:
        manifest_bytes = store.get(f"{prefix}/{MANIFEST_FILE}")
    except NotFoundError as exc:
        raise NotFoundError(
            f"model version {version!r} is not in the registry ({prefix}/ has no "
            f"{MANIFEST_FILE}); publish it first"
        ) from exc
    target.mkdir(parents=True, exist_ok=True)
    (target / MODEL_FILE).write_bytes(store.get(f"{prefix}/{MODEL_FILE}"))
    (target / MANIFEST_FILE).write_bytes(manifest_bytes)
    return load_local(target)
