import cv2
import numpy as np
import pytest

from visearch.datasets import ImageEntry
from visearch.transforms import (
    ANGLE_RANGE_DEG,
    CROP_FRACTION_RANGE,
    JPEG_QUALITY_RANGE,
    SCALE_RANGE,
    QueryTransform,
    apply_transform,
    draw_transform,
    transform_image_bytes,
    write_transformed_copy,
)


def _image(height=120, width=160):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def test_draw_is_reproducible_and_independent_of_order():
    first = [draw_transform(name, seed=7) for name in ["a", "b", "c"]]
    reordered = [draw_transform(name, seed=7) for name in ["c", "a", "b"]]
    assert first == [reordered[1], reordered[2], reordered[0]]
    assert draw_transform("a", seed=8) != first[0]


def test_draws_stay_in_the_protocol_ranges():
    draws = [draw_transform(f"img{i}") for i in range(500)]
    angles = np.array([d.angle_deg for d in draws])
    assert ANGLE_RANGE_DEG[0] <= angles.min() and angles.max() < ANGLE_RANGE_DEG[1]
    assert angles.max() - angles.min() > 300  # the full circle is used
    assert all(SCALE_RANGE[0] <= d.scale <= SCALE_RANGE[1] for d in draws)
    assert all(CROP_FRACTION_RANGE[0] <= d.crop_fraction <= CROP_FRACTION_RANGE[1] for d in draws)
    assert all(JPEG_QUALITY_RANGE[0] <= d.jpeg_quality <= JPEG_QUALITY_RANGE[1] for d in draws)


def test_identity_like_transform_keeps_the_crop_of_the_original():
    image = _image()
    transform = QueryTransform(0.0, 1.0, 0.5, 0.0, 0.0, 90)
    out = apply_transform(image, transform)
    assert out.shape == (60, 80, 3)
    np.testing.assert_array_equal(out, image[:60, :80])


def test_rotation_by_90_grows_the_canvas_to_keep_every_pixel():
    image = _image()
    out = apply_transform(image, QueryTransform(90.0, 1.0, 1.0, 0.0, 0.0, 90))
    assert out.shape == (160, 120, 3)
    np.testing.assert_allclose(out.astype(int), np.rot90(image).astype(int), atol=1)


def test_scale_changes_the_size():
    out = apply_transform(_image(), QueryTransform(0.0, 0.5, 1.0, 0.0, 0.0, 90))
    assert out.shape == (60, 80, 3)


def test_bytes_round_trip_and_copy_writing(tmp_path):
    source = tmp_path / "src.jpg"
    cv2.imwrite(str(source), _image(240, 320))
    data, transform = transform_image_bytes(source.read_bytes(), "src")
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None and decoded.ndim == 3
    copies = write_transformed_copy([ImageEntry("src", source, "g0")], tmp_path / "out")
    assert copies[0].id == "src" and copies[0].label == "g0"
    assert copies[0].path.read_bytes() == data
    assert "angle_deg" in (tmp_path / "out" / "transforms.csv").read_text()
    with pytest.raises(ValueError, match="not a decodable image"):
        transform_image_bytes(b"not an image", "x")
