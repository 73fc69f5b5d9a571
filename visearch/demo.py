"""The README's demo: ingest scikit-image's bundled photos, find a rotated, cropped copy."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from skimage import data as skimage_data

SAMPLE_NAMES = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "camera",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "brick",
    "grass",
    "gravel",
    "clock",
    "coins",
    "moon",
    "colorwheel",
    "cell",
    "page",
    "text",
)
QUERY_SOURCE = "coffee"
QUERY_ROTATION_DEGREES = 35.0
QUERY_CROP_FRACTION = 0.7
QUERY_JPEG_QUALITY = 60


def _to_rgb(array: np.ndarray) -> np.ndarray:
    """Any skimage sample -> uint8 [H, W, 3]."""
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return np.ascontiguousarray(array[..., :3].astype(np.uint8))


def write_samples(out_dir: Path) -> list[Path]:
    """Writes the bundled photos as JPEG files named sample-<name>.jpg."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in SAMPLE_NAMES:
        path = out_dir / f"sample-{name}.jpg"
        if not path.exists():
            Image.fromarray(_to_rgb(getattr(skimage_data, name)())).save(path, quality=92)
        paths.append(path)
    return paths


def rotated_cropped_query(source: Path) -> bytes:
    """The source photo rotated, centre-cropped and re-compressed: JPEG bytes."""
    rgb = np.asarray(Image.open(source).convert("RGB"))
    height, width = rgb.shape[:2]
    rotation = cv2.getRotationMatrix2D((width / 2, height / 2), QUERY_ROTATION_DEGREES, 1.0)
    rotated = cv2.warpAffine(rgb, rotation, (width, height), borderMode=cv2.BORDER_REFLECT)
    crop_h, crop_w = int(height * QUERY_CROP_FRACTION), int(width * QUERY_CROP_FRACTION)
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    cropped = rotated[top : top + crop_h, left : left + crop_w]
    buffer = io.BytesIO()
    Image.fromarray(cropped).save(buffer, format="JPEG", quality=QUERY_JPEG_QUALITY)
    return buffer.getvalue()
