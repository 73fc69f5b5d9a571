"""Backbone + trained head as one ONNX model, checked against torch, with its manifest.

The exported model keeps the served global model's contract: input ``images`` float32
[N,3,H,W] (same size, mean/std and preprocessing as the backbone's manifest), output
``embeddings`` float32 [N, dims], unit L2 norm per row.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from services.common.model_registry import MANIFEST_FILE, MODEL_FILE, ModelManifest, sha256_file
from services.models.export import (
    INPUT_NAME,
    OUTPUT_NAME,
    ExportError,
    export_onnx,
    verify_onnx,
)
from services.models.global_model import GEM_P, GlobalEmbeddingModel
from services.models.weights import WEIGHTS_SHA256, ensure_mobilenet_v2_weights
from services.training.head import ProjectionHead

PARITY_ATOL = 1e-4
TRAINED_NAME = "mobilenetv2-gem-triplet"


class EmbeddingWithHead(nn.Module):
    """Images → backbone (GeM, L2) → head (L2): [N,3,H,W] float32 → [N, dims] float32."""

    def __init__(self, backbone: GlobalEmbeddingModel, head: ProjectionHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[N,3,H,W] float32 (normalised) → [N, dims] float32, unit L2 norm per row."""
        return self.head(self.backbone(images))


def check_backbone(manifest: ModelManifest) -> None:
    """The backbone must be the one this code can rebuild in torch (MobileNetV2 + GeM)."""
    raw = manifest.raw
    pooling = raw.get("pooling") or {}
    if raw.get("weights_sha256") != WEIGHTS_SHA256 or pooling.get("type") != "gem":
        raise ExportError(
            f"backbone {manifest.version} is not the ImageNet MobileNetV2 + GeM this trainer "
            "rebuilds in torch; train on a model built by `python -m services.models.build`"
        )
    if float(pooling.get("p", GEM_P)) != GEM_P:
        raise ExportError(f"backbone {manifest.version} uses GeM p={pooling.get('p')}, not {GEM_P}")
    if (manifest.input_name, manifest.output_name) != (INPUT_NAME, OUTPUT_NAME):
        raise ExportError(f"backbone {manifest.version} has unexpected input/output names")


def build_torch_model(head: ProjectionHead, weights_cache: Path | None = None) -> EmbeddingWithHead:
    """The torch reference: ImageNet MobileNetV2 + GeM + the head, eval mode."""
    backbone = GlobalEmbeddingModel.from_weights(ensure_mobilenet_v2_weights(weights_cache))
    return EmbeddingWithHead(backbone, head).eval()


def check_parity(
    model: nn.Module, onnx_path: Path, input_size: tuple[int, int], dims: int
) -> float:
    """Max |ONNX − torch| on a random and a photo-like batch; raises above :data:`PARITY_ATOL`."""
    return verify_onnx(model, onnx_path, input_size, atol=PARITY_ATOL, dims=dims)


def export_trained_model(
    out_dir: Path,
    head: ProjectionHead,
    backbone: ModelManifest,
    version: str,
    extra: dict[str, Any],
    weights_cache: Path | None = None,
) -> tuple[dict[str, Any], float]:
    """Write ``out_dir/model.onnx`` and ``manifest.json`` (last); returns (manifest, parity).

    The manifest is the backbone's (preprocessing, input contract) with this model's version,
    digest and dims, plus ``extra`` (training data digest, metrics, parent version, ...).
    """
    check_backbone(backbone)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = build_torch_model(head, weights_cache)
    onnx_path = out_dir / MODEL_FILE
    tmp = out_dir / f".{MODEL_FILE}.{os.getpid()}.tmp"
    try:
        export_onnx(model, tmp, backbone.input_size)
        parity = check_parity(model, tmp, backbone.input_size, head.dims)
        (out_dir / MANIFEST_FILE).unlink(missing_ok=True)
        os.replace(tmp, onnx_path)
    finally:
        tmp.unlink(missing_ok=True)
    manifest = dict(backbone.raw)
    manifest.update(
        {
            "name": TRAINED_NAME,
            "version": version,
            "kind": backbone.kind,
            "sha256": sha256_file(onnx_path),
            "output_dims": head.dims,
            "head": {"type": "mlp" if head.hidden else "linear", "hidden": head.hidden},
            "created_by": "services.training",
            "export_parity_max_abs_diff": parity,
        }
    )
    manifest.update(extra)
    manifest_tmp = out_dir / f".{MANIFEST_FILE}.{os.getpid()}.tmp"
    manifest_tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(manifest_tmp, out_dir / MANIFEST_FILE)
    return manifest, parity
