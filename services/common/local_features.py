"""Local features of one image (keypoints, scores, descriptors) and their storage form.

Stored in the object store as an ``.npz`` archive under ``features/<feature_type>/<sha256>.npz``
or, for a learned extractor, ``features/<feature_type>/<model_version>/<sha256>.npz`` (see
``feature_key``): descriptors of two model versions live in different spaces, so a query is
only ever matched against features of its own model version. Archives are written
uncompressed by default (``COMPRESS_NPZ``): OpenCV's SIFT values are integer-valued before the
root, so DEFLATE does save about 45 % of the bytes (~290 KB instead of ~525 KB at 1000 x 128),
but decoding becomes ~4x slower (~3.5 ms instead of ~0.8 ms on a 2-core CPU) and reads sit on
the CPU-bound verifier's hot path. ``from_npz`` reads both forms, so the choice can be flipped
without migrating stored data.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import numpy as np

from services.common.errors import InvalidArgumentError
from services.common.model_registry import check_version

FEATURES_BUCKET = "features"
NPZ_FIELDS = ("feature_type", "keypoints", "scores", "descriptors", "image_size")
KEYPOINT_DIMS = 2  # (x, y)
COMPRESS_NPZ = False  # see the module docstring for the size/speed trade-off
# Local feature types a collection can use; "delf" needs the embedder's DELF-style model.
LOCAL_FEATURE_TYPES = ("rootsift", "delf")
# A search extracts the query's features at these in-plane rotations (degrees): DELF-style
# descriptors are not rotation invariant (RootSIFT is: one upright set).
QUERY_ROTATIONS: dict[str, tuple[float, ...]] = {"delf": (0.0, 90.0, 180.0, 270.0)}


@dataclass(frozen=True, eq=False)  # arrays: identity equality and hash
class LocalFeatures:
    """Local features of one image.

    Attributes:
        feature_type: extractor name, e.g. "rootsift"; part of the storage key.
        keypoints: [n, 2] float32 (x, y) in ORIGINAL image pixel coordinates.
        scores: [n] float32 detector response (or attention) per keypoint.
        descriptors: [n, d] float32, one row per keypoint.
        image_width: width in pixels of the original image.
        image_height: height in pixels of the original image.
        group_sizes: empty for one set of features; otherwise the rows are consecutive groups
            of these sizes, each extracted from the image rotated by the matching entry of
            ``rotations`` (degrees, counter-clockwise; keypoints still in original pixels).
            A query extracted at several rotations uses it (the verifier matches each group
            separately and keeps the best fit); it is not stored in ``to_npz``.
        rotations: one angle per group, or empty.
        model_version: the learned local model that extracted them ("" for RootSIFT, whose
            OpenCV SIFT has no versions); part of the storage key.

    Arrays are coerced to C-contiguous float32 on construction; inconsistent shapes raise
    InvalidArgumentError (features arrive over the wire and from storage).
    """

    feature_type: str
    keypoints: np.ndarray
    scores: np.ndarray
    descriptors: np.ndarray
    image_width: int
    image_height: int
    group_sizes: tuple[int, ...] = ()
    rotations: tuple[float, ...] = ()
    model_version: str = ""

    def __post_init__(self) -> None:
        keypoints = _as_float32(self.keypoints, "keypoints")
        scores = _as_float32(self.scores, "scores")
        descriptors = _as_float32(self.descriptors, "descriptors")
        if not self.feature_type:
            raise InvalidArgumentError("local features: empty feature_type")
        if keypoints.ndim != 2 or keypoints.shape[1] != KEYPOINT_DIMS:
            raise InvalidArgumentError(f"keypoints must be [n, 2], got {keypoints.shape}")
        count = keypoints.shape[0]
        if scores.shape != (count,):
            raise InvalidArgumentError(f"scores must be [{count}], got {scores.shape}")
        if descriptors.ndim != 2 or descriptors.shape[0] != count:
            raise InvalidArgumentError(f"descriptors must be [{count}, d], got {descriptors.shape}")
        if self.image_width <= 0 or self.image_height <= 0:
            raise InvalidArgumentError(
                f"image size must be positive, got {self.image_width}x{self.image_height}"
            )
        _check_groups(self.group_sizes, self.rotations, count)
        if self.model_version:
            check_version(self.model_version)  # it becomes part of a storage key
        object.__setattr__(self, "group_sizes", tuple(int(g) for g in self.group_sizes))
        object.__setattr__(self, "rotations", tuple(float(r) for r in self.rotations))
        object.__setattr__(self, "keypoints", keypoints)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "descriptors", descriptors)
        object.__setattr__(self, "image_width", int(self.image_width))
        object.__setattr__(self, "image_height", int(self.image_height))

    @property
    def count(self) -> int:
        """Number of keypoints n."""
        return int(self.keypoints.shape[0])

    @property
    def dims(self) -> int:
        """Descriptor dimension d."""
        return int(self.descriptors.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays (for byte-bounded caches)."""
        return int(self.keypoints.nbytes + self.scores.nbytes + self.descriptors.nbytes)

    def to_npz(self) -> bytes:
        """Serialise to an .npz archive (no pickles; compressed when COMPRESS_NPZ)."""
        buffer = io.BytesIO()
        save = np.savez_compressed if COMPRESS_NPZ else np.savez
        save(
            buffer,
            feature_type=np.array(self.feature_type),
            keypoints=self.keypoints,
            scores=self.scores,
            descriptors=self.descriptors,
            image_size=np.array([self.image_width, self.image_height], dtype=np.int64),
            model_version=np.array(self.model_version),
        )
        return buffer.getvalue()

    @classmethod
    def from_npz(cls, data: bytes) -> LocalFeatures:
        """Parse bytes written by ``to_npz``; raises InvalidArgumentError on corrupt data."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                missing = [name for name in NPZ_FIELDS if name not in archive.files]
                if missing:
                    raise InvalidArgumentError(f"local features archive lacks {missing}")
                arrays = {name: archive[name] for name in NPZ_FIELDS}
                # Absent from archives written before model versions were stored.
                version = archive["model_version"] if "model_version" in archive.files else None
        except InvalidArgumentError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
            raise InvalidArgumentError(f"corrupt local features archive: {exc}") from exc
        image_size = arrays["image_size"]
        feature_type = arrays["feature_type"]
        if image_size.shape != (2,) or not np.issubdtype(image_size.dtype, np.integer):
            raise InvalidArgumentError(f"bad image_size in archive: {image_size!r}")
        if feature_type.shape != () or feature_type.dtype.kind != "U":
            raise InvalidArgumentError("bad feature_type in archive")
        if version is not None and (version.shape != () or version.dtype.kind != "U"):
            raise InvalidArgumentError("bad model_version in archive")
        return cls(
            feature_type=str(feature_type),
            keypoints=arrays["keypoints"],
            scores=arrays["scores"],
            descriptors=arrays["descriptors"],
            image_width=int(image_size[0]),
            image_height=int(image_size[1]),
            model_version=str(version) if version is not None else "",
        )


def feature_key(
    feature_type: str, sha256: str, bucket: str = FEATURES_BUCKET, model_version: str = ""
) -> str:
    """Object key of an image's local features: "<bucket>/<feature_type>/<sha256>.npz", or
    "<bucket>/<feature_type>/<model_version>/<sha256>.npz" for a learned extractor."""
    if model_version:
        return f"{bucket}/{feature_type}/{model_version}/{sha256}.npz"
    return f"{bucket}/{feature_type}/{sha256}.npz"


def _check_groups(group_sizes: tuple[int, ...], rotations: tuple[float, ...], count: int) -> None:
    if len(group_sizes) != len(rotations):
        raise InvalidArgumentError(
            f"{len(group_sizes)} feature groups but {len(rotations)} rotations"
        )
    if group_sizes and (min(group_sizes) < 0 or sum(group_sizes) != count):
        raise InvalidArgumentError(
            f"feature group sizes {list(group_sizes)} do not add up to {count} keypoints"
        )


def _as_float32(array: np.ndarray, name: str) -> np.ndarray:
    """C-contiguous float32 copy/view of a real-valued array; InvalidArgumentError otherwise."""
    array = np.asarray(array)
    if array.dtype.kind not in "fiu":
        raise InvalidArgumentError(f"{name} must be numeric, got dtype {array.dtype}")
    result = np.ascontiguousarray(array, dtype=np.float32)
    if not np.all(np.isfinite(result)):
        raise InvalidArgumentError(f"{name} contains NaN or infinity")
    return result
