"""Backbone features of augmented views, with an on-disk cache.

Two encoders: :class:`Backbone`, the served global model (ONNX: backbone + GeM + L2 norm),
run with the embedder's own preprocessing, so a head-only training sees exactly what serving
computes; and :class:`TrunkRunner`, the frozen first blocks of the same backbone in torch,
whose activations the fine-tuning of the last blocks starts from.
Cache key: encoder key (version + model sha256 [+ trunk split]), augmentation version,
image sha256, view seed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from services.common.imaging import ImageLimits, decode_rgb
from services.common.model_registry import ModelManifest, load_local
from services.embedder.core import GlobalModel, create_session, preprocess_global
from services.training.augment import AUGMENT_VERSION, IDENTITY_SEED, AugmentSettings, augment

if TYPE_CHECKING:
    from torch import nn

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

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (self.manifest.output_dims,)

    @property
    def dtype(self) -> type[np.floating]:
        return np.float32

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 [H,W,3] RGB images → float32 [n, dims], unit L2 norm per row."""
        out = []
        for start in range(0, len(images), BATCH):
            batch = np.stack([self._model.preprocess(im) for im in images[start : start + BATCH]])
            out.append(self._model.run(batch))
        return np.concatenate(out) if out else np.zeros((0, self.dims), np.float32)


class TrunkRunner:
    """The frozen trunk of a torch global model: uint8 RGB images → float16 [n, C, h, w].

    ``model`` is a GlobalEmbeddingModel whose ``backbone`` has ``forward_trunk``; images are
    preprocessed as the manifest says (the same as serving).
    """

    def __init__(
        self, manifest: ModelManifest, model: nn.Module, split: int, threads: int = 0
    ) -> None:
        from services.training.finetune import trunk_activations  # imports torch

        self.manifest = manifest
        self.model = model
        self.split = split
        self._run = lambda batch: trunk_activations(model, split, batch, threads)
        probe = np.zeros((*manifest.input_size, 3), np.uint8)
        self._shape = tuple(self._run([preprocess_global(manifest, probe)]).shape[1:])

    @property
    def key(self) -> str:
        return f"{self.manifest.version}-{self.manifest.sha256[:12]}-trunk{self.split}"

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> type[np.floating]:
        return np.float16

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 [H,W,3] RGB images → float16 [n, C, h, w] trunk activations."""
        return self._run([preprocess_global(self.manifest, im) for im in images])


class Encoder(Protocol):
    """What :func:`view_features` runs: images → arrays of ``output_shape`` and ``dtype``."""

    @property
    def key(self) -> str: ...

    @property
    def output_shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> type[np.floating]: ...

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray: ...


class FeatureCache:
    """Arrays (float32 [dims] vectors or float16 trunk activations), one ``.npy`` each.

    One file per (encoder, augmentation recipe, image, view seed).

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
        return vector

    def put(self, sha256: str, view_seed: int, vector: np.ndarray) -> None:
        path = self._path(sha256, view_seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as handle:
            np.save(handle, vector)
        os.replace(tmp, path)


def view_features(
    images: Sequence[TrainImage],
    view_seeds: Sequence[int],
    backbone: Encoder,
    cache: FeatureCache | None,
    augment_settings: AugmentSettings | None = None,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Encoder outputs of every (image, view): [len(images), len(view_seeds), *output_shape].

    float32 vectors from a :class:`Backbone`, float16 activations from a :class:`TrunkRunner`.

    An image is decoded only when one of its views is not cached. ``progress`` is called with
    the number of images finished.
    """
    shape = backbone.output_shape
    out = np.zeros((len(images), len(view_seeds), *shape), dtype=backbone.dtype)
    for i, image in enumerate(images):
        missing = []
        for v, seed in enumerate(view_seeds):
            cached = cache.get(image.sha256, seed) if cache is not None else None
            if cached is not None and cached.shape == shape:
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
