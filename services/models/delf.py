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
``softplus(conv(relu(conv(f))))`` on the frozen features. DELF trains it through an image
classifier on landmark labels; here it is trained self-supervised, on synthetic warps of images
that ship with scikit-image / scikit-learn (``services.models.delf_synthetic``), to predict
whether a grid cell's descriptor finds its true counterpart in another view, distinctly (a
ratio test). That is what keypoint selection is for, it needs no dataset, and it learns to
avoid repeated structure. The backbone is frozen, so the head trains on cached cell features
in seconds. Without training the feature norm ``||f||`` is the attention (:class:`NormAttention`).

Descriptors (done by the embedder from the ONNX outputs, see ``services.embedder.delf``):
L2-normalise → subtract the mean → project to 40-d → L2-normalise. The projection is a
learned whitening (``services.models.delf_whitening``) rather than DELF's plain PCA, and is
stored in the model manifest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

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
class MatchabilityTraining:
    """Settings of the self-supervised attention training (seeded; seconds on 2 CPU cores).

    Attributes:
        steps: optimiser steps of Adam on the labelled cells.
        batch: cells per step.
        learning_rate: Adam learning rate.
        seed: seeds torch and the batch order.
    """

    steps: int = 1500
    batch: int = 512
    learning_rate: float = 3e-3
    seed: int = 0


def attention_logits(head: AttentionHead, features: torch.Tensor) -> torch.Tensor:
    """The head's score before the softplus ([N,C,h,w] → [N,1,h,w]); softplus is monotonic,
    so ranking cells by the logit or by the served attention is the same."""
    return head.conv2(torch.relu(head.conv1(features)))


def train_matchability(
    features: np.ndarray, labels: np.ndarray, settings: MatchabilityTraining
) -> tuple[AttentionHead, dict[str, float]]:
    """Train the attention head to predict whether a cell survives a change of view.

    Args:
        features: [n, 96] float32 raw (frozen) features of grid cells.
        labels: [n] float32 in {0, 1} (``delf_synthetic.cell_labels``).
        settings: optimiser settings.

    Returns:
        (head in eval mode, {"positive_rate", "auc"}: the share of matchable cells and the
        ROC AUC of the trained logits on all cells, a check that it learned something).
    """
    torch.manual_seed(settings.seed)
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))[:, :, None, None]
    y = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32))
    positives = float(y.sum())
    pos_weight = torch.tensor((len(y) - positives) / max(positives, 1.0))
    head = AttentionHead()
    optimiser = torch.optim.Adam(head.parameters(), lr=settings.learning_rate)
    generator = torch.Generator().manual_seed(settings.seed)
    for _ in range(settings.steps):
        idx = torch.randint(0, len(x), (settings.batch,), generator=generator)
        logits = attention_logits(head, x[idx]).reshape(-1)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y[idx], pos_weight=pos_weight)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    head.eval()
    with torch.no_grad():
        scores = attention_logits(head, x).reshape(-1).numpy()
    return head, {"positive_rate": positives / max(len(y), 1), "auc": roc_auc(scores, labels)}


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of [n] float scores for [n] {0, 1} labels (rank statistic; 0.5 = chance)."""
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.arange(1, len(scores) + 1)
    positive = labels > 0.5
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return 0.5
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def normalise_nhwc(images: np.ndarray) -> np.ndarray:
    """[N,H,W,3] uint8 RGB → [N,3,H,W] float32 ImageNet-normalised."""
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32)
    x = (images.astype(np.float32) / 255.0 - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def torch_runner(model: DelfLocalModel) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A per-scale runner on the torch model (same contract as the ONNX one in the embedder):
    [1,3,H,W] float32 → (features [1,96,h,w] float32, attention [1,1,h,w] float32)."""

    @torch.no_grad()
    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        features, attention = model.eval()(torch.from_numpy(batch))
        return features.numpy(), attention.numpy()

    return run
