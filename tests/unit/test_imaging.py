import io

import numpy as np
import pytest
from PIL import Image

from services.common.errors import InvalidArgumentError, ResourceExhaustedError
from services.common.imaging import ImageLimits, decode_rgb

LIMITS = ImageLimits(max_bytes=1_000_000, max_pixels=2_000_000)


def encode(array: np.ndarray, fmt: str = "JPEG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_decodes_rgb_and_grey():
    rgb = decode_rgb(encode(np.zeros((40, 60, 3), np.uint8)), LIMITS)
    assert rgb.shape == (40, 60, 3) and rgb.dtype == np.uint8
    grey = decode_rgb(encode(np.zeros((40, 60), np.uint8), "PNG"), LIMITS)
    assert grey.shape == (40, 60, 3)


def test_exif_orientation_is_applied():
    image = Image.fromarray(np.zeros((40, 60, 3), np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    assert decode_rgb(buffer.getvalue(), LIMITS).shape == (60, 40, 3)


@pytest.mark.parametrize("payload", [b"not an image", b"\xff\xd8\xff" + b"\x00" * 100])
def test_garbage_is_invalid_argument(payload):
    with pytest.raises(InvalidArgumentError, match="cannot be decoded"):
        decode_rgb(payload, LIMITS)


def test_empty_and_too_large():
    with pytest.raises(InvalidArgumentError, match="empty"):
        decode_rgb(b"", LIMITS)
    with pytest.raises(ResourceExhaustedError, match="bytes"):
        decode_rgb(b"x" * 1_000_001, LIMITS)


def test_decompression_bomb_is_rejected_before_decoding():
    # A tiny PNG that claims 3000x3000 pixels: above the 2 MP limit.
    bomb = encode(np.zeros((3000, 3000), np.uint8), "PNG", optimize=True)
    assert len(bomb) < 100_000
    with pytest.raises(ResourceExhaustedError, match="pixels"):
        decode_rgb(bomb, LIMITS)


def test_tiny_image_is_rejected():
    with pytest.raises(InvalidArgumentError, match="at least"):
        decode_rgb(encode(np.zeros((4, 4, 3), np.uint8), "PNG"), LIMITS)
