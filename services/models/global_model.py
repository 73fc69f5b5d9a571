"""Global image embedding: MobileNetV2 features → GeM pooling → L2 normalisation."""

from __future__ import annotations

import os

import torch
from torch import nn

from services.models.mobilenet_v2 import LAST_CHANNELS, MobileNetV2, load_mobilenet_v2

GEM_P = 3.0
GEM_EPS = 1e-6
EMBEDDING_DIMS = LAST_CHANNELS  # 1280


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

    Input: [N,3,H,W] float32, RGB scaled to [0,1] then normalised with the ImageNet mean/std
    (the embedder does resizing and normalisation, per the model manifest).
    Output: [N,1280] float32, each row of unit L2 norm (cosine similarity = dot product).
    """

    def __init__(self, backbone: MobileNetV2, p: float = GEM_P, eps: float = GEM_EPS) -> None:
        super().__init__()
        self.backbone = backbone
        self.pool = GeM(p=p, eps=eps)

    @classmethod
    def from_weights(cls, weights_path: str | os.PathLike[str] | None) -> GlobalEmbeddingModel:
        """Build in eval mode from torchvision MobileNetV2 ImageNet weights (random if None)."""
        return cls(load_mobilenet_v2(weights_path)).eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[N,3,H,W] float32 (normalised) → [N,1280] float32, unit L2 norm per row."""
        fmap = self.backbone.forward_features(images)
        return nn.functional.normalize(self.pool(fmap), p=2.0, dim=1, eps=1e-12)
