"""RootSIFT local features (Arandjelović & Zisserman, "Three things everyone should know to
improve object retrieval", CVPR 2012).

RootSIFT = element-wise square root of the L1-normalised SIFT descriptor. Comparing RootSIFT
vectors with Euclidean distance equals comparing SIFT vectors with the Hellinger kernel, which
is more robust to bursty bins than plain SIFT. Because each row sums to 1 before the square
root, every RootSIFT row has unit L2 norm, so a dot product is a cosine similarity.

Images are downscaled (never upscaled) so the long side is at most ``max_side`` before
detection; keypoints are then mapped back to ORIGINAL pixel coordinates so that stored
features can be drawn on, and geometrically compared with, the original image.
"""

from __future__ import annotations

import cv2
import numpy as np

from services.common.errors import InvalidArgumentError
from services.common.local_features import LocalFeatures

FEATURE_TYPE = "rootsift"
DEFAULT_MAX_FEATURES = 1000
DEFAULT_MAX_SIDE = 640
SIFT_DIMS = 128
L1_EPS = 1e-7  # guards the L1 normalisation of an all-zero SIFT descriptor
RGB_CHANNELS = 3


def extract_rootsift(
    image_rgb: np.ndarray,
    max_features: int = DEFAULT_MAX_FEATURES,
    max_side: int = DEFAULT_MAX_SIDE,
) -> LocalFeatures:
    """Detect SIFT keypoints and describe them with RootSIFT.

    Args:
        image_rgb: [H, W, 3] uint8 RGB image.
        max_features: keep at most this many keypoints (strongest response first).
        max_side: the long side is downscaled to at most this many pixels before detection.

    Returns:
        LocalFeatures with keypoints [n, 2] float32 (x, y) in original pixels, scores [n]
        float32 (SIFT response), descriptors [n, 128] float32 (L2-unit rows), n <= max_features.
        Rows are sorted by response (descending) with a total tie-break, so the output is
        deterministic for a given image.
    """
    _check_image(image_rgb)
    if max_features <= 0 or max_side <= 0:
        raise InvalidArgumentError("max_features and max_side must be positive")
    height, width = image_rgb.shape[:2]
    gray = cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2GRAY)
    gray, scale_x, scale_y = _downscale(gray, max_side)

    sift = cv2.SIFT_create(nfeatures=max_features)
    keypoints, sift_descriptors = sift.detectAndCompute(gray, None)
    if not keypoints or sift_descriptors is None:
        return _empty_features(width, height)
    order = _deterministic_order(keypoints)[:max_features]
    keypoints = [keypoints[i] for i in order]
    sift_descriptors = sift_descriptors[order]

    xy = np.array([kp.pt for kp in keypoints], dtype=np.float32)
    # Pixel centres map as (x + 0.5) * scale - 0.5 between the two resolutions.
    xy[:, 0] = (xy[:, 0] + 0.5) * scale_x - 0.5
    xy[:, 1] = (xy[:, 1] + 0.5) * scale_y - 0.5
    return LocalFeatures(
        feature_type=FEATURE_TYPE,
        keypoints=xy,
        scores=np.array([kp.response for kp in keypoints], dtype=np.float32),
        descriptors=root_sift(sift_descriptors),
        image_width=width,
        image_height=height,
    )


def root_sift(sift_descriptors: np.ndarray) -> np.ndarray:
    """[n, d] non-negative SIFT descriptors -> [n, d] float32 RootSIFT (L2-unit rows)."""
    descriptors = np.asarray(sift_descriptors, dtype=np.float32)
    l1 = np.abs(descriptors).sum(axis=1, keepdims=True)
    return np.sqrt(np.abs(descriptors) / np.maximum(l1, L1_EPS)).astype(np.float32)


def _check_image(image_rgb: np.ndarray) -> None:
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != RGB_CHANNELS:
        raise InvalidArgumentError(
            f"expected an [H, W, 3] uint8 RGB image, got {image_rgb.shape} {image_rgb.dtype}"
        )
    if image_rgb.shape[0] == 0 or image_rgb.shape[1] == 0:
        raise InvalidArgumentError("empty image")


def _downscale(gray: np.ndarray, max_side: int) -> tuple[np.ndarray, float, float]:
    """[H, W] uint8 -> (resized [h, w] uint8, W / w, H / h); never upscales."""
    height, width = gray.shape
    long_side = max(height, width)
    if long_side <= max_side:
        return gray, 1.0, 1.0
    factor = max_side / long_side
    new_width = max(1, round(width * factor))
    new_height = max(1, round(height * factor))
    resized = cv2.resize(gray, (new_width, new_height), interpolation=cv2.INTER_AREA)
    return resized, width / new_width, height / new_height


def _deterministic_order(keypoints: tuple[cv2.KeyPoint, ...]) -> list[int]:
    """Indices, strongest first; ties broken by position, size and angle (a total order).

    OpenCV detects in parallel, so the raw keypoint order may differ between runs.
    """
    return sorted(
        range(len(keypoints)),
        key=lambda i: (
            -keypoints[i].response,
            keypoints[i].pt[1],
            keypoints[i].pt[0],
            -keypoints[i].size,
            keypoints[i].angle,
            keypoints[i].octave,
        ),
    )


def _empty_features(width: int, height: int) -> LocalFeatures:
    return LocalFeatures(
        feature_type=FEATURE_TYPE,
        keypoints=np.zeros((0, 2), dtype=np.float32),
        scores=np.zeros((0,), dtype=np.float32),
        descriptors=np.zeros((0, SIFT_DIMS), dtype=np.float32),
        image_width=width,
        image_height=height,
    )
