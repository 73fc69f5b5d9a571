"""Global image embedding: backbone features → GeM pooling → L2 normalisation.

Backbones (:data:`ARCHITECTURES`): ImageNet MobileNetV2 and EfficientNet-Lite2, both with
``forward_features`` ([N,3,H,W] → [N,1280,h,w]), the split API ``forward_trunk`` /
``forward_tail`` and ``num_blocks``. Which backbone, input size and normalisation a served
model uses is its recipe (:mod:`services.models.recipes`).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn

from services.models.efficientnet_lite import load_efficientnet_lite2
from services.models.mobilenet_v2 import LAST_CHANNELS, load_mobilenet_v2
from services.models.recipes import (
    ARCH_EFFICIENTNET_LITE2,
    ARCH_MOBILENET_V2,
    GEM_P,
    GlobalRecipe,
)

GEM_EPS = 1e-6
EMBEDDING_DIMS = LAST_CHANNELS  # 1280, both backbones

# architecture → loader(weights path or None for random init) → backbone in eval mode.
ARCHITECTURES: dict[str, Callable[[str | os.PathLike[str] | None], nn.Module]] = {
    ARCH_MOBILENET_V2: load_mobilenet_v2,
    ARCH_EFFICIENTNET_LITE2: load_efficientnet_lite2,
}

__all__ = [
    "ARCHITECTURES",
    "EMBEDDING_DIMS",
    "GEM_P",
    "GeM",
    "GlobalEmbeddingModel",
    "MultiScaleEmbedding",
]


def load_backbone(architecture: str, weights_path: str | os.PathLike[str] | None) -> nn.Module:
    """The backbone of ``architecture`` in eval mode, weights loaded strictly (random if None).

    Raises:
        KeyError: unknown architecture.
    """
    try:
        loader = ARCHITECTURES[architecture]
    except KeyError as exc:
        raise KeyError(f"unknown architecture {architecture!r}: {sorted(ARCHITECTURES)}") from exc
    return loader(weights_path)


class GeM(nn.Module):
    """Generalised-mean pooling with a fixed (not learned) exponent ``p``.

    ``(mean_{h,w} max(x, eps)^p)^(1/p)``: p=1 is average pooling, p→∞ is max pooling.
    """

    def __init__(self, p: float = GEM_P, eps: float = GEM_EPS) -> None:
        super().__init__()
        self.p = float(p)
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N,C,h,w] float32 → [N,C] float32."""
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)

    def extra_repr(self) -> str:
        """Shown by ``print(module)``."""
        return f"p={self.p}, eps={self.eps}"


class GlobalEmbeddingModel(nn.Module):
    """Image → L2-normalised global descriptor.

    Input: [N,3,H,W] float32, RGB scaled to [0,1] then normalised with the recipe's mean/std
    (the embedder does resizing and normalisation, per the model manifest).
    Output: [N,1280] float32, each row of unit L2 norm (cosine similarity = dot product).
    ``backbone`` is any module with ``forward_features`` returning [N,1280,h,w] float32.
    """

    def __init__(self, backbone: nn.Module, p: float = GEM_P, eps: float = GEM_EPS) -> None:
        super().__init__()
        self.backbone = backbone
        self.pool = GeM(p=p, eps=eps)

    @classmethod
    def from_weights(
        cls,
        weights_path: str | os.PathLike[str] | None,
        architecture: str = ARCH_MOBILENET_V2,
        p: float = GEM_P,
    ) -> GlobalEmbeddingModel:
        """Build in eval mode from the ImageNet weights of ``architecture`` (random if None)."""
        return cls(load_backbone(architecture, weights_path), p=p).eval()

    @classmethod
    def from_recipe(
        cls, recipe: GlobalRecipe, weights_path: str | os.PathLike[str] | None
    ) -> GlobalEmbeddingModel:
        """Build the torch model of ``recipe`` in eval mode (weights: its verified file)."""
        return cls.from_weights(weights_path, recipe.architecture, recipe.gem_p)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[N,3,H,W] float32 (normalised) → [N,1280] float32, unit L2 norm per row."""
        fmap = self.backbone.forward_features(images)
        return nn.functional.normalize(self.pool(fmap), p=2.0, dim=1, eps=1e-12)


class MultiScaleEmbedding(nn.Module):
    """A global model applied to the same images at several sizes: the L2-normalised sum of
    its (L2-normalised) embeddings, so every scale weighs the same."""

    def __init__(self, model: GlobalEmbeddingModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, *images: torch.Tensor) -> torch.Tensor:
        """images: one float32 [N,3,H_i,W_i] per scale, the same N images → float32 [N,D]."""
        total = self.model(images[0])
        for scaled in images[1:]:
            total = total + self.model(scaled)
        return nn.functional.normalize(total, p=2.0, dim=1, eps=1e-12)
