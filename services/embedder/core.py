"""Embedder core: decode, preprocess, ONNX Runtime. No grpc here."""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from services.common.errors import DeadlineExceededError, InvalidArgumentError
from services.common.imaging import ImageLimits, decode_rgb
from services.common.local_features import LocalFeatures
from services.common.model_registry import ModelManifest
from services.embedder.batching import MicroBatcher
from services.embedder.rootsift import extract_rootsift

log = logging.getLogger(__name__)

LOCAL_FEATURE_TYPES = ("rootsift",)
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


class GlobalModel:
    """A global-embedding ONNX model and the preprocessing its manifest describes."""

    def __init__(self, manifest: ModelManifest, session: ort.InferenceSession) -> None:
        self.manifest = manifest
        self._session = session
        self._mean = np.asarray(manifest.mean, dtype=np.float32).reshape(1, 1, 3)
        self._std = np.asarray(manifest.std, dtype=np.float32).reshape(1, 1, 3)

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    def preprocess(self, image_rgb: np.ndarray) -> np.ndarray:
        """uint8 [H, W, 3] RGB -> float32 [3, h, w], resized and normalised per the manifest."""
        height, width = self.manifest.input_size
        resized = cv2.resize(image_rgb, (width, height), interpolation=cv2.INTER_AREA)
        normalised = (resized.astype(np.float32) / 255.0 - self._mean) / self._std
        return np.ascontiguousarray(normalised.transpose(2, 0, 1))

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 [n, 3, h, w] -> float32 [n, dims], L2-normalised."""
        (output,) = self._session.run(
            [self.manifest.output_name], {self.manifest.input_name: batch}
        )
        return np.asarray(output, dtype=np.float32)


class EmbedderCore:
    def __init__(
        self,
        model: GlobalModel,
        limits: ImageLimits,
        batching: BatchingSettings,
        max_local_features: int,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.model = model
        self._limits = limits
        self._max_local_features = max_local_features
        self._batcher = MicroBatcher(
            model.run,
            batching.max_batch,
            batching.max_wait_ms / 1000.0,
            on_batch=on_batch,
        )
        self._count_lock = threading.Lock()
        self.images_embedded = 0

    @property
    def model_version(self) -> str:
        return self.model.manifest.version

    @property
    def dims(self) -> int:
        return self.model.manifest.output_dims

    def decode_all(self, images: Sequence[bytes]) -> list[np.ndarray]:
        if not images:
            raise InvalidArgumentError("no images in the request")
        if len(images) > MAX_IMAGES_PER_REQUEST:
            raise InvalidArgumentError(
                f"{len(images)} images in one request; at most {MAX_IMAGES_PER_REQUEST}"
            )
        decoded = []
        for position, data in enumerate(images):
            try:
                decoded.append(decode_rgb(data, self._limits))
            except InvalidArgumentError as exc:
                raise type(exc)(f"image {position}: {exc.message}") from exc
        return decoded

    def embed_global(self, images: Sequence[bytes], timeout: float | None = None) -> np.ndarray:
        """Encoded images -> float32 [n, dims], L2-normalised, in request order."""
        decoded = self.decode_all(images)
        batch = np.stack([self.model.preprocess(image) for image in decoded])
        try:
            embeddings = self._batcher.run(batch, timeout=timeout)
        except FutureTimeoutError as exc:
            raise DeadlineExceededError(
                f"embedding {len(decoded)} images did not finish within the deadline"
            ) from exc
        with self._count_lock:
            self.images_embedded += len(decoded)
        return embeddings

    def extract_local(
        self, images: Sequence[bytes], feature_type: str, max_features: int
    ) -> list[LocalFeatures]:
        feature_type = feature_type or "rootsift"
        if feature_type not in LOCAL_FEATURE_TYPES:
            raise InvalidArgumentError(
                f"local feature type {feature_type!r} is not supported; "
                f"use one of {', '.join(LOCAL_FEATURE_TYPES)}"
            )
        if max_features < 0:
            raise InvalidArgumentError(f"max_features must be >= 0, got {max_features}")
        limit = max_features or self._max_local_features
        return [extract_rootsift(image, max_features=limit) for image in self.decode_all(images)]

    def close(self) -> None:
        self._batcher.close()
