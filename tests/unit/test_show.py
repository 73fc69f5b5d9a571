"""`--show` pictures: the size of the layout and the inlier lines of a geometric match."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from visearch import show
from visearch.client import Hit


def png(width: int, height: int, grey: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), grey, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def hit(hit_id: str, keypoints: np.ndarray | None = None) -> Hit:
    inliers = 0 if keypoints is None else len(keypoints)
    return Hit(
        id=hit_id,
        score=1.2,
        label="L",
        attributes={},
        global_score=0.8,
        inliers=inliers,
        reason="",
        sha256="",
        matches=inliers + 3,
        inlier_ratio=inliers / (inliers + 3),
        inlier_keypoints=keypoints,
    )


def green_pixels(canvas: np.ndarray) -> int:
    """Pixels clearly greener than grey (lines are anti-aliased, so not exactly LINE)."""
    b, g, r = (canvas[:, :, i].astype(int) for i in range(3))
    return int(((g - r > 60) & (g - b > 60)).sum())


def test_layout_without_matches():
    hits = [hit(f"h{i}") for i in range(3)]
    images = {h.id: png(200, 100, 90) for h in hits}
    canvas = show.render(png(120, 160, 60), hits, images)
    assert canvas.shape == (show.TILE + show.CAPTION, 2 * show.PAIR_SIDE, 3)
    assert (canvas.shape[1], canvas.shape[0]) == show.layout_size(3, 0)
    assert green_pixels(canvas) == 0


def test_geometric_match_draws_lines(tmp_path):
    # Query 400x300 and hit 300x300; five inliers spread over both images.
    keypoints = np.array(
        [
            [20, 20, 30, 40],
            [380, 30, 250, 60],
            [200, 150, 150, 150],
            [50, 280, 40, 260],
            [350, 250, 280, 270],
        ],
        dtype=np.float32,
    )
    hits = [hit("match", keypoints)] + [hit(f"other{i}") for i in range(5)]
    images = {h.id: png(300, 300, 120) for h in hits}
    canvas = show.render(png(400, 300, 60), hits, images)
    assert (
        (canvas.shape[1], canvas.shape[0])
        == show.layout_size(5, 1)
        == (6 * show.TILE, show.TILE + show.CAPTION + show.PAIR_SIDE + show.CAPTION)
    )
    match_row = canvas[show.TILE + show.CAPTION : show.TILE + show.CAPTION + show.PAIR_SIDE]
    assert green_pixels(match_row) > 5 * 100  # five lines, each well over 100 px long
    assert green_pixels(canvas[: show.TILE + show.CAPTION]) == 0
    # A line ends where the keypoint lands: the query's (20, 20) at scale 512/400.
    left = show.Box(0, (show.PAIR_SIDE - round(300 * 512 / 400)) // 2, 512 / 400)
    x, y = left.project(keypoints[:1, :2])[0]
    y += show.TILE + show.CAPTION
    patch = canvas[round(y) - 3 : round(y) + 4, round(x) - 3 : round(x) + 4]
    assert np.any(np.all(patch == np.array(show.POINT, np.uint8), axis=2))

    out = tmp_path / "out.png"
    show.write_png(out, canvas)
    decoded = cv2.imread(str(out))
    assert decoded.shape == canvas.shape


@pytest.mark.parametrize("count", [0, 1])
def test_no_lines_without_inliers(count):
    keypoints = np.zeros((count, 4), np.float32) if count else None
    canvas = show.render(png(64, 64, 60), [hit("a", keypoints)], {"a": png(64, 64, 90)})
    rows = 1 if count else 0
    assert (canvas.shape[1], canvas.shape[0]) == show.layout_size(1, rows)
