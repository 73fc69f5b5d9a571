"""Decoding untrusted image bytes safely: size caps, decompression bombs, EXIF orientation."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from services.common.errors import InvalidArgumentError, ResourceExhaustedError

ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"})
DEFAULT_MAX_PIXELS = 40_000_000
MIN_SIDE_PIXELS = 16


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int = DEFAULT_MAX_PIXELS


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_size(data: bytes, limits: ImageLimits) -> None:
    if not data:
        raise InvalidArgumentError("image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ResourceExhaustedError(
            f"image is {len(data)} bytes, above the limit of {limits.max_bytes} bytes"
        )


def decode_rgb(data: bytes, limits: ImageLimits) -> np.ndarray:
    """Decodes encoded image bytes.

    Returns:
        uint8 array [H, W, 3], RGB, with the EXIF orientation applied.
    Raises:
        InvalidArgumentError for bytes that are not a supported image,
        ResourceExhaustedError for images above the byte or pixel limits.
    """
    check_size(data, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.format not in ACCEPTED_FORMATS:
                    raise InvalidArgumentError(
                        f"image format {image.format} is not supported; "
                        f"use one of {', '.join(sorted(ACCEPTED_FORMATS))}"
                    )
                width, height = image.size
                if width * height > limits.max_pixels:
                    raise ResourceExhaustedError(
                        f"image is {width}x{height} = {width * height} pixels, above the "
                        f"limit of {limits.max_pixels} pixels"
                    )
                if min(width, height) < MIN_SIDE_PIXELS:
                    raise InvalidArgumentError(
                        f"image is {width}x{height}; both sides must be at least "
                        f"{MIN_SIDE_PIXELS} pixels"
                    )
                oriented = ImageOps.exif_transpose(image)
                rgb = oriented.convert("RGB")
                return np.asarray(rgb, dtype=np.uint8)
    except (InvalidArgumentError, ResourceExhaustedError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ResourceExhaustedError(f"image rejected as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InvalidArgumentError(
            f"image bytes cannot be decoded ({len(data)} bytes): not a known image format; "
            f"send one of {', '.join(sorted(ACCEPTED_FORMATS))}"
        ) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        # PIL's messages can name its internal objects (reprs with addresses): keep the type.
        raise InvalidArgumentError(
            f"image bytes cannot be decoded ({len(data)} bytes): the file is truncated or "
            f"corrupt ({type(exc).__name__})"
        ) from exc
