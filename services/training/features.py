"""Backbone features of augmented views, with an on-disk cache.

The backbone is the served global model (ONNX, MobileNetV2 + GeM + L2 norm, 1280-d), run with
the embedder's own preprocessing, so the head is trained on exactly what serving computes.
Cache key: backbone version + model sha256, augmentation version, image sha256, view seed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.common.imaging import ImageLimits, decode_rgb
from services.common.model_registry import ModelManifest, load_local
from services.embedder.core import GlobalModel, create_session
from services.training.augment import AUGMENT_VERSION, IDENTITY_SEED, AugmentSettings, augment

DECODE_LIMITS = ImageLimits(max_bytes=64 * 1024 * 1024)
BATCH = 16


@dataclass(frozen=True)
class TrainImage:
    """One labelled image; ``load`` returns its encoded bytes (called only on a cache miss)."""

    id: str
    label: str
    sha256: str
    load: Callable[[], bytes]


class Backbone:
    """The served global model: uint8 RGB images → float32 [n, dims], L2-normalised."""

    def __init__(self, model_dir: Path, threads: int = 0) -> None:
        manifest, model_path = load_local(model_dir)
        self.manifest: ModelManifest = manifest
        self.model_dir = model_dir
        self._model = GlobalModel(
            manifest, create_session(model_path, ["CPUExecutionProvider"], threads)
        )

    @property
    def key(self) -> str:
        """Version and weights digest: features of another backbone are never reused."""
        return f"{self.manifest.version}-{self.manifest.sha256[:12]}"

    @property
    def dims(self) -> int:
        return self.manifest.output_dims

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 [H,W,3] RGB images → float32 [n, dims], unit L2 norm per row."""
        out = []
        for start in range(0, len(images), BATCH):
            batch = np.stack([self._model.preprocess(im) for im in images[start : start + BATCH]])
            out.append(self._model.run(batch))
        return np.concatenate(out) if out else np.zeros((0, self.dims), np.float32)


class FeatureCache:
    """float32 [dims] vectors, one ``.npy`` per (backbone, augmentation recipe, image, view seed).

    Layout: ``root/<backbone key>/<augment version or "identity">/<sha[:2]>/<sha>-<seed>.npy``
    (the untouched image's features do not depend on the augmentation recipe).
    """

    def __init__(self, root: Path, backbone_key: str) -> None:
        self.folder = root / backbone_key
        self.hits = 0
        self.misses = 0

    def _path(self, sha256: str, view_seed: int) -> Path:
        recipe = "identity" if view_seed == IDENTITY_SEED else AUGMENT_VERSION
        return self.folder / recipe / sha256[:2] / f"{sha256}-{view_seed}.npy"

    def get(self, sha256: str, view_seed: int) -> np.ndarray | None:
        path = self._path(sha256, view_seed)
        try:
            vector = np.load(path)
        except (OSError, ValueError):
            return None
        return vector.astype(np.float32, copy=False)

    def put(self, sha256: str, view_seed: int, vector: np.ndarray) -> None:
        path = self._path(sha256, view_seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as handle:
            np.save(handle, vector.astype(np.float32))
        os.replace(tmp, path)


def view_features(
    images: Sequence[TrainImage],
    view_seeds: Sequence[int],
    backbone: Backbone,
    cache: FeatureCache | None,
    augment_settings: AugmentSettings | None = None,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Backbone features of every (image, view): float32 [len(images), len(view_seeds), dims].

    An image is decoded only when one of its views is not cached. ``progress`` is called with
    the number of images finished.
    """
    out = np.zeros((len(images), len(view_seeds), backbone.dims), dtype=np.float32)
    for i, image in enumerate(images):
        missing = []
        for v, seed in enumerate(view_seeds):
            cached = cache.get(image.sha256, seed) if cache is not None else None
            if cached is not None and cached.shape == (backbone.dims,):
                out[i, v] = cached
            else:
                missing.append(v)
        if cache is not None:
            cache.hits += len(view_seeds) - len(missing)
            cache.misses += len(missing)
        if missing:
            rgb = decode_rgb(image.load(), DECODE_LIMITS)
            views = [augment(rgb, image.sha256, view_seeds[v], augment_settings) for v in missing]
            vectors = backbone.embed(views)
            for v, vector in zip(missing, vectors, strict=True):
                out[i, v] = vector
                if cache is not None:
                    cache.put(image.sha256, view_seeds[v], vector)
        if progress is not None:
            progress(1)
    return out
