"""Check that the embedder serves a model version before a collection is bound to it."""

from __future__ import annotations

import cv2
import numpy as np

from services.common.errors import FailedPreconditionError
from services.gateway.ports import EmbedderPort


def probe_image() -> bytes:
    """A small PNG to check that the embedder serves a version before anything changes."""
    gradient = np.linspace(0, 255, 64 * 64 * 3, dtype=np.float32).reshape(64, 64, 3)
    ok, encoded = cv2.imencode(".png", gradient.astype(np.uint8))
    assert ok
    return encoded.tobytes()


def check_embedder_serves(embedder: EmbedderPort, version: str, timeout_s: float) -> None:
    """Raise unless the embedder embeds with ``version`` (NOT_FOUND from it when unknown)."""
    probe = embedder.embed_global([probe_image()], timeout_s, version)
    if probe.model_version != version:
        raise FailedPreconditionError(
            f"the embedder answered with {probe.model_version!r} when asked for {version!r}"
        )
