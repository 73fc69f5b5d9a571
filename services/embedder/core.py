"""Embedder core: decode, preprocess, ONNX Runtime. No grpc here."""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
import onnxruntime as ort

from services.common.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    ResourceExhaustedError,
)
from services.common.imaging import ImageLimits, decode_rgb
from services.common.local_features import LocalFeatures
from services.common.model_registry import ModelManifest, scale_input_name
from services.embedder.delf import DelfExtractor, load_delf
from services.embedder.model_pool import BatchObserver, ModelLoader, ModelPool
from services.embedder.rootsift import extract_rootsift
from services.embedder.texture import TEXTURE_TYPE, extract_texture

log = logging.getLogger(__name__)
ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

LOCAL_FEATURE_TYPES = ("rootsift", "delf")
NO_LOCAL_FEATURES = "none"  # Extract: skip local features
MAX_ROTATIONS = 8
MAX_IMAGES_PER_REQUEST = 256


@dataclass(frozen=True)
class BatchingSettings:
    max_batch: int = 16
    max_wait_ms: float = 5.0


def create_session(
    model_path: Path, providers: Sequence[str], threads: int
) -> ort.InferenceSession:
    """One ONNX Runtime session; providers are tried in order, unavailable ones dropped."""
    available = set(ort.get_available_providers())
    wanted = [p for p in providers if p in available] or ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in wanted and importlib.util.find_spec("nvidia") is not None:
        # CUDA/cuDNN from pip wheels (onnxruntime-gpu[cuda,cudnn]) are not on the loader path.
        ort.preload_dlls()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads > 0:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model_path), sess_options=options, providers=wanted)
    log.info("onnx session", extra={"fields": {"providers": session.get_providers()}})
    return session


def preprocess_global(manifest: ModelManifest, image_rgb: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] RGB -> float32 [3, h, w], resized and normalised per the manifest."""
    height, width = manifest.input_size
    resized = cv2.resize(image_rgb, (width, height), interpolation=cv2.INTER_AREA)
    mean = np.asarray(manifest.mean, dtype=np.float32).reshape(1, 1, 3)
    std = np.asarray(manifest.std, dtype=np.float32).reshape(1, 1, 3)
    normalised = (resized.astype(np.float32) / 255.0 - mean) / std
    return np.ascontiguousarray(normalised.transpose(2, 0, 1))


class GlobalModel:
    """A global-embedding ONNX model and the preprocessing its manifest describes."""

    def __init__(self, manifest: ModelManifest, session: ort.InferenceSession) -> None:
        self.manifest = manifest
        self._session = session

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    def preprocess(self, image_rgb: np.ndarray) -> np.ndarray:
        """uint8 [H, W, 3] RGB -> float32 [3, h, w], resized and normalised per the manifest."""
        return preprocess_global(self.manifest, image_rgb)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 [n, 3, h, w] -> float32 [n, dims], L2-normalised.

        A multi-scale model also gets the batch resized to each of its extra scales (area
        interpolation of the preprocessed images, which are at the largest scale)."""
        feeds = {self.manifest.input_name: batch}
        for size in self.manifest.extra_scales:
            feeds[scale_input_name(self.manifest.input_name, size)] = resize_batch(batch, size)
        (output,) = self._session.run([self.manifest.output_name], feeds)
        return np.asarray(output, dtype=np.float32)


def resize_batch(batch: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float32 [n, 3, h, w] -> float32 [n, 3, size[0], size[1]], cv2.INTER_AREA per image."""
    height, width = size
    resized = [
        cv2.resize(image.transpose(1, 2, 0), (width, height), interpolation=cv2.INTER_AREA)
        for image in batch
    ]
    return np.ascontiguousarray(np.stack(resized).transpose(0, 3, 1, 2), dtype=np.float32)


def delf_from_session(manifest: ModelManifest, session: ort.InferenceSession) -> DelfExtractor:
    """A DELF extractor on a local model's ONNX session (outputs: features, attention)."""
    outputs = list(manifest.raw.get("output_names", ["features", "attention"]))

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        features, attention = session.run(outputs, {manifest.input_name: batch})
        return features, attention

    try:
        return load_delf(manifest.raw, run)
    except InvalidArgumentError as exc:
        raise FailedPreconditionError(exc.message) from exc


@dataclass(frozen=True)
class Embedded:
    vectors: np.ndarray  # float32 [n, dims], L2-normalised
    manifest: ModelManifest  # the version that embedded them


@dataclass(frozen=True)
class Extracted:
    """What an ingest needs of a batch of images, each decoded once (EmbedderCore.extract)."""

    vectors: np.ndarray  # float32 [n, dims], L2-normalised
    manifest: ModelManifest  # the global model version that embedded them
    features: list[LocalFeatures]  # one per image; empty when not asked for
    textures: list[np.ndarray] | None  # float32 [texture dims] per image; None: not asked
    texture_type: str  # "" when textures is None


class EmbedderCore:
    """Serves the default model and, with a loader, other versions on first use
    (at most `max_sessions` in memory, least recently used evicted first)."""

    def __init__(
        self,
        model: GlobalModel,
        limits: ImageLimits,
        batching: BatchingSettings,
        max_local_features: int,
        on_batch: Callable[[int, float], None] | None = None,
        loader: ModelLoader | None = None,
        max_sessions: int = 3,
        on_version_batch: BatchObserver | None = None,
        on_load: Callable[[str, int], None] | None = None,
        delf: DelfExtractor | None = None,
        max_delf_features: int = 0,
        on_expired: Callable[[int], None] | None = None,
        cpu_workers: int = 0,
    ) -> None:
        """on_expired(images): images not embedded because their deadline had passed.
        cpu_workers: threads for decoding, preprocessing and local/texture features (they
        release the GIL); 0 = one per core."""
        self.model = model
        self.delf = delf  # DELF-style local model (None: "delf" requests are refused)
        self._limits = limits
        self._max_local_features = max_local_features
        self._max_delf_features = max_delf_features or max_local_features

        def observe(version: str, rows: int, queued: float) -> None:
            if on_batch is not None:
                on_batch(rows, queued)
            if on_version_batch is not None:
                on_version_batch(version, rows, queued)

        self.models = ModelPool(
            model,
            loader,
            max_sessions,
            batching.max_batch,
            batching.max_wait_ms / 1000.0,
            on_batch=observe,
            on_load=on_load,
            on_expired=on_expired,
        )
        self._on_expired = on_expired
        self._workers = ThreadPoolExecutor(
            max_workers=cpu_workers or os.cpu_count() or 1, thread_name_prefix="embedder-cpu"
        )
        self._count_lock = threading.Lock()
        self.images_embedded = 0
        self.images_by_version: dict[str, int] = {}

    @property
    def model_version(self) -> str:
        return self.model.manifest.version

    @property
    def dims(self) -> int:
        return self.model.manifest.output_dims

    def decode_all(self, images: Sequence[bytes]) -> list[np.ndarray]:
        """Encoded images -> uint8 [H, W, 3] RGB each, decoded in parallel on the workers."""
        return self._per_image(images, lambda data: decode_rgb(data, self._limits))

    def _per_image(self, items: Sequence[ItemT], work: Callable[[ItemT], ResultT]) -> list[ResultT]:
        """work(item) for every item on the CPU workers (inline for one), in order; a
        failure is reported as "image <position>: ..." (the first failing position)."""
        _check_count(len(items))
        if len(items) == 1:
            return [_naming_position(0, work, items[0])]
        futures = [
            self._workers.submit(_naming_position, position, work, item)
            for position, item in enumerate(items)
        ]
        return [future.result() for future in futures]

    def embedded_by_version(self) -> dict[str, int]:
        """Images embedded per model version since start."""
        with self._count_lock:
            return dict(self.images_by_version)

    def embed_global(self, images: Sequence[bytes], timeout: float | None = None) -> np.ndarray:
        """Encoded images -> float32 [n, dims] of the default model, L2-normalised."""
        return self.embed_with(images, "", timeout).vectors

    def embed_with(
        self, images: Sequence[bytes], version: str, timeout: float | None = None
    ) -> Embedded:
        """Encoded images -> float32 [n, dims] of `version` ("" = the default), in request
        order. An unknown version raises NotFoundError. `timeout` (seconds) is the caller's
        deadline: past it the images are neither decoded nor run (DeadlineExceededError)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._check_deadline(deadline, len(images), "decoding")
        _check_count(len(images))
        with self.models.use(version) as loaded:
            model = loaded.model
            with loaded.batcher.expecting() as ticket:
                batch = np.stack(
                    self._per_image(
                        images, lambda data: model.preprocess(decode_rgb(data, self._limits))
                    )
                )
                self._check_deadline(deadline, len(images), "the model run")
                # An idle model runs the request on this thread (no hand-over).
                future = loaded.batcher.submit(batch, deadline, ticket, inline=True)
            embeddings = self._model_result(future, deadline, len(images))
            manifest = model.manifest
        self._count(manifest.version, len(images))
        return Embedded(embeddings, manifest)

    def extract(
        self,
        images: Sequence[bytes],
        version: str = "",
        feature_type: str = "rootsift",
        max_features: int = 0,
        texture: bool = False,
        timeout: float | None = None,
    ) -> Extracted:
        """Everything an ingest needs, each image decoded once: the global vectors of
        `version` ("" = the default), local features of `feature_type` ("" = "rootsift",
        "none" = skip) and, with `texture`, the LBP histograms; all in request order.

        Decode + preprocess run on the CPU workers; then the model run (the batcher's thread,
        ONNX Runtime's threads) overlaps with the local-feature and texture work of the
        images on the workers, so a batch keeps every core busy."""
        feature_type = feature_type or "rootsift"
        if feature_type != NO_LOCAL_FEATURES:
            self._check_local_request(feature_type, max_features, ())
        deadline = None if timeout is None else time.monotonic() + timeout
        self._check_deadline(deadline, len(images), "decoding")
        _check_count(len(images))
        with self.models.use(version) as loaded:
            model = loaded.model

            def decode(data: bytes) -> tuple[np.ndarray, np.ndarray]:
                rgb = decode_rgb(data, self._limits)
                return rgb, model.preprocess(rgb)

            with loaded.batcher.expecting() as ticket:
                decoded = self._per_image(images, decode)
                self._check_deadline(deadline, len(images), "the model run")
                future = loaded.batcher.submit(
                    np.stack([pre for _, pre in decoded]), deadline, ticket
                )
            local = self._local_extractor(feature_type, max_features, ())
            side = [self._workers.submit(_side_features, rgb, local, texture) for rgb, _ in decoded]
            del decoded
            results = [item.result() for item in side]
            embeddings = self._model_result(future, deadline, len(images))
            manifest = model.manifest
        self._count(manifest.version, len(images))
        return Extracted(
            vectors=embeddings,
            manifest=manifest,
            features=[features for features, _ in results if features is not None],
            textures=[histogram for _, histogram in results] if texture else None,  # type: ignore[misc]
            texture_type=TEXTURE_TYPE if texture else "",
        )

    def _model_result(
        self, future: Future[np.ndarray], deadline: float | None, n: int
    ) -> np.ndarray:
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        try:
            return future.result(timeout=remaining)
        except FutureTimeoutError as exc:
            raise DeadlineExceededError(
                f"embedding {n} images did not finish within the deadline"
            ) from exc

    def _count(self, version: str, images: int) -> None:
        with self._count_lock:
            self.images_embedded += images
            self.images_by_version[version] = self.images_by_version.get(version, 0) + images

    def _check_deadline(self, deadline: float | None, images: int, before: str) -> None:
        if deadline is not None and time.monotonic() >= deadline:
            if self._on_expired is not None:
                self._on_expired(images)
            raise DeadlineExceededError(
                f"the deadline passed before {before}; {images} images not embedded",
                retryable=False,
            )

    def extract_local(
        self,
        images: Sequence[bytes],
        feature_type: str,
        max_features: int,
        rotations: Sequence[float] = (),
    ) -> list[LocalFeatures]:
        """Local features per image. ``rotations`` (degrees) apply to "delf" only: features are
        extracted at each angle and returned as groups (RootSIFT is rotation invariant and
        ignores them)."""
        feature_type = feature_type or "rootsift"
        self._check_local_request(feature_type, max_features, rotations)
        local = self._local_extractor(feature_type, max_features, rotations)
        return self._per_image(images, lambda data: local(decode_rgb(data, self._limits)))

    def _check_local_request(
        self, feature_type: str, max_features: int, rotations: Sequence[float]
    ) -> None:
        if feature_type not in LOCAL_FEATURE_TYPES:
            raise InvalidArgumentError(
                f"local feature type {feature_type!r} is not supported; "
                f"use one of {', '.join(LOCAL_FEATURE_TYPES)}"
            )
        if max_features < 0:
            raise InvalidArgumentError(f"max_features must be >= 0, got {max_features}")
        if len(rotations) > MAX_ROTATIONS:
            raise InvalidArgumentError(f"{len(rotations)} rotations; at most {MAX_ROTATIONS}")
        if feature_type == "delf" and self.delf is None:
            raise FailedPreconditionError(
                "this embedder has no DELF local model: build it with `make models` and "
                "set VISEARCH_LOCAL_MODEL_DIR or VISEARCH_LOCAL_MODEL_VERSION"
            )

    def _local_extractor(
        self, feature_type: str, max_features: int, rotations: Sequence[float]
    ) -> Callable[[np.ndarray], LocalFeatures] | None:
        """uint8 [H, W, 3] RGB -> LocalFeatures of a checked request; None for "none"."""
        if feature_type == NO_LOCAL_FEATURES:
            return None
        if feature_type == "delf":
            delf = self.delf
            assert delf is not None  # _check_local_request
            delf_limit = max_features or self._max_delf_features
            return lambda image: delf.extract(image, delf_limit, rotations)
        limit = max_features or self._max_local_features
        return lambda image: extract_rootsift(image, max_features=limit)

    def extract_texture(self, images: Sequence[bytes]) -> tuple[list[np.ndarray], str]:
        """Encoded images -> (float32 [d] LBP histogram per image, texture type name)."""
        histograms = self._per_image(
            images, lambda data: extract_texture(decode_rgb(data, self._limits))
        )
        return histograms, TEXTURE_TYPE

    def close(self) -> None:
        self.models.close()
        self._workers.shutdown(wait=False, cancel_futures=True)


def _check_count(images: int) -> None:
    if not images:
        raise InvalidArgumentError("no images in the request")
    if images > MAX_IMAGES_PER_REQUEST:
        raise InvalidArgumentError(
            f"{images} images in one request; at most {MAX_IMAGES_PER_REQUEST}"
        )


def _naming_position(position: int, work: Callable[[ItemT], ResultT], item: ItemT) -> ResultT:
    try:
        return work(item)
    except (InvalidArgumentError, ResourceExhaustedError) as exc:
        raise type(exc)(f"image {position}: {exc.message}") from exc


def _side_features(
    image_rgb: np.ndarray,
    local: Callable[[np.ndarray], LocalFeatures] | None,
    texture: bool,
) -> tuple[LocalFeatures | None, np.ndarray | None]:
    """uint8 [H, W, 3] RGB -> (local features or None, float32 texture histogram or None)."""
    return (
        None if local is None else local(image_rgb),
        extract_texture(image_rgb) if texture else None,
    )
