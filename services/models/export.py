"""Export a :class:`GlobalEmbeddingModel` recipe to ONNX, verify it against torch, write its
manifest (:mod:`services.models.recipes` says which backbone, input size and mean/std)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from services.common.model_registry import scale_input_name, sha256_file
from services.models.global_model import (
    EMBEDDING_DIMS,
    GlobalEmbeddingModel,
    MultiScaleEmbedding,
)
from services.models.recipes import IMAGENET_MEAN, IMAGENET_STD, GlobalRecipe
from services.models.weights import ensure_weights

INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
OPSET = 17
VERIFY_ATOL = 1e-4


class ExportError(RuntimeError):
    """The exported ONNX model does not reproduce the torch model."""


def export_onnx(
    model: nn.Module,
    path: Path,
    input_size: tuple[int, int],
    opset: int = OPSET,
    extra_scales: tuple[tuple[int, int], ...] = (),
) -> None:
    """Write ``model`` as ONNX: input ``images`` [N,3,H,W] float32 → ``embeddings`` [N,D] float32.

    The batch axis is dynamic; H and W are fixed to ``input_size``. ``extra_scales``: ``model``
    is a :class:`MultiScaleEmbedding` that also takes the images at each of these sizes, as
    inputs named by :func:`scale_input_name`. Uses the TorchScript exporter (``dynamo=False``):
    it needs no onnxscript and gives a single self-contained file.
    """
    batch_axis = {0: "batch"}
    sizes = [input_size, *extra_scales]
    names = [INPUT_NAME] + [scale_input_name(INPUT_NAME, size) for size in extra_scales]
    axes = {name: batch_axis for name in [*names, OUTPUT_NAME]}
    export_torchscript(model, [(1, 3, h, w) for h, w in sizes], path, [OUTPUT_NAME], axes, names)


def export_torchscript(
    model: nn.Module,
    example_shapes: list[tuple[int, int, int, int]],
    path: Path,
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    input_names: list[str] | None = None,
    opset: int = OPSET,
) -> None:
    """``torch.onnx.export`` of ``model`` on zero float32 examples of ``example_shapes`` (one per
    input, default name ``images``), with the TorchScript exporter, constant folding and the
    named dynamic axes."""
    dummies = tuple(torch.zeros(*shape, dtype=torch.float32) for shape in example_shapes)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        # Shapes read in Python (e.g. TF "SAME" padding) become constants: H and W are fixed.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        torch.onnx.export(
            model.eval(),
            dummies,
            str(path),
            input_names=input_names or [INPUT_NAME],
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def normalise(
    images01: np.ndarray,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> np.ndarray:
    """[N,3,H,W] float RGB in [0,1] → [N,3,H,W] float32 (x - mean) / std per channel."""
    mean = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    return ((images01.astype(np.float32) - mean) / std).astype(np.float32)


def photo_like_batch(
    n: int,
    input_size: tuple[int, int],
    seed: int = 0,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> np.ndarray:
    """Synthetic photo-like images, normalised with ``mean``/``std``: [n,3,H,W] float32.

    Smooth random colour fields plus a few hard-edged rectangles, so activations have the
    sparsity and range of real images (pure Gaussian noise does not).
    """
    h, w = input_size
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((n, 3, 8, 8), dtype=np.float32))
    img = nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
    img = img.clamp(0.0, 1.0).numpy().copy()
    for i in range(n):
        for _ in range(6):
            y0, x0 = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
            y1, x1 = int(rng.integers(y0 + 4, h)), int(rng.integers(x0 + 4, w))
            img[i, :, y0:y1, x0:x1] = rng.random((3, 1, 1))
    img += rng.normal(0.0, 0.02, img.shape).astype(np.float32)
    return normalise(np.clip(img, 0.0, 1.0), mean, std)


def verify_onnx(
    model: nn.Module,
    path: Path,
    input_size: tuple[int, int],
    atol: float = VERIFY_ATOL,
    dims: int = EMBEDDING_DIMS,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    extra_scales: tuple[tuple[int, int], ...] = (),
) -> float:
    """Compare ONNX Runtime (CPU) with torch on random and photo-like batches (sizes 2 and 3).

    The photo-like batch is normalised with ``mean``/``std`` (the model's own preprocessing).
    A multi-scale model (``extra_scales``) gets each batch bilinearly resized to those sizes.

    Returns the max abs difference of the embeddings; raises :class:`ExportError` above ``atol``
    or when the outputs are not [N, dims] float32 with unit norm.
    """
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    h, w = input_size
    batches = [
        rng.standard_normal((2, 3, h, w), dtype=np.float32),
        photo_like_batch(3, input_size, seed=2, mean=mean, std=std),
    ]
    worst = 0.0
    for x in batches:
        inputs = [torch.from_numpy(x)]
        for size in extra_scales:
            inputs.append(nn.functional.interpolate(inputs[0], size=size, mode="bilinear"))
        feeds = {INPUT_NAME: x} | {
            scale_input_name(INPUT_NAME, size): scaled.numpy()
            for size, scaled in zip(extra_scales, inputs[1:], strict=True)
        }
        (got,) = session.run([OUTPUT_NAME], feeds)
        with torch.no_grad():
            want = model.eval()(*inputs).numpy()
        if got.shape != (x.shape[0], dims) or got.dtype != np.float32:
            raise ExportError(f"unexpected ONNX output {got.shape} {got.dtype}")
        if not np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4):
            raise ExportError("ONNX embeddings are not L2-normalised")
        worst = max(worst, float(np.abs(got - want).max()))
    if worst >= atol:
        raise ExportError(f"ONNX output differs from torch by {worst:.3g} (limit {atol:g})")
    return worst


def make_manifest(
    recipe: GlobalRecipe, version: str, model_sha256: str, input_size: tuple[int, int]
) -> dict[str, Any]:
    """Manifest describing ``model.onnx`` and the preprocessing the embedder must apply."""
    return {
        "name": recipe.name,
        "version": version,
        "kind": "global",
        "sha256": model_sha256,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input_size": [int(input_size[0]), int(input_size[1])],
        "mean": list(recipe.mean),
        "std": list(recipe.std),
        "output_dims": recipe.output_dims,
        "pooling": {"type": "gem", "p": recipe.gem_p},
        "preprocess": {
            "resize": "stretch",  # whole image resized to input_size, aspect ratio not kept
            "interpolation": "area",  # cv2.INTER_AREA (antialiased downscale)
            "color": "RGB",
            "scale": 1.0 / 255.0,
            "layout": "NCHW",
        },
        "extra_scales": [[int(h), int(w)] for h, w in recipe.extra_scales],
        "opset": OPSET,
        "architecture": recipe.architecture,
        "weights_sha256": recipe.weights.sha256,
        "parent_version": None,
        "created_by": "services.models.build",
    }


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def export_global_model(
    onnx_path: Path,
    manifest_path: Path,
    recipe: GlobalRecipe,
    version: str,
    input_size: tuple[int, int],
    weights_cache: Path | None = None,
) -> tuple[dict[str, Any], float]:
    """Build, export and verify the model of ``recipe``; write ``onnx_path`` then ``manifest_path``.

    The manifest is written last, so a manifest always describes a complete, verified model.
    Returns the manifest and the max abs difference ONNX vs torch seen in verification.
    """
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    model: nn.Module = GlobalEmbeddingModel.from_recipe(
        recipe, ensure_weights(recipe.weights, weights_cache)
    )
    if recipe.extra_scales:
        model = MultiScaleEmbedding(model).eval()
    tmp_onnx = onnx_path.with_name(f".{onnx_path.name}.{os.getpid()}.tmp")
    try:
        export_onnx(model, tmp_onnx, input_size, extra_scales=recipe.extra_scales)
        max_diff = verify_onnx(
            model,
            tmp_onnx,
            input_size,
            dims=recipe.output_dims,
            mean=recipe.mean,
            std=recipe.std,
            extra_scales=recipe.extra_scales,
        )
        manifest_path.unlink(missing_ok=True)  # never leave a manifest describing another file
        os.replace(tmp_onnx, onnx_path)
    finally:
        tmp_onnx.unlink(missing_ok=True)
    manifest = make_manifest(recipe, version, sha256_file(onnx_path), input_size)
    _write_atomic(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest, max_diff
