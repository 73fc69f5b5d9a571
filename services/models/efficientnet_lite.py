"""EfficientNet-Lite2 in plain torch (no torchvision), loading the ImageNet weights strictly.

Architecture after ``efficientnet_lite_pytorch==0.1.0`` (ML Illustrated, Apache-2.0, itself a
light modification of lukemelas/EfficientNet-PyTorch), which follows the official TensorFlow
``efficientnet/lite/efficientnet_lite_builder.py``: EfficientNet-B0's block table scaled by
width 1.1 and depth 1.2, ReLU6 activations, no squeeze-and-excitation, stem (32 channels) and
head (1280 channels) not scaled, the first and last block groups not repeated, BatchNorm
eps 1e-3. Convolutions use TensorFlow "SAME" padding: identical to symmetric padding for
stride 1, computed from the input size for stride 2 (at an even size the extra row/column is
padded after, none before). The reference package fixes that padding at construction for
260 px; here it follows the actual input, which is what the TF model does at any size, so the
model runs correctly at any resolution (at 260 px the two agree exactly).

Module names are ours (``stem``, ``blocks.i.{expand,depthwise,project}``, ``conv_head``,
``classifier``); :func:`remap_state_dict` maps the reference key names
(``_conv_stem.weight``, ``_blocks.3._expand_conv.weight``, ``_bn1.*``, ``_fc.*``, ...) onto
them, and the weights load with ``strict=True``. Stochastic depth (drop-connect) of the
reference is not implemented: it only acts in training mode.

Feature stages (input [N,3,H,W] float32 normalised as (x - 0.5) / 0.5 with x RGB in [0,1]):

=====================  ==========  ======
after                  channels    stride
=====================  ==========  ======
``stem``               32          2
``blocks[:1]``         16          2
``blocks[:4]``         24          4
``blocks[:7]``         48          8
``blocks[:11]``        88          16
``blocks[:15]``        120         16
``blocks[:20]``        208         32
``blocks[:21]`` (all)  352         32
``conv_head``          1280        32
=====================  ==========  ======
"""

from __future__ import annotations

import math
import os
import re

import torch
from torch import nn

# EfficientNet-Lite base block table (lite0): (repeats, kernel, first stride, expand ratio,
# input channels, output channels), from efficientnet_lite_builder.py.
LITE_BLOCK_ARGS: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
LITE2_WIDTH = 1.1
LITE2_DEPTH = 1.2
STEM_CHANNELS = 32  # not scaled in the Lite variants
LAST_CHANNELS = 1280  # conv_head output, not scaled in the Lite variants
BN_EPS = 1e-3
DEPTH_DIVISOR = 8
NUM_BLOCKS = 21  # MBConv blocks of Lite2: 1 + 3 + 3 + 4 + 4 + 5 + 1
NUM_CLASSES = 1000
DROPOUT = 0.3  # Lite2's classifier dropout (only in training mode)


def round_filters(filters: int, width: float, divisor: int = DEPTH_DIVISOR) -> int:
    """Scale a channel count by ``width``, rounded to a multiple of ``divisor`` (>= 90%)."""
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth: float) -> int:
    """Scale a block count by ``depth``, rounded up."""
    return int(math.ceil(depth * repeats))


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) of one axis of length ``size``."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Conv2d (no bias) with TensorFlow "SAME" padding for any input size.

    Stride 1 with an odd kernel is ordinary symmetric padding; otherwise the padding is
    computed from the input's height and width at each call (constants in an ONNX export,
    whose height and width are fixed).
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, groups: int = 1
    ) -> None:
        symmetric = stride == 1 and kernel_size % 2 == 1
        padding = (kernel_size - 1) // 2 if symmetric else 0
        super().__init__(in_ch, out_ch, kernel_size, stride, padding, groups=groups, bias=False)
        self._dynamic = not symmetric

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N,C_in,H,W] float32 → [N,C_out,ceil(H/s),ceil(W/s)] float32."""
        if self._dynamic:
            k, s = self.kernel_size[0], self.stride[0]
            top, bottom = tf_same_padding(int(x.shape[-2]), k, s)
            left, right = tf_same_padding(int(x.shape[-1]), k, s)
            x = nn.functional.pad(x, (left, right, top, bottom))
        return super().forward(x)


class ConvBN(nn.Sequential):
    """SameConv2d → BatchNorm2d(eps 1e-3) [→ ReLU6]; keys ``0.weight``, ``1.*``."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
    ) -> None:
        layers: list[nn.Module] = [
            SameConv2d(in_ch, out_ch, kernel_size, stride, groups),
            nn.BatchNorm2d(out_ch, eps=BN_EPS),
        ]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)


class MBConv(nn.Module):
    """Mobile inverted bottleneck: [1x1 expand] → kxk depthwise → 1x1 linear projection
    (+ identity when stride 1 and channels unchanged). No squeeze-and-excitation (Lite)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_ch * expand
        self.expand = ConvBN(in_ch, hidden) if expand != 1 else None
        self.depthwise = ConvBN(hidden, hidden, kernel, stride, groups=hidden)
        self.project = ConvBN(hidden, out_ch, act=False)
        self.use_residual = stride == 1 and in_ch == out_ch
        self.out_channels = out_ch
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N,C_in,H,W] float32 → [N,C_out,ceil(H/s),ceil(W/s)] float32."""
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return x + y if self.use_residual else y


def block_specs(
    width: float = LITE2_WIDTH, depth: float = LITE2_DEPTH
) -> list[tuple[int, int, int, int, int]]:
    """Per-block (in channels, out channels, kernel, stride, expand) of a Lite variant."""
    specs: list[tuple[int, int, int, int, int]] = []
    last = len(LITE_BLOCK_ARGS) - 1
    for group, (repeats, kernel, stride, expand, in_ch, out_ch) in enumerate(LITE_BLOCK_ARGS):
        fixed = group in (0, last)  # Lite: first and last groups keep their repeats
        n = repeats if fixed else round_repeats(repeats, depth)
        cin = STEM_CHANNELS if group == 0 else round_filters(in_ch, width)
        cout = round_filters(out_ch, width)
        for i in range(n):
            specs.append((cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand))
    return specs


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite (Lite2 by default): ``stem`` → ``blocks`` (ModuleList of
    :class:`MBConv`) → ``conv_head`` (1x1 to 1280, BN, ReLU6) → ``classifier``.

    Split API (for training the last blocks): ``forward_trunk(x, s)`` runs the stem and
    ``blocks[:s]``, ``forward_tail(fmap, s)`` runs ``blocks[s:]`` and ``conv_head``;
    ``forward_features(x) == forward_tail(forward_trunk(x, s), s)`` for 0 <= s <= ``num_blocks``.
    """

    def __init__(
        self,
        width: float = LITE2_WIDTH,
        depth: float = LITE2_DEPTH,
        num_classes: int = NUM_CLASSES,
        dropout: float = DROPOUT,
    ) -> None:
        super().__init__()
        self.stem = ConvBN(3, STEM_CHANNELS, kernel_size=3, stride=2)
        specs = block_specs(width, depth)
        self.blocks = nn.ModuleList(MBConv(*spec) for spec in specs)
        self.num_blocks = len(specs)
        self.conv_head = ConvBN(specs[-1][1], LAST_CHANNELS)
        self.out_channels = LAST_CHANNELS
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(LAST_CHANNELS, num_classes)
        )

    def _check_split(self, split: int) -> None:
        """Raise ValueError unless 0 <= ``split`` <= ``num_blocks``."""
        if not 0 <= split <= self.num_blocks:
            raise ValueError(f"split must be in [0, {self.num_blocks}], got {split}")

    def forward_trunk(self, x: torch.Tensor, split: int) -> torch.Tensor:
        """Stem and ``blocks[:split]``: [N,3,H,W] float32 → [N,C_split,h,w] float32."""
        self._check_split(split)
        x = self.stem(x)
        for block in self.blocks[:split]:
            x = block(x)
        return x

    def forward_tail(self, fmap: torch.Tensor, split: int) -> torch.Tensor:
        """``blocks[split:]`` and ``conv_head``.

        [N,C_split,h,w] float32 → [N,1280,ceil(H/32),ceil(W/32)] float32.
        """
        self._check_split(split)
        x = fmap
        for block in self.blocks[split:]:
            x = block(x)
        return self.conv_head(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[N,3,H,W] float32 (normalised) → [N,1280,ceil(H/32),ceil(W/32)] float32, >= 0."""
        return self.forward_tail(self.forward_trunk(x, self.num_blocks), self.num_blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet classifier: [N,3,H,W] float32 → logits [N,num_classes] float32."""
        x = self.forward_features(x).mean(dim=(2, 3))
        return self.classifier(x)


# Reference key (efficientnet_lite_pytorch) → our key; applied in order, first match wins.
_KEY_RULES: tuple[tuple[str, str], ...] = (
    (r"^_conv_stem\.(weight)$", r"stem.0.\1"),
    (r"^_bn0\.(.+)$", r"stem.1.\1"),
    (r"^_blocks\.(\d+)\._expand_conv\.(weight)$", r"blocks.\1.expand.0.\2"),
    (r"^_blocks\.(\d+)\._bn0\.(.+)$", r"blocks.\1.expand.1.\2"),
    (r"^_blocks\.(\d+)\._depthwise_conv\.(weight)$", r"blocks.\1.depthwise.0.\2"),
    (r"^_blocks\.(\d+)\._bn1\.(.+)$", r"blocks.\1.depthwise.1.\2"),
    (r"^_blocks\.(\d+)\._project_conv\.(weight)$", r"blocks.\1.project.0.\2"),
    (r"^_blocks\.(\d+)\._bn2\.(.+)$", r"blocks.\1.project.1.\2"),
    (r"^_conv_head\.(weight)$", r"conv_head.0.\1"),
    (r"^_bn1\.(.+)$", r"conv_head.1.\1"),
    (r"^_fc\.(weight|bias)$", r"classifier.1.\1"),
)


def remap_key(key: str) -> str:
    """Our module key for a reference ``efficientnet_lite_pytorch`` state-dict key.

    Raises:
        KeyError: the key matches no rule (an unexpected checkpoint).
    """
    for pattern, replacement in _KEY_RULES:
        new, n = re.subn(pattern, replacement, key)
        if n:
            return new
    raise KeyError(f"unexpected EfficientNet-Lite key {key!r}")


def remap_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename every key of a reference state dict (see :func:`remap_key`); order kept."""
    return {remap_key(k): v for k, v in state.items()}


def load_efficientnet_lite2(weights_path: str | os.PathLike[str] | None = None) -> EfficientNetLite:
    """Build EfficientNet-Lite2 in eval mode, loading the reference weights with ``strict=True``.

    Args:
        weights_path: path of ``efficientnet-lite2-9656183e.pth``; random init when None.
    """
    model = EfficientNetLite()
    if weights_path is not None:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        model.load_state_dict(remap_state_dict(state), strict=True)
    return model.eval()
