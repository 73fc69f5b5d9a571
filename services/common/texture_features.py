"""Storage form of an image's texture histogram: ``features/<texture_type>/<sha256>.npy``."""

from __future__ import annotations

import io

import numpy as np

from services.common.errors import InvalidArgumentError
from services.common.local_features import FEATURES_BUCKET


def texture_key(texture_type: str, sha256: str, bucket: str = FEATURES_BUCKET) -> str:
    """Object key of an image's texture histogram: "<bucket>/<texture_type>/<sha256>.npy"."""
    return f"{bucket}/{texture_type}/{sha256}.npy"


def histogram_to_bytes(histogram: np.ndarray) -> bytes:
    """float32 [d] -> .npy bytes (no pickles)."""
    buffer = io.BytesIO()
    np.save(buffer, check_histogram(histogram), allow_pickle=False)
    return buffer.getvalue()


def histogram_from_bytes(data: bytes) -> np.ndarray:
    """.npy bytes written by ``histogram_to_bytes`` -> float32 [d]; InvalidArgumentError if bad."""
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InvalidArgumentError(f"corrupt texture histogram: {exc}") from exc
    return check_histogram(array)


def check_histogram(histogram: np.ndarray) -> np.ndarray:
    """A finite, non-empty 1-D histogram as C-contiguous float32; InvalidArgumentError otherwise."""
    array = np.asarray(histogram)
    if array.ndim != 1 or array.size == 0 or array.dtype.kind not in "fiu":
        raise InvalidArgumentError(
            f"texture histogram must be a non-empty 1-D numeric array, got {array.shape}"
        )
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.all(np.isfinite(array)):
        raise InvalidArgumentError("texture histogram contains NaN or infinity")
    return array
