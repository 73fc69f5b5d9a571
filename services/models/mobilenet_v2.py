"""MobileNetV2 in plain torch, state-dict compatible with ``torchvision.models.mobilenet_v2``.

Module names mirror torchvision exactly (``features.0.0.weight``, ``features.1.conv.0.0.weight``,
..., ``features.18.0.weight``, ``classifier.1.weight``) so torchvision's ImageNet ``.pth`` loads
with ``strict=True``. torchvision itself is not needed.

Feature stages (input [N,3,H,W] float32, ImageNet-normalised):

====================  ==========  ======
``features[:k]``      channels    stride
====================  ==========  ======
``k=2``               16          2
``k=4``               24          4
``k=7``               32          8
``k=14``              96          16   (:data:`STRIDE16_END`, used for local features)
``k=17``              320         32
``k=19`` (all)        1280        32
====================  ==========  ======

Split API (for training the last blocks): the 17 inverted-residual blocks are
``features[1:18]`` (:data:`NUM_BLOCKS`); ``forward_trunk(x, s)`` runs the stem ``features[0]``
and the first ``s`` blocks, ``forward_tail(fmap, s)`` the remaining blocks and the final 1x1
conv ``features[18]``, so ``forward_features(x) == forward_tail(forward_trunk(x, s), s)``
for 0 <= s <= 17.
"""

from __future__ import annotations

import os

import torch
from torch import nn

# (expand ratio t, output channels c, repeats n, first stride s), as in the paper / torchvision.
INVERTED_RESIDUAL_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
LAST_CHANNELS = 1280
STRIDE16_END = 14  # features[:14] -> [N, 96, H/16, W/16]
STRIDE16_CHANNELS = 96
NUM_BLOCKS = 17  # inverted-residual blocks: features[1:18] (features[0] stem, [18] final conv)


class ConvBNReLU6(nn.Sequential):
    """Conv2d (no bias) → BatchNorm2d → ReLU6; keys ``0.weight``, ``1.*`` like torchvision."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, groups: int = 1
    ) -> None:
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand] → 3x3 depthwise → 1x1 linear projection (+ residual)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = int(round(in_ch * expand_ratio))
        self.use_res_connect = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(in_ch, hidden, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N,C_in,H,W] float32 → [N,C_out,H/s,W/s] float32."""
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Round ``v`` to a multiple of ``divisor`` without going below 90% of it (torchvision)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0) with torchvision's module layout.

    ``features`` is an ``nn.Sequential`` of 19 stages; ``classifier`` is Dropout → Linear(1280,
    ``num_classes``). Only ``forward`` uses the classifier.
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        in_ch = _make_divisible(32.0)
        last_ch = _make_divisible(float(LAST_CHANNELS))
        layers: list[nn.Module] = [ConvBNReLU6(3, in_ch, stride=2)]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            out_ch = _make_divisible(float(c))
            for i in range(n):
                layers.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t))
                in_ch = out_ch
        layers.append(ConvBNReLU6(in_ch, last_ch, kernel_size=1))
        self.features = nn.Sequential(*layers)
        self.num_blocks = len(layers) - 2  # NUM_BLOCKS
        self.out_channels = last_ch
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(last_ch, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        """torchvision's initialisation (only matters when no weights are loaded)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """Run ``features[:upto]`` (all 19 stages when ``upto`` is None).

        Args:
            x: [N,3,H,W] float32, ImageNet mean/std normalised RGB.
            upto: number of stages to run; :data:`STRIDE16_END` (14) gives the stride-16 map.

        Returns:
            [N,1280,ceil(H/32),ceil(W/32)] float32 when ``upto`` is None,
            [N,96,ceil(H/16),ceil(W/16)] float32 when ``upto == 14``.
        """
        stages = self.features if upto is None else self.features[:upto]
        return stages(x)

    def _check_split(self, split: int) -> None:
        """Raise ValueError unless 0 <= ``split`` <= ``num_blocks``."""
        if not 0 <= split <= self.num_blocks:
            raise ValueError(f"split must be in [0, {self.num_blocks}], got {split}")

    def forward_trunk(self, x: torch.Tensor, split: int) -> torch.Tensor:
        """Stem and the first ``split`` blocks (``features[:1 + split]``).

        [N,3,H,W] float32 (normalised) → [N,C_split,h,w] float32.
        """
        self._check_split(split)
        return self.features[: 1 + split](x)

    def forward_tail(self, fmap: torch.Tensor, split: int) -> torch.Tensor:
        """Blocks ``split:`` and the final conv (``features[1 + split:]``).

        [N,C_split,h,w] float32 → [N,1280,ceil(H/32),ceil(W/32)] float32.
        """
        self._check_split(split)
        return self.features[1 + split :](fmap)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet classifier: [N,3,H,W] float32 → logits [N,num_classes] float32."""
        x = self.forward_features(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


def load_mobilenet_v2(weights_path: str | os.PathLike[str] | None = None) -> MobileNetV2:
    """Build a MobileNetV2 in eval mode, loading a torchvision state dict with ``strict=True``.

    Args:
        weights_path: path of ``mobilenet_v2-b0353104.pth``; random init when None.
    """
    model = MobileNetV2()
    if weights_path is not None:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model.eval()
