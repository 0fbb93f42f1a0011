"""ResNet-18/50 (torchvision v1.5 layout and parameter names: conv1, bn1, layer1..layer4).

No ImageNet ResNet weights can be downloaded on the project machines: pretrained=True needs a
torchvision state-dict file via `weights_path` (its `fc.*` classifier is ignored).
"""

from __future__ import annotations

from torch import Tensor, nn

from models.backbones.registry import BACKBONES, Backbone, init_conv_bn, load_file, load_strict


def _downsample(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """3x3 -> 3x3 residual block (ResNet-18/34)."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, width, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 (x4) residual block (ResNet-50+), stride on the 3x3 as in torchvision."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, cout, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet(Backbone):
    """ResNet trunk; forward (N,3,H,W) -> [layer1 (s4), layer2 (s8), layer3 (s16), layer4 (s32)]."""

    # set with setattr in __init__ (torchvision's parameter names)
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], depths: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (width, depth) in enumerate(zip((64, 128, 256, 512), depths)):
            layer = []
            for j in range(depth):
                layer.append(block(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
        init_conv_bn(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        return [c2, c3, c4, self.layer4(c4)]

    def load_pretrained(self, weights_path: str | None) -> None:
        """`weights_path`: a torchvision resnet state dict (`fc.*` ignored); required."""
        if weights_path is None:
            raise ValueError(
                f"{type(self).__name__}: no ImageNet weights can be downloaded for ResNets here; pass "
                "weights_path=<torchvision state_dict file> or use pretrained=False"
            )
        load_strict(self, load_file(weights_path), ignore_prefixes=("fc.",))


@BACKBONES.register("resnet18")
class ResNet18(ResNet):
    """ResNet-18: out_channels 64, 128, 256, 512."""

    out_channels = (64, 128, 256, 512)

    def __init__(self) -> None:
        super().__init__(BasicBlock, (2, 2, 2, 2))


@BACKBONES.register("resnet50")
class ResNet50(ResNet):
    """ResNet-50: out_channels 256, 512, 1024, 2048."""

    out_channels = (256, 512, 1024, 2048)

    def __init__(self) -> None:
        super().__init__(Bottleneck, (3, 4, 6, 3))
