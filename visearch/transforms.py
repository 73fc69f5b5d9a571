"""Reproducible hard query copies: rotate, scale, crop and JPEG-compress each query.

The evaluation protocol of the local-features issue: each query image is rotated by a random
angle in [0, 360), scaled by 0.5-1.5x, cropped to 60-90% of each side and JPEG-compressed at
quality 30-70, while the gallery stays untouched. Every image draws its parameters from a
generator seeded by (seed, image id), so one image's transform never depends on which other
images were transformed or in what order.
"""

from __future__ import annotations

import csv
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from visearch.datasets import ImageEntry

DEFAULT_SEED = 20261122
ANGLE_RANGE_DEG = (0.0, 360.0)
SCALE_RANGE = (0.5, 1.5)
CROP_FRACTION_RANGE = (0.6, 0.9)
JPEG_QUALITY_RANGE = (30, 70)


@dataclass(frozen=True)
class QueryTransform:
    """The parameters drawn for one image."""

    angle_deg: float
    scale: float
    crop_fraction: float
    crop_x: float  # left edge of the crop, as a fraction of the free width (0..1)
    crop_y: float  # top edge of the crop, as a fraction of the free height (0..1)
    jpeg_quality: int


def draw_transform(image_id: str, seed: int = DEFAULT_SEED) -> QueryTransform:
    """The transform for `image_id` under `seed`; the same pair always gives the same draw."""
    rng = np.random.default_rng([seed, zlib.crc32(image_id.encode("utf-8"))])
    return QueryTransform(
        angle_deg=float(rng.uniform(*ANGLE_RANGE_DEG)),
        scale=float(rng.uniform(*SCALE_RANGE)),
        crop_fraction=float(rng.uniform(*CROP_FRACTION_RANGE)),
        crop_x=float(rng.uniform()),
        crop_y=float(rng.uniform()),
        jpeg_quality=int(rng.integers(JPEG_QUALITY_RANGE[0], JPEG_QUALITY_RANGE[1] + 1)),
    )


def apply_transform(image: np.ndarray, transform: QueryTransform) -> np.ndarray:
    """Rotates (canvas grown to keep every pixel, new corners black), scales, crops.

    image: (H, W, 3) uint8 BGR. Returns (h, w, 3) uint8 BGR, before JPEG compression.
    """
    height, width = image.shape[:2]
    centre = ((width - 1) / 2.0, (height - 1) / 2.0)
    rotation = cv2.getRotationMatrix2D(centre, transform.angle_deg, transform.scale)
    cos, sin = abs(rotation[0, 0]), abs(rotation[0, 1])
    out_w = max(1, int(round(height * sin + width * cos)))
    out_h = max(1, int(round(height * cos + width * sin)))
    rotation[0, 2] += (out_w - 1) / 2.0 - centre[0]
    rotation[1, 2] += (out_h - 1) / 2.0 - centre[1]
    interpolation = cv2.INTER_AREA if transform.scale < 1.0 else cv2.INTER_LINEAR
    rotated = cv2.warpAffine(
        image, rotation, (out_w, out_h), flags=interpolation, borderMode=cv2.BORDER_CONSTANT
    )
    crop_w = max(1, int(round(out_w * transform.crop_fraction)))
    crop_h = max(1, int(round(out_h * transform.crop_fraction)))
    left = int(round((out_w - crop_w) * transform.crop_x))
    top = int(round((out_h - crop_h) * transform.crop_y))
    return rotated[top : top + crop_h, left : left + crop_w].copy()


def transform_image_bytes(
    data: bytes, image_id: str, seed: int = DEFAULT_SEED
) -> tuple[bytes, QueryTransform]:
    """Decodes an encoded image, applies its seeded transform, returns JPEG bytes."""
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{image_id}: not a decodable image")
    transform = draw_transform(image_id, seed)
    ok, encoded = cv2.imencode(
        ".jpg",
        apply_transform(image, transform),
        [cv2.IMWRITE_JPEG_QUALITY, transform.jpeg_quality],
    )
    if not ok:
        raise ValueError(f"{image_id}: JPEG encoding failed")
    return encoded.tobytes(), transform


def write_transformed_copy(
    entries: list[ImageEntry], out_dir: Path, seed: int = DEFAULT_SEED
) -> list[ImageEntry]:
    """Writes `<out_dir>/images/<id>.jpg` per entry plus `transforms.csv`; returns the copies.

    The copies keep each original's id and label, so a ranking for a transformed query can be
    scored against the untouched gallery. Existing files are rewritten (the result is the same).
    """
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    copies = []
    rows = []
    for entry in entries:
        data, transform = transform_image_bytes(entry.path.read_bytes(), entry.id, seed)
        path = image_dir / f"{entry.id}.jpg"
        path.write_bytes(data)
        copies.append(ImageEntry(entry.id, path, entry.label))
        rows.append({"id": entry.id, "label": entry.label, **asdict(transform)})
    with (out_dir / "transforms.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "label", *QueryTransform.__annotations__])
        writer.writeheader()
        writer.writerows(rows)
    return copies
