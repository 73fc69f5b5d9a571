"""Seeded photometric and geometric augmentation of training images (numpy + OpenCV).

A view is a function of (image, view seed) only, so its backbone features can be cached under
the image's sha256 and the view seed. Bump :data:`AUGMENT_VERSION` whenever the recipe changes.

The recipe makes, from one clean gallery image (a packshot), the photos users take of the
object: rotated through the full circle, seen in perspective, small in a cluttered frame,
under glare, blurred and JPEG-compressed, so one image per label is enough to train on.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

AUGMENT_VERSION = "aug3"
IDENTITY_SEED = 0  # view seed 0 is the untouched image


@dataclass(frozen=True)
class AugmentSettings:
    """Ranges of the random transforms (each view draws one value from each range)."""

    rotate_degrees: float = 180.0  # uniform in [-r, r]: 180 = the full circle
    black_border_probability: float = 0.5  # else corners are filled by reflection
    scale: tuple[float, float] = (0.6, 1.4)
    crop_fraction: tuple[float, float] = (0.6, 1.0)  # kept side fraction
    brightness: float = 0.25  # additive, fraction of 255
    contrast: tuple[float, float] = (0.7, 1.3)
    saturation: tuple[float, float] = (0.7, 1.3)
    blur_probability: float = 0.3
    blur_sigma: tuple[float, float] = (0.5, 2.0)
    jpeg_probability: float = 0.5
    jpeg_quality: tuple[int, int] = (30, 90)
    perspective_probability: float = 0.7
    perspective: float = 0.2  # each corner moves up to this fraction of the side
    clutter_probability: float = 0.5  # the object pasted, smaller, into a cluttered frame
    object_fraction: tuple[float, float] = (0.45, 0.9)  # object's side / frame's side
    clutter_shapes: tuple[int, int] = (6, 24)
    glare_probability: float = 0.4
    glare_strength: tuple[float, float] = (0.3, 0.8)  # peak blend towards white


def view_rng(sha256: str, view_seed: int) -> np.random.Generator:
    """The generator of one view: a pure function of the image digest and the view seed."""
    return np.random.default_rng([int(sha256[:16], 16), int(view_seed)])


def rotate_full(image: np.ndarray, degrees: float, black_border: bool = False) -> np.ndarray:
    """uint8 [H,W,3] → uint8 [H',W',3] rotated by ``degrees`` on a canvas holding all of it.

    Corners outside the source are black (as a rotated photo's query copy has) or filled by
    reflecting the image.
    """
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), degrees, 1.0)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    new_w, new_h = int(round(h * sin + w * cos)), int(round(h * cos + w * sin))
    matrix[0, 2] += new_w / 2.0 - w / 2.0
    matrix[1, 2] += new_h / 2.0 - h / 2.0
    return cv2.warpAffine(
        image,
        matrix,
        (new_w, new_h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT if black_border else cv2.BORDER_REFLECT_101,
    )


def _colour_jitter(image: np.ndarray, rng: np.random.Generator, s: AugmentSettings) -> np.ndarray:
    """uint8 [H,W,3] RGB → uint8, brightness/contrast/saturation changed."""
    x = image.astype(np.float32)
    grey = x.mean(axis=2, keepdims=True)
    x = grey + (x - grey) * rng.uniform(*s.saturation)
    x = (x - x.mean()) * rng.uniform(*s.contrast) + x.mean()
    x = x + rng.uniform(-s.brightness, s.brightness) * 255.0
    return np.clip(x, 0, 255).astype(np.uint8)


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """Round-trip uint8 RGB [H,W,3] through JPEG at ``quality``."""
    ok, encoded = cv2.imencode(
        ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        return image
    return cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def clutter_background(
    height: int, width: int, rng: np.random.Generator, shapes: tuple[int, int]
) -> np.ndarray:
    """uint8 [height, width, 3] RGB: a lit surface strewn with random boxes and discs."""
    corners = rng.uniform(30, 230, size=(2, 2, 3)).astype(np.float32)
    out = cv2.resize(corners, (width, height), interpolation=cv2.INTER_LINEAR)
    for _ in range(int(rng.integers(shapes[0], shapes[1] + 1))):
        colour = tuple(float(c) for c in rng.uniform(0, 255, size=3))
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        rx = int(rng.integers(4, max(5, width // 4)))
        ry = int(rng.integers(4, max(5, height // 4)))
        if rng.random() < 0.5:
            cv2.rectangle(out, (cx - rx, cy - ry), (cx + rx, cy + ry), colour, -1)
        else:
            angle = float(rng.uniform(0, 180))
            cv2.ellipse(out, (cx, cy), (rx, ry), angle, 0, 360, colour, -1)
    noise = rng.normal(0.0, 6.0, size=out.shape).astype(np.float32)
    return np.clip(out + noise, 0, 255).astype(np.uint8)


def warp_into_frame(
    image: np.ndarray, rng: np.random.Generator, s: AugmentSettings, clutter: bool
) -> np.ndarray:
    """uint8 [H,W,3] → uint8 [H',W',3]: the image seen in perspective, maybe in a cluttered frame.

    Each corner moves inwards or outwards by up to ``s.perspective`` of the side; with
    ``clutter`` the warped object fills only ``s.object_fraction`` of a frame whose rest is
    :func:`clutter_background`.
    """
    h, w = image.shape[:2]
    fraction = float(rng.uniform(*s.object_fraction)) if clutter else 1.0
    frame_h, frame_w = max(16, round(h / fraction)), max(16, round(w / fraction))
    x0, y0 = (frame_w - w) / 2.0, (frame_h - h) / 2.0
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    jitter = rng.uniform(-s.perspective, s.perspective, size=(4, 2)) * np.float32([w, h])
    dst = (src + np.float32([x0, y0]) + jitter).astype(np.float32)
    matrix = cv2.getPerspectiveTransform(src, dst)
    if not clutter:
        return cv2.warpPerspective(
            image, matrix, (frame_w, frame_h), borderMode=cv2.BORDER_REFLECT_101
        )
    background = clutter_background(frame_h, frame_w, rng, s.clutter_shapes)
    return cv2.warpPerspective(
        image, matrix, (frame_w, frame_h), dst=background, borderMode=cv2.BORDER_TRANSPARENT
    )


def add_glare(image: np.ndarray, rng: np.random.Generator, s: AugmentSettings) -> np.ndarray:
    """uint8 [H,W,3] → uint8: a soft elliptical highlight blended towards white."""
    h, w = image.shape[:2]
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    sy, sx = rng.uniform(0.05, 0.3) * h, rng.uniform(0.05, 0.3) * w
    ys, xs = np.ogrid[:h, :w]
    blob = np.exp(-(((ys - cy) / sy) ** 2 + ((xs - cx) / sx) ** 2) / 2.0).astype(np.float32)
    alpha = (float(rng.uniform(*s.glare_strength)) * blob)[..., None]
    return (image.astype(np.float32) * (1.0 - alpha) + 255.0 * alpha).astype(np.uint8)


def augment(
    image: np.ndarray, sha256: str, view_seed: int, settings: AugmentSettings | None = None
) -> np.ndarray:
    """One seeded view of ``image`` (uint8 [H,W,3] RGB) → uint8 [H',W',3] RGB.

    Order: perspective (maybe into a cluttered frame) → rotation (full circle) → scale →
    crop → colour jitter → glare → blur → JPEG. View seed :data:`IDENTITY_SEED` returns the
    image unchanged.
    """
    if view_seed == IDENTITY_SEED:
        return image
    s = settings or AugmentSettings()
    rng = view_rng(sha256, view_seed)
    clutter = bool(rng.random() < s.clutter_probability)
    out = image
    if clutter or rng.random() < s.perspective_probability:
        out = warp_into_frame(out, rng, s, clutter)
    angle = float(rng.uniform(-s.rotate_degrees, s.rotate_degrees))
    out = rotate_full(out, angle, black_border=bool(rng.random() < s.black_border_probability))
    scale = float(rng.uniform(*s.scale))
    h, w = out.shape[:2]
    out = cv2.resize(
        out,
        (max(16, round(w * scale)), max(16, round(h * scale))),
        interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
    )
    h, w = out.shape[:2]
    ch, cw = (max(16, round(side * rng.uniform(*s.crop_fraction))) for side in (h, w))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    out = np.ascontiguousarray(out[y0 : y0 + ch, x0 : x0 + cw])
    out = _colour_jitter(out, rng, s)
    if rng.random() < s.glare_probability:
        out = add_glare(out, rng, s)
    if rng.random() < s.blur_probability:
        out = cv2.GaussianBlur(out, (0, 0), float(rng.uniform(*s.blur_sigma)))
    if rng.random() < s.jpeg_probability:
        out = _jpeg(out, int(rng.integers(s.jpeg_quality[0], s.jpeg_quality[1] + 1)))
    return out
