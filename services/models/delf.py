"""DELF-style local features on the ImageNet MobileNetV2 (Noh et al., "Large-Scale Image
Retrieval with Attentive Deep Local Features", ICCV 2017), in plain torch.

One network evaluation per pyramid scale: image [1,3,H,W] → dense features [1,96,h,w] and an
attention score [1,1,h,w] per location (h = ceil(H/16), w = ceil(W/16)).

Layer: ``features[:14]`` of MobileNetV2 (:data:`~services.models.mobilenet_v2.STRIDE16_END`),
the output of the last stride-16 stage (3 residual blocks of 96 channels). Why this one:
- DELF takes ResNet-50 ``conv4_x``, its deepest stride-16 layer: deep enough to be
  discriminative and invariant to blur, JPEG and lighting, while a stride of 16 still localises
  a keypoint to a few pixels after RANSAC. The stride-32 stages (``features[14:]``) halve the
  keypoint density and their receptive field (~half an ukbench image) blurs object parts.
- Of the stride-16 candidates, block 13's output is the deepest. Its 576-channel "expanded"
  activation inside block 14 is a pointwise function (1x1 conv + ReLU6) of these 96 channels,
  so it carries no more information; the 96-d linear bottleneck is the compact form, cheap to
  PCA-reduce to 40-d and cheap to store before reduction.

Attention (DELF's "attention-based keypoint selection"): a two-layer 1x1-conv head
``softplus(conv(relu(conv(f))))`` on the frozen features, trained as DELF does: the attention
weights the L2-normalised features, their mean is classified by a linear layer, and the head
and classifier are trained with cross-entropy on image labels (UKBench groups 0-174 only, so
the evaluation groups 175-249 stay unseen). The backbone is frozen, so its feature maps are
computed once and the head trains on the cached maps in seconds. Without labelled data the
feature norm ``||f||`` is the attention (:class:`NormAttention`).

Descriptors (done by the embedder from the ONNX outputs, see ``services.embedder.delf``):
L2-normalise → subtract the mean → project to 40-d → L2-normalise. The projection is a
learned whitening (``services.models.delf_whitening``) rather than DELF's plain PCA, and is
stored in the model manifest.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from services.models.mobilenet_v2 import STRIDE16_CHANNELS, STRIDE16_END, MobileNetV2

log = logging.getLogger(__name__)

FEATURE_CHANNELS = STRIDE16_CHANNELS  # 96
STRIDE = 16
ATTENTION_HIDDEN = 128
PCA_DIMS = 40
SOFTPLUS_BETA = 1.0
L2_EPS = 1e-12


class AttentionHead(nn.Module):
    """DELF attention: [N,C,h,w] float32 → [N,1,h,w] float32, positive (softplus)."""

    def __init__(self, channels: int = FEATURE_CHANNELS, hidden: int = ATTENTION_HIDDEN) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, hidden, 1)
        self.conv2 = nn.Conv2d(hidden, 1, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[N,C,h,w] → [N,1,h,w] attention scores > 0."""
        hidden = torch.relu(self.conv1(features))
        return nn.functional.softplus(self.conv2(hidden), beta=SOFTPLUS_BETA)


class NormAttention(nn.Module):
    """Feature-norm attention (no training): [N,C,h,w] → [N,1,h,w] = ||f||₂ per location."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[N,C,h,w] → [N,1,h,w]."""
        return torch.linalg.vector_norm(features, dim=1, keepdim=True)


class DelfLocalModel(nn.Module):
    """Image → (dense stride-16 features, attention): the per-scale network exported to ONNX.

    Input ``images`` [1,3,H,W] float32, ImageNet-normalised RGB (any H, W ≥ 16).
    Outputs ``features`` [1,96,ceil(H/16),ceil(W/16)] float32 (raw, not normalised) and
    ``attention`` [1,1,ceil(H/16),ceil(W/16)] float32.
    """

    def __init__(self, backbone: MobileNetV2, attention: nn.Module) -> None:
        super().__init__()
        self.stages = backbone.features[:STRIDE16_END]
        self.attention = attention

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[N,3,H,W] → ([N,96,h,w], [N,1,h,w])."""
        features = self.stages(images)
        return features, self.attention(features)


# Training the attention head ---------------------------------------------------------------


@dataclass(frozen=True)
class AttentionTraining:
    """Settings of the attention training (seeded; a few seconds on 2 CPU cores).

    Attributes:
        input_size: (height, width) every training image is resized to.
        steps: optimiser steps of Adam on the cached feature maps.
        batch: feature maps per step.
        learning_rate: Adam learning rate.
        seed: seeds torch and the batch order.
    """

    input_size: tuple[int, int] = (240, 320)
    steps: int = 400
    batch: int = 64
    learning_rate: float = 3e-3
    seed: int = 0


def feature_maps(
    runner: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    images: Sequence[np.ndarray],
    input_size: tuple[int, int],
) -> np.ndarray:
    """RGB uint8 images ([H,W,3] each) → frozen features [N,96,h,w] float32 at ``input_size``.

    ``runner`` is a per-scale network run ([1,3,H,W] → (features, attention)); each image is
    also added flipped left-right (augmentation), so N = 2 * len(images).
    """
    height, width = input_size
    out = []
    for image in images:
        resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        for view in (resized, resized[:, ::-1]):
            out.append(runner(normalise_nhwc(view[None]))[0])
    return np.concatenate(out)


def normalise_nhwc(images: np.ndarray) -> np.ndarray:
    """[N,H,W,3] uint8 RGB → [N,3,H,W] float32 ImageNet-normalised."""
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32)
    x = (images.astype(np.float32) / 255.0 - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def train_attention(
    maps: torch.Tensor, labels: Sequence[int], settings: AttentionTraining
) -> tuple[AttentionHead, float]:
    """Train DELF's attention head on cached feature maps.

    Args:
        maps: [N,96,h,w] float32 frozen features.
        labels: N class ids in 0..K-1.
        settings: optimiser settings.

    Returns:
        (head in eval mode, training accuracy of the last 50 steps).
    """
    torch.manual_seed(settings.seed)
    target = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    classes = int(target.max()) + 1
    head = AttentionHead()
    classifier = nn.Linear(FEATURE_CHANNELS, classes)
    params = list(head.parameters()) + list(classifier.parameters())
    optimiser = torch.optim.Adam(params, lr=settings.learning_rate)
    unit = nn.functional.normalize(maps, dim=1, eps=L2_EPS)
    generator = torch.Generator().manual_seed(settings.seed)
    correct = seen = 0
    for step in range(settings.steps):
        idx = torch.randint(0, len(maps), (settings.batch,), generator=generator)
        attention = head(maps[idx])
        pooled = (attention * unit[idx]).mean(dim=(2, 3))
        logits = classifier(pooled)
        loss = nn.functional.cross_entropy(logits, target[idx])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step >= settings.steps - 50:
            correct += int((logits.argmax(1) == target[idx]).sum())
            seen += settings.batch
    return head.eval(), correct / max(seen, 1)


def training_digest(paths: Sequence[Path], labels: Sequence[int]) -> str:
    """sha256 over the training files' names, sizes and labels (identifies the data used)."""
    digest = hashlib.sha256()
    for path, label in zip(paths, labels, strict=True):
        digest.update(f"{path.name}:{path.stat().st_size}:{label}\n".encode())
    return digest.hexdigest()


def torch_runner(model: DelfLocalModel) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A per-scale runner on the torch model (same contract as the ONNX one in the embedder):
    [1,3,H,W] float32 → (features [1,96,h,w] float32, attention [1,1,h,w] float32)."""

    @torch.no_grad()
    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        features, attention = model.eval()(torch.from_numpy(batch))
        return features.numpy(), attention.numpy()

    return run
