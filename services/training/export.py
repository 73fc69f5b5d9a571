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
from services.models.export import export_onnx, verify_onnx
from services.models.global_model import GlobalEmbeddingModel
from services.training.head import ProjectionHead
from services.training.torch_backbone import check_backbone, torch_global_model

PARITY_ATOL = 1e-4


class EmbeddingWithHead(nn.Module):
    """Images → backbone (GeM, L2) → head (L2): [N,3,H,W] float32 → [N, dims] float32."""

    def __init__(self, backbone: GlobalEmbeddingModel, head: ProjectionHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[N,3,H,W] float32 (normalised) → [N, dims] float32, unit L2 norm per row."""
        return self.head(self.backbone(images))


def build_torch_model(
    head: ProjectionHead,
    backbone: ModelManifest,
    tuned: nn.Module | None = None,
    weights_cache: Path | None = None,
) -> EmbeddingWithHead:
    """The torch reference: the backbone (fine-tuned when ``tuned`` is given) + the head."""
    model = tuned if tuned is not None else torch_global_model(backbone, weights_cache)[0]
    return EmbeddingWithHead(model, head).eval()  # type: ignore[arg-type]


def check_parity(model: nn.Module, onnx_path: Path, backbone: ModelManifest, dims: int) -> float:
    """Max |ONNX − torch| on a random and a photo-like batch; raises above :data:`PARITY_ATOL`."""
    return verify_onnx(
        model, onnx_path, backbone.input_size, atol=PARITY_ATOL, dims=dims,
        mean=backbone.mean, std=backbone.std,
    )  # fmt: skip


def export_trained_model(
    out_dir: Path,
    head: ProjectionHead,
    backbone: ModelManifest,
    version: str,
    extra: dict[str, Any],
    weights_cache: Path | None = None,
    tuned: nn.Module | None = None,
) -> tuple[dict[str, Any], float]:
    """Write ``out_dir/model.onnx`` and ``manifest.json`` (last); returns (manifest, parity).

    ``tuned``: the fine-tuned torch global model (default: the backbone's ImageNet weights).

    The manifest is the backbone's (preprocessing, input contract) with this model's version,
    digest and dims, plus ``extra`` (training data digest, metrics, parent version, ...).
    """
    check_backbone(backbone)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = build_torch_model(head, backbone, tuned, weights_cache)
    onnx_path = out_dir / MODEL_FILE
    tmp = out_dir / f".{MODEL_FILE}.{os.getpid()}.tmp"
    try:
        export_onnx(model, tmp, backbone.input_size)
        parity = check_parity(model, tmp, backbone, head.dims)
        (out_dir / MANIFEST_FILE).unlink(missing_ok=True)
        os.replace(tmp, onnx_path)
    finally:
        tmp.unlink(missing_ok=True)
    manifest = dict(backbone.raw)
    manifest.update(
        {
            "name": f"{check_backbone(backbone).name}-trained",
            "version": version,
            "kind": backbone.kind,
            "sha256": sha256_file(onnx_path),
            "output_dims": head.dims,
            "head": {"type": "mlp" if head.hidden else "linear", "hidden": head.hidden},
            "fine_tuned_backbone": tuned is not None,
            "created_by": "services.training",
            "export_parity_max_abs_diff": parity,
        }
    )
    manifest.update(extra)
    manifest_tmp = out_dir / f".{MANIFEST_FILE}.{os.getpid()}.tmp"
    manifest_tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(manifest_tmp, out_dir / MANIFEST_FILE)
    return manifest, parity
