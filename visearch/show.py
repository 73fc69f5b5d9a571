"""`visearch search IMAGE --show out.png`: the query beside its top results, and the matches.

Layout (all sizes in pixels, see ``layout_size``):
- top row: the query, then up to ``max_results`` hits, each letterboxed into a ``TILE`` square
  with a caption (rank, id, final and global score, and the evidence: inliers and inlier
  ratio for a geometric re-rank, predicted label and SVC margin for a texture re-rank);
- one row per hit with inlier keypoints (at most ``match_rows``): the query and the hit
  side by side in ``PAIR_SIDE`` squares, each inlier drawn as a line between its two points
  (the DELF correspondence picture).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from services.common.imaging import ImageLimits, decode_rgb
from visearch.client import Hit

TILE = 256
CAPTION = 54
PAIR_SIDE = 2 * TILE
MAX_RESULTS = 5
MATCH_ROWS = 3
MAX_LINES = 150  # more lines hide the images; the strongest are not known, so take an even sample
BACKGROUND = (255, 255, 255)  # BGR
TEXT = (20, 20, 20)
LINE = (0, 200, 0)
POINT = (0, 0, 255)
FONT = cv2.FONT_HERSHEY_SIMPLEX
FONT_SCALE = 0.42
LINE_HEIGHT = 16
DISPLAY_LIMITS = ImageLimits(max_bytes=200 * 1024 * 1024)


@dataclass(frozen=True)
class Box:
    """Where an image was drawn: offset (x, y) of its top-left corner and its scale."""

    x: float
    y: float
    scale: float

    def project(self, points: np.ndarray) -> np.ndarray:
        """[n, 2] original pixel coordinates -> [n, 2] canvas coordinates (float64)."""
        return np.asarray(points, dtype=np.float64) * self.scale + np.array([self.x, self.y])


def layout_size(results: int, match_rows: int) -> tuple[int, int]:
    """(width, height) of the picture for `results` hits and `match_rows` match rows."""
    width = max((results + 1) * TILE, 2 * PAIR_SIDE)
    height = TILE + CAPTION + match_rows * (PAIR_SIDE + CAPTION)
    return width, height


def render(
    query: bytes,
    hits: Sequence[Hit],
    images: Mapping[str, bytes],
    *,
    max_results: int = MAX_RESULTS,
    match_rows: int = MATCH_ROWS,
) -> np.ndarray:
    """The picture as uint8 [H, W, 3] BGR (size ``layout_size``).

    Args:
        query: encoded query image.
        hits: search results, best first.
        images: encoded image bytes by hit id (hits without one are drawn as a grey box).
    """
    shown = list(hits[:max_results])
    matched = [h for h in shown if h.inlier_keypoints is not None and len(h.inlier_keypoints)]
    matched = matched[:match_rows]
    width, height = layout_size(len(shown), len(matched))
    canvas = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    query_bgr = _decode_bgr(query)
    _paste(canvas, query_bgr, 0, 0, TILE)
    _caption(canvas, ["query"], 0, TILE)
    for rank, hit in enumerate(shown, start=1):
        x = rank * TILE
        _paste(canvas, _decode_bgr(images.get(hit.id, b"")), x, 0, TILE)
        _caption(canvas, _hit_lines(rank, hit), x, TILE)
    for row, hit in enumerate(matched):
        y = TILE + CAPTION + row * (PAIR_SIDE + CAPTION)
        draw_matches(canvas, query_bgr, _decode_bgr(images.get(hit.id, b"")), hit, y)
    return canvas


def draw_matches(
    canvas: np.ndarray, query_bgr: np.ndarray, hit_bgr: np.ndarray, hit: Hit, y: int
) -> None:
    """Query (left) and hit (right) at row `y`, each inlier a line between its points."""
    left = _paste(canvas, query_bgr, 0, y, PAIR_SIDE)
    right = _paste(canvas, hit_bgr, PAIR_SIDE, y, PAIR_SIDE)
    pairs = np.asarray(hit.inlier_keypoints, dtype=np.float64).reshape(-1, 4)
    if len(pairs) > MAX_LINES:
        pairs = pairs[np.linspace(0, len(pairs) - 1, MAX_LINES).astype(int)]
    starts = left.project(pairs[:, :2])
    ends = right.project(pairs[:, 2:])
    for (x0, y0), (x1, y1) in zip(starts, ends, strict=True):
        p0, p1 = (round(x0), round(y0)), (round(x1), round(y1))
        cv2.line(canvas, p0, p1, LINE, 1, cv2.LINE_AA)
        cv2.circle(canvas, p0, 2, POINT, -1)
        cv2.circle(canvas, p1, 2, POINT, -1)
    _caption(
        canvas,
        [f"{hit.id}: {hit.inliers} inliers of {hit.matches} matches ({hit.inlier_ratio:.2f})"],
        0,
        y + PAIR_SIDE,
    )


def write_png(path: Path, canvas: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", canvas)
    if not ok:
        raise ValueError("PNG encoding failed")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encoded.tobytes())


def _hit_lines(rank: int, hit: Hit) -> list[str]:
    lines = [f"#{rank} {hit.id}"[:36], f"score {hit.score:.3f}  global {hit.global_score:.3f}"]
    if hit.predicted_label:
        same = "=" if hit.label == hit.predicted_label else "!="
        lines.append(f"{hit.label} {same} {hit.predicted_label} (m {hit.label_margin:.2f})"[:40])
    elif hit.inliers or hit.matches:
        lines.append(f"{hit.inliers} inliers / {hit.matches} ({hit.inlier_ratio:.2f})")
    else:
        lines.append(hit.label[:36])
    return lines


def _decode_bgr(data: bytes) -> np.ndarray:
    """uint8 [H, W, 3] BGR with the EXIF orientation applied (as the embedder sees it)."""
    if not data:
        return np.full((TILE, TILE, 3), 200, dtype=np.uint8)
    return np.ascontiguousarray(decode_rgb(data, DISPLAY_LIMITS)[:, :, ::-1])


def _paste(canvas: np.ndarray, image: np.ndarray, x: int, y: int, side: int) -> Box:
    """Letterbox `image` into the side x side square at (x, y); returns where it landed."""
    height, width = image.shape[:2]
    scale = min(side / width, side / height)
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (w, h), interpolation=interpolation)
    left, top = x + (side - w) // 2, y + (side - h) // 2
    canvas[top : top + h, left : left + w] = resized
    return Box(left, top, scale)


def _caption(canvas: np.ndarray, lines: list[str], x: int, y: int) -> None:
    for i, text in enumerate(lines):
        baseline = (x + 4, y + 14 + i * LINE_HEIGHT)
        cv2.putText(canvas, text, baseline, FONT, FONT_SCALE, TEXT, 1, cv2.LINE_AA)
