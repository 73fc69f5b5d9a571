"""DELF-style local features at serving time (numpy + OpenCV around a per-scale network; no torch).

Pipeline (``DelfExtractor.extract``), for each requested in-plane rotation of the image:
1. The image is resized so its long side is ``base_side`` (scale 1.0), then to every pyramid
   scale of ``scales`` (DELF's 0.25 … 2.0 in steps of √2) whose long side lies within
   ``[min_side, max_side]``: scales that would upsample beyond ``max_side`` cost the most
   (compute grows with the square of the side) and add least on retrieval-sized photos.
2. One network run per scale (the ONNX model of ``services.models.delf``) gives features
   [96,h,w] and attention [h,w] on a stride-16 grid.
3. Keypoints are the receptive-field centres: grid cell (i, j) is centred on pixel
   (16 j, 16 i) of the resized image (every stride-2 3x3 convolution with padding 1 maps output
   pixel i to input pixel 2i), mapped back to the ORIGINAL image's pixel coordinates (and back
   through the rotation). The effective centre (input-gradient centroid) lies a few pixels
   off, depending on input and position (+5..7 px in x, -1..5 in y measured); adding a mean
   offset did not reduce homography errors on UKBench warps, so the analytic centre is used.
4. The ``max_features`` locations of highest attention over all scales are kept. No spatial
   non-maximum suppression, as in DELF (its NMS runs with IoU threshold 1.0, i.e. off): nearby
   cells at one scale and one place at several scales carry different descriptors, and the
   verifier's one-to-one mutual matches already stop a cluster of them from matching one
   candidate point many times; suppressing them would drop true scale-matched pairs.
5. Descriptors: L2-normalise, project to 40-d with the model's learned whitening
   (``services.models.delf_whitening``), L2-normalise again.

Rotations: the CNN descriptors are not rotation invariant. For a query, features are extracted
at several rotations (0/90/180/270° by default; multiples of 90° are exact pixel permutations)
and concatenated in one ``LocalFeatures`` with ``group_sizes``/``rotations`` telling the
verifier which rows belong to which rotation; it matches each group separately and keeps the
best geometric fit. Gallery images are extracted once, upright.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from services.common.errors import InvalidArgumentError
from services.common.local_features import LocalFeatures

FEATURE_TYPE = "delf"
STRIDE = 16
# DELF's pyramid: 2^(k/2) for k = -4..2.
DEFAULT_SCALES = (0.25, 0.3536, 0.5, 0.7071, 1.0, 1.4142, 2.0)
# Scale 1.0 = long side 384. The cost grows with the square of the side (ORT, 2 busy cores:
# ~4 ms at 112 px, ~33 ms at 224, ~52 at 320, ~125 at 512, ~260 at 724), and a query pays it
# once per rotation, so the levels above 1.0 (upsampling) are cut; since every image is first
# brought to the same long side, levels 0.35 … 1.0 on both sides still cover a 2.8x relative
# scale change (the evaluation's scale + crop range is ~1.1-3x).
DEFAULT_BASE_SIDE = 384
DEFAULT_MIN_SIDE = 112  # 0.25 x 384 = 96 px: a 6x4 grid whose receptive fields span the image
DEFAULT_MAX_SIDE = 384
DEFAULT_MAX_FEATURES = 500
L2_EPS = 1e-12
RIGHT_ANGLE = 90.0

# (features [1,C,H/16,W/16] float32, attention [1,1,H/16,W/16] float32) of a [1,3,H,W] input.
ScaleRunner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class DelfSettings:
    """Pyramid and selection settings (see the module docstring)."""

    scales: tuple[float, ...] = DEFAULT_SCALES
    base_side: int = DEFAULT_BASE_SIDE
    min_side: int = DEFAULT_MIN_SIDE
    max_side: int = DEFAULT_MAX_SIDE
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @classmethod
    def from_manifest(cls, raw: dict[str, Any]) -> DelfSettings:
        pyramid = raw.get("pyramid", {})
        return cls(
            scales=tuple(float(s) for s in pyramid.get("scales", DEFAULT_SCALES)),
            base_side=int(pyramid.get("base_side", DEFAULT_BASE_SIDE)),
            min_side=int(pyramid.get("min_side", DEFAULT_MIN_SIDE)),
            max_side=int(pyramid.get("max_side", DEFAULT_MAX_SIDE)),
            mean=tuple(float(v) for v in raw["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in raw["std"]),  # type: ignore[arg-type]
        )


@dataclass(frozen=True, eq=False)
class PcaWhitening:
    """mean [C] float32, projection [C, D] float32 (components / sqrt(variance))."""

    mean: np.ndarray
    projection: np.ndarray

    @classmethod
    def from_manifest(cls, raw: dict[str, Any]) -> PcaWhitening:
        """From a manifest's "pca": a learned whitening ("projection" [C][D]) or, in the
        first model version, a PCA ("components" [D][C] and "variances" [D])."""
        pca = raw["pca"]
        if "projection" in pca:
            return cls(
                mean=np.asarray(pca["mean"], dtype=np.float32),
                projection=np.ascontiguousarray(pca["projection"], dtype=np.float32),
            )
        components = np.asarray(pca["components"], dtype=np.float64)  # [D, C]
        variances = np.asarray(pca["variances"], dtype=np.float64)  # [D]
        projection = (components / np.sqrt(variances + float(pca.get("epsilon", 0.0)))[:, None]).T
        return cls(
            mean=np.asarray(pca["mean"], dtype=np.float32),
            projection=np.ascontiguousarray(projection, dtype=np.float32),
        )

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """[n, C] float32 raw features → [n, D] float32 whitened, L2-unit rows."""
        unit = _l2_normalise(features)
        return _l2_normalise((unit - self.mean) @ self.projection)


class DelfExtractor:
    """Image pyramid + per-scale network + top-N by attention + PCA (see module docstring)."""

    def __init__(
        self, runner: ScaleRunner, pca: PcaWhitening, settings: DelfSettings, version: str = ""
    ) -> None:
        self._run = runner
        self._pca = pca
        self.settings = settings
        self.version = version  # the local model's version, stamped on every extraction
        self._mean = np.asarray(settings.mean, dtype=np.float32)
        self._std = np.asarray(settings.std, dtype=np.float32)

    @staticmethod
    def normalise(
        image_rgb: np.ndarray, mean: Sequence[float] | np.ndarray, std: Sequence[float] | np.ndarray
    ) -> np.ndarray:
        """[H,W,3] uint8 RGB → [1,3,H,W] float32, scaled to [0,1] and mean/std normalised."""
        mean32 = np.asarray(mean, dtype=np.float32)
        std32 = np.asarray(std, dtype=np.float32)
        x = (image_rgb.astype(np.float32) / 255.0 - mean32) / std32
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None])

    def pyramid_sides(self, width: int, height: int) -> list[tuple[int, int]]:
        """(width, height) of every pyramid level of a width x height image."""
        factor = self.settings.base_side / max(width, height)
        sides = []
        for scale in self.settings.scales:
            w = max(1, round(width * factor * scale))
            h = max(1, round(height * factor * scale))
            if (
                self.settings.min_side <= max(w, h) <= self.settings.max_side
                and min(w, h) >= STRIDE
            ):
                sides.append((w, h))
        return sides

    def extract_upright(
        self, image_rgb: np.ndarray, max_features: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One image as is → (xy [n,2] float32, attention [n] float32, descriptors [n,D] float32).

        ``xy`` is in this image's pixels; rows sorted by attention (descending), n ≤ max_features.
        """
        height, width = image_rgb.shape[:2]
        xys, scores, raw = [], [], []
        for w, h in self.pyramid_sides(width, height):
            interpolation = cv2.INTER_AREA if w < width else cv2.INTER_LINEAR
            resized = cv2.resize(image_rgb, (w, h), interpolation=interpolation)
            features, attention = self._run(self.normalise(resized, self._mean, self._std))
            channels, rows, cols = features.shape[1:]
            grid_y, grid_x = np.mgrid[0:rows, 0:cols]
            xy = np.stack([grid_x.ravel(), grid_y.ravel()], axis=1).astype(np.float32) * STRIDE
            xy[:, 0] = (xy[:, 0] + 0.5) * (width / w) - 0.5
            xy[:, 1] = (xy[:, 1] + 0.5) * (height / h) - 0.5
            xys.append(xy)
            scores.append(attention.reshape(-1))
            raw.append(features.reshape(channels, -1).T)
        if not xys:
            dims = self._pca.projection.shape[1]
            return np.zeros((0, 2), np.float32), np.zeros(0, np.float32), np.zeros((0, dims))
        all_scores = np.concatenate(scores).astype(np.float32)
        # Stable order: attention descending, then pyramid order (deterministic on ties).
        keep = np.argsort(-all_scores, kind="stable")[:max_features]
        descriptors = self._pca(np.concatenate(raw)[keep].astype(np.float32))
        return np.concatenate(xys)[keep], all_scores[keep], descriptors

    def extract(
        self, image_rgb: np.ndarray, max_features: int, rotations: Sequence[float] = ()
    ) -> LocalFeatures:
        """[H,W,3] uint8 RGB → LocalFeatures (keypoints in original pixels, 40-d descriptors).

        ``rotations`` (degrees, counter-clockwise): empty or (0,) gives one upright set;
        otherwise one group of up to ``max_features`` rows per angle, in the given order.
        """
        if max_features <= 0:
            raise InvalidArgumentError("max_features must be positive")
        height, width = image_rgb.shape[:2]
        angles = tuple(float(a) % 360.0 for a in rotations) or (0.0,)
        parts = []
        for angle in angles:
            rotated, back = rotate_image(image_rgb, angle)
            xy, scores, descriptors = self.extract_upright(rotated, max_features)
            parts.append((_apply_affine(back, xy), scores, descriptors))
        grouped = len(angles) > 1
        return LocalFeatures(
            feature_type=FEATURE_TYPE,
            keypoints=np.concatenate([p[0] for p in parts]),
            scores=np.concatenate([p[1] for p in parts]),
            descriptors=np.concatenate([p[2] for p in parts]),
            image_width=width,
            image_height=height,
            group_sizes=tuple(len(p[0]) for p in parts) if grouped else (),
            rotations=angles if grouped else (),
            model_version=self.version,
        )


def rotate_image(image: np.ndarray, angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate counter-clockwise by ``angle_deg`` on a canvas holding the whole image.

    Returns (rotated [H',W',3] uint8, back [2,3] float64 mapping rotated pixels → original).
    Multiples of 90° are exact pixel permutations (np.rot90); other angles are bilinear, with
    black corners.
    """
    height, width = image.shape[:2]
    quarter = angle_deg / RIGHT_ANGLE
    if abs(quarter - round(quarter)) < 1e-9:
        k = int(round(quarter)) % 4
        # np.rot90 (k=1): rotated[y', x'] = image[x', W-1-y'].
        back = {
            0: [[1, 0, 0], [0, 1, 0]],
            1: [[0, -1, width - 1], [1, 0, 0]],
            2: [[-1, 0, width - 1], [0, -1, height - 1]],
            3: [[0, 1, 0], [-1, 0, height - 1]],
        }[k]
        return np.ascontiguousarray(np.rot90(image, k)), np.asarray(back, dtype=np.float64)
    centre = ((width - 1) / 2.0, (height - 1) / 2.0)
    forward = cv2.getRotationMatrix2D(centre, angle_deg, 1.0)
    cos, sin = abs(forward[0, 0]), abs(forward[0, 1])
    out_w = int(round(height * sin + width * cos))
    out_h = int(round(height * cos + width * sin))
    forward[0, 2] += (out_w - 1) / 2.0 - centre[0]
    forward[1, 2] += (out_h - 1) / 2.0 - centre[1]
    rotated = cv2.warpAffine(image, forward, (out_w, out_h), flags=cv2.INTER_LINEAR)
    return rotated, cv2.invertAffineTransform(forward)


def _apply_affine(affine: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """[2,3] affine applied to [n,2] points → [n,2] float32."""
    return (xy.astype(np.float64) @ affine[:, :2].T + affine[:, 2]).astype(np.float32)


def _l2_normalise(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.maximum(norms, L2_EPS)).astype(np.float32)


def load_delf(raw_manifest: dict[str, Any], runner: ScaleRunner) -> DelfExtractor:
    """The extractor a local model's manifest describes (PCA and pyramid), around ``runner``."""
    if raw_manifest.get("feature_type") != FEATURE_TYPE or "pca" not in raw_manifest:
        raise InvalidArgumentError(
            f"model {raw_manifest.get('version')!r} is not a DELF local model (no PCA)"
        )
    return DelfExtractor(
        runner,
        PcaWhitening.from_manifest(raw_manifest),
        DelfSettings.from_manifest(raw_manifest),
        version=str(raw_manifest.get("version", "")),
    )
