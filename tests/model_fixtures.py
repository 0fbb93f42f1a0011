"""Random-init PoseNets whose eval outputs look like heatmaps, for export/serving tests.

The SimpleBaseline init gives ~1e-15 heatmaps whose argmax is noise, so parity and keypoint comparisons on it would
pass trivially. Here: unit-scale conv weights, non-trivial BN statistics, final layer rescaled to output std 0.3.
"""

from __future__ import annotations

import torch
from torch import nn

from models.geometry import Size
from models.network import ModelConfig, PoseNet, build_model

INPUT_SIZE = Size(96, 128)


def realistic_posenet(
    seed: int = 0, input_size: Size = INPUT_SIZE, head: str = "deconv", head_channels: int = 128
) -> PoseNet:
    torch.manual_seed(seed)
    model = build_model(
        ModelConfig(backbone="mobilenet_v2", pretrained=False, num_keypoints=14, head=head, head_channels=head_channels)
    )
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
        model.eval()
        final = [m for m in model.head.modules() if isinstance(m, nn.Conv2d)][-1]
        std = model(torch.randn(4, 3, input_size.h, input_size.w)).std()
        final.weight.mul_(0.3 / std)
        final.bias.mul_(0.3 / std)
    return model
