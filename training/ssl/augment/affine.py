"""The shared easy→hard affine θ (PoseDual's T_{e→h}): one θ warps a hard view's image *and* its target heatmaps.

θ (N, 2, 3) lives in affine_grid's normalised space, where a map of size (w, h) has x_n = 2x/w − 1. That is the
codec's convention (heatmap pixel u ↔ input pixel 4u) rather than the pixel-centre one of align_corners=False
(u ↔ 4u + 1.5): with the latter, one θ moves image and heatmap points apart by (M − I)·(1.5, 1.5) input px (up to
2.5 px at 60° and scale 0.75). `warp` therefore shifts θ by half a pixel per resolution before
affine_grid/grid_sample (align_corners=False), and `warp_points` uses the same map. Sizes are (w, h); maps are
(N, C, H, W), images and stride-4 heatmaps alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from training.ssl.augment._sampling import _rand, _randn


def affine_theta(scale: Tensor, rotation: Tensor, size: tuple[int, int] | None = None) -> Tensor:
    """θ (N, 2, 3) that shows the content rotated `rotation` degrees counter-clockwise (on screen, y down) and
    scaled by 1/`scale` about the map centre (scale multiplies the sampled region, as in the dataset's crops).

    size=(w, h) of the maps makes the rotation rigid in pixels (θ depends only on the aspect, which image and
    heatmap share); size=None rotates in normalised space like the reference (a shear on non-square maps).
    """
    r = torch.deg2rad(rotation)
    cos, sin = torch.cos(r) * scale, torch.sin(r) * scale
    ratio = 1.0 if size is None else size[1] / size[0]  # h / w
    zero = torch.zeros_like(cos)
    rows = [torch.stack([cos, -sin * ratio, zero], -1), torch.stack([sin / ratio, cos, zero], -1)]
    return torch.stack(rows, 1)


def random_affine(
    n: int,
    generator: torch.Generator,
    *,
    scale_sigma: float = 0.25,
    scale_clip: float = 0.25,
    rot_sigma: float = 30.0,
    rot_clip: float = 60.0,
    rot_prob: float = 0.8,
    size: tuple[int, int] | None = None,
    device=None,
) -> Tensor:
    """(N, 2, 3) θ (see `affine_theta`): scale ~ clip(N(1, σs), 1 ± clip); rotation ~ clip(N(0, σr), ±clip)
    degrees, applied with probability rot_prob (PoseDual's extra hard-view affine; no shift, no flip)."""
    draws = _randn(generator, (2, n), device)
    scale = (1 + scale_sigma * draws[0]).clamp(1 - scale_clip, 1 + scale_clip)
    rotation = (rot_sigma * draws[1]).clamp(-rot_clip, rot_clip)
    rotation = rotation * (_rand(generator, (n,), device) < rot_prob)
    return affine_theta(scale, rotation, size)


def warp(x: Tensor, theta: Tensor) -> Tensor:
    """Warp maps (N, C, H, W) — images or heatmaps, any resolution — with θ (N, 2, 3): bilinear, zero padding.

    Output pixel p samples input at θ·p in normalised coordinates x_n = 2x/W − 1 (see module docstring), so an
    image and its stride-4 heatmap warped with one θ stay aligned under the codec's u ↔ 4u.
    """
    h, w = x.shape[-2:]
    theta = theta.to(device=x.device, dtype=x.dtype)
    c = 1.0 / torch.tensor([w, h], device=x.device, dtype=x.dtype)  # half a pixel, normalised
    linear, shift = theta[..., :2], theta[..., 2]
    shift = shift + c - linear @ c  # θ in align_corners=False's frame: g = L(n − c) + t + c
    grid = F.affine_grid(torch.cat([linear, shift[..., None]], -1), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def warp_points(points: Tensor, theta: Tensor, size: tuple[int, int]) -> Tensor:
    """Where pixel points (N, K, 2) of a map of size (w, h) land after `warp(·, theta)` (the inverse of θ)."""
    theta = theta.to(device=points.device, dtype=torch.float64)
    wh = torch.tensor(size, device=points.device, dtype=torch.float64)
    normalised = 2 * points.double() / wh - 1
    out = torch.linalg.solve(theta[:, None, :, :2], (normalised - theta[:, None, :, 2])[..., None])[..., 0]
    return ((out + 1) * wh / 2).to(points.dtype)
