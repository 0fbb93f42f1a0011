"""Photometric jitter (brightness, contrast, saturation, noise) applied in RGB 0–255 to normalised images.

Geometry is untouched, so joints and heatmap targets stay valid; the images' mean/std are needed to leave and
re-enter normalised space.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from training.ssl.augment._sampling import _rand, _randn


def photometric(
    images: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    generator: torch.Generator,
    brightness: float = 0.3,
    contrast: float = 0.3,
    saturation: float = 0.3,
    noise_std: float = 0.0,
    strength: float = 1.0,
) -> Tensor:
    """Colour jitter on normalised images: un-normalise to RGB 0–255 with mean/std, scale brightness, contrast
    (about each image's mean grey) and saturation by factors uniform in 1 ± strength·amount, add Gaussian noise of
    strength·noise_std (0–255 units), clip to [0, 255], re-normalise. `strength` is the RandAugment-style knob."""
    n = images.shape[0]
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    amounts = strength * torch.tensor([brightness, contrast, saturation], dtype=images.dtype, device=images.device)
    factors = (1 + amounts * (2 * _rand(generator, (n, 3), images.device).to(images.dtype) - 1))[..., None, None]
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    x = (images * s + m) * factors[:, 0:1]
    grey_level = (x * luma).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    x = (x - grey_level) * factors[:, 1:2] + grey_level
    grey = (x * luma).sum(1, keepdim=True)
    x = (grey + (x - grey) * factors[:, 2:3]).clamp(0, 255)
    if noise_std > 0:
        x = (x + strength * noise_std * _randn(generator, x.shape, x.device).to(x.dtype)).clamp(0, 255)
    return (x - m) / s
