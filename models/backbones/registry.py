"""The contract every backbone meets, and the backbone registry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor, nn

from core.registry import Registry

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


class Backbone(nn.Module):
    """Feature extractor: (N, 3, H, W) normalised RGB -> 4 maps at strides 4, 8, 16, 32.

    Class attributes (read by the network, the export metadata and preprocessing):
      out_channels: channels of the stride-4, 8, 16 and 32 maps.
      mean, std: per-channel RGB statistics on the 0-255 scale; inputs are (x - mean) / std.
      has_default_weights: whether pretrained=True works without a weights_path.
    """

    out_channels: ClassVar[tuple[int, int, int, int]]
    has_default_weights: ClassVar[bool] = False
    mean: ClassVar[tuple[float, float, float]] = IMAGENET_MEAN
    std: ClassVar[tuple[float, float, float]] = IMAGENET_STD

    def forward(self, x: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def load_pretrained(self, weights_path: str | None) -> None:
        """Load ImageNet weights strictly: from `weights_path` (a state dict in this backbone's own
        key layout, classifier keys ignored) or, when None, from the backbone's default source."""
        raise NotImplementedError


def load_strict(module: nn.Module, state: Mapping[str, Tensor], ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load `state` into `module`; every module key must be present and no other key may remain
    except those starting with `ignore_prefixes` (e.g. a classifier). Raises RuntimeError otherwise."""
    kept = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - kept.keys()), sorted(kept.keys() - expected)
    if missing or unexpected:
        raise RuntimeError(
            f"{type(module).__name__}: weights do not match the architecture; "
            f"missing {len(missing)} keys {missing[:5]}, unexpected {len(unexpected)} keys {unexpected[:5]}"
        )
    module.load_state_dict(kept, strict=True)


def load_file(path: str) -> dict[str, Tensor]:
    """A state dict saved with torch.save, loaded on CPU with weights_only=True."""
    return torch.load(path, map_location="cpu", weights_only=True)


def init_conv_bn(module: nn.Module) -> None:
    """torchvision-style random init: Kaiming-normal (fan_out) convs, BN weight 1 / bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


BACKBONES: Registry[type[Backbone]] = Registry("backbone")
