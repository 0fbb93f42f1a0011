"""Heatmap heads: backbone feature maps (strides 4, 8, 16, 32) -> K heatmaps at stride 4.

Every head is a pure module; `DeconvHead` and `LightHead` take the backbone's list of four maps,
`AuxHeatmapHead` takes one map plus the output size.

Cost at a 128x96 input with MobileNetV2 features, K=14, head_channels=128 (conv/deconv
multiply-accumulates per image, counted with forward hooks): DeconvHead 95.7 M, LightHead 9.8 M;
the backbone itself is 73.3 M. Latency on the shared 2-core dev box, batch 8, best of 20-30 runs:
torch 2 threads: head alone 15.8 vs 7.4 ms, whole network 65 vs 54 ms; torch 1 thread: 31.5 vs
8.3 ms, 80 vs 56 ms; ONNX Runtime 2 threads, whole network: 49 vs 24 ms.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


def _init_final(conv: nn.Conv2d) -> None:
    """SimpleBaseline init of the heatmap layer: weights N(0, 0.001), bias 0."""
    nn.init.normal_(conv.weight, std=0.001)
    if conv.bias is not None:  # every caller's conv has one
        nn.init.zeros_(conv.bias)


class DeconvHead(nn.Module):
    """SimpleBaseline head (Xiao et al., 2018): `num_layers` x [ConvTranspose2d(k=4, s=2, p=1, no bias)
    -> BN -> ReLU] with `channels` channels, then a 1x1 conv to `num_keypoints` heatmaps.

    Reads the feature of stride 2 ** (num_layers + 2) so the output is always at stride 4: 3 layers
    read the stride-32 map (the SimpleBaseline design); 2 or 1 read the stride-16 / stride-8 map.
    When H or W is not a multiple of that stride (e.g. W=144) the upsampled map overshoots the stride-4
    grid at the bottom/right and is cropped to the stride-4 map's size; the convolutions are top-left
    aligned, so the kept pixels are the ones an exact size would give.

    in_channels: channels of the backbone's stride-4, 8, 16 and 32 maps.
    forward: list of 4 maps, (N, C_i, H/2**(i+2), W/2**(i+2)) -> (N, K, H/4, W/4).
    """

    def __init__(
        self, in_channels: Sequence[int], num_keypoints: int, channels: int = 256, num_layers: int = 3
    ) -> None:
        super().__init__()
        if not 1 <= num_layers <= 3:
            raise ValueError(f"num_layers must be 1..3 to end at stride 4, got {num_layers}")
        self.stage = num_layers  # index into [s4, s8, s16, s32]
        layers: list[nn.Module] = []
        cin = in_channels[self.stage]
        for _ in range(num_layers):
            layers += [
                nn.ConvTranspose2d(cin, channels, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
            cin = channels
        self.deconv_layers = nn.Sequential(*layers)
        self.final_layer = nn.Conv2d(channels, num_keypoints, 1)
        for m in self.deconv_layers.modules():
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, std=0.001)
        _init_final(self.final_layer)

    def forward(self, features: list[Tensor]) -> Tensor:
        h, w = features[0].shape[-2:]
        return self.final_layer(self.deconv_layers(features[self.stage])[..., :h, :w])


def _conv1x1_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))


def _dwsep3x3(cin: int, cout: int) -> nn.Sequential:
    """Depthwise 3x3 -> BN -> ReLU -> pointwise 1x1 (cin -> cout) -> BN -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _init_hidden(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class LightHead(nn.Module):
    """FPN-style head for cheap CPU serving.

    1x1 conv + BN laterals bring the stride-32/16 maps to `channels` and the stride-8/4 maps to
    `channels // 2`. Top-down, the coarser result is bilinearly upsampled (align_corners=False), added
    to the next lateral and refined by a depthwise-separable 3x3 block whose pointwise conv also moves
    to the next level's width, at strides 16, 8 and 4; a 1x1 conv gives the heatmaps. It keeps the
    stride-4/8 detail that a deconvolution stack has to re-invent, at a fraction of its MACs (module
    docstring).

    in_channels: channels of the backbone's stride-4, 8, 16 and 32 maps.
    forward: list of 4 maps, (N, C_i, H/2**(i+2), W/2**(i+2)) -> (N, K, H/4, W/4).
    """

    def __init__(self, in_channels: Sequence[int], num_keypoints: int, channels: int = 128) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"LightHead needs channels >= 2, got {channels}")
        widths = (channels // 2, channels // 2, channels, channels)  # strides 4, 8, 16, 32
        self.laterals = nn.ModuleList(_conv1x1_bn(c, w) for c, w in zip(in_channels, widths))
        # smooth[i] refines level i and outputs level i-1's width (level 0 keeps its own)
        self.smooth = nn.ModuleList(_dwsep3x3(widths[i], widths[max(i - 1, 0)]) for i in range(3))
        self.final_layer = nn.Conv2d(widths[0], num_keypoints, 1)
        _init_hidden(self)
        _init_final(self.final_layer)

    def forward(self, features: list[Tensor]) -> Tensor:
        p = self.laterals[-1](features[-1])
        for i in range(len(features) - 2, -1, -1):
            lateral = self.laterals[i](features[i])
            up = F.interpolate(p, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            p = self.smooth[i](lateral + up)
        return self.final_layer(p)


class AuxHeatmapHead(nn.Module):
    """Auxiliary heatmaps from one backbone stage: 1x1 conv -> BN -> ReLU -> 1x1 conv to K, then
    bilinear upsampling (align_corners=False) to `size`, so the main targets supervise it too.

    forward: (N, C, h, w), size=(H/4, W/4) -> (N, K, H/4, W/4).
    """

    def __init__(self, in_channels: int, num_keypoints: int, channels: int = 128) -> None:
        super().__init__()
        self.hidden = nn.Sequential(
            nn.Conv2d(in_channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)
        )
        self.final_layer = nn.Conv2d(channels, num_keypoints, 1)
        _init_hidden(self.hidden)
        _init_final(self.final_layer)

    def forward(self, feature: Tensor, size: Sequence[int]) -> Tensor:
        heatmaps = self.final_layer(self.hidden(feature))
        return F.interpolate(heatmaps, size=tuple(size), mode="bilinear", align_corners=False)
