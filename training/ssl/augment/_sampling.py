"""Shared low-level pieces of the augmentations: random draws, joint choice and square box masks.

Every draw is made on the explicit generator's device (CPU, or the inputs' device) and then moved to `device`,
so a seed gives the same numbers whatever device the data lives on. Joints (N, K, 2) are input pixels,
(x, y) = (column, row); `valid` (N, K) bool/float, and non-finite joints are never valid.

Masks are square boxes of side 2·half + 1 px centred on the rounded centre, clipped to the image by construction
(a boolean over every pixel, no index arithmetic), so rows are never clamped by the width (the reference's H/W
swap, methods.md §9.1) and x is never used as a row (the Cut-Occlude transposition, §9.2).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

HalfSize = tuple[int, int]  # (low, high) inclusive range of box half-sizes in input pixels


def _rand(gen: torch.Generator, shape: Sequence[int], device) -> Tensor:
    return torch.rand(tuple(shape), generator=gen, device=gen.device).to(device)


def _randn(gen: torch.Generator, shape: Sequence[int], device) -> Tensor:
    return torch.randn(tuple(shape), generator=gen, device=gen.device).to(device)


def _randint(gen: torch.Generator, low: int, high: int, shape: Sequence[int], device) -> Tensor:
    """Integers uniform in [low, high] (both inclusive)."""
    return torch.randint(low, high + 1, tuple(shape), generator=gen, device=gen.device).to(device)


def _other_image(n: int, gen: torch.Generator, device) -> Tensor:
    """A random permutation without fixed points (one random n-cycle): every image gets ANOTHER image.

    With n == 1 there is no other image and the identity is returned.
    """
    order = torch.randperm(n, generator=gen, device=gen.device).to(device)
    perm = torch.empty_like(order)
    perm[order] = order.roll(-1)
    return perm


def _valid(joints: Tensor, valid: Tensor | None) -> Tensor:
    ok = torch.isfinite(joints).all(-1)
    return ok if valid is None else ok & valid.to(device=joints.device).bool()


def _choose(candidates: Tensor, m: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """m distinct random indices per row among True entries of `candidates` (N, K), uniformly without replacement.

    Returns indices (N, m) and `active` (N, m), False where a row had fewer than m candidates.
    """
    keys = _rand(gen, candidates.shape, candidates.device).masked_fill(~candidates, -1.0)
    top, idx = keys.topk(min(m, candidates.shape[1]), dim=1)
    return idx, top >= 0


def _gather_points(joints: Tensor, idx: Tensor) -> Tensor:
    """joints (N, K, 2), idx (N, m) → (N, m, 2)."""
    return joints.gather(1, idx[..., None].expand(*idx.shape, 2))


def _centre(points: Tensor) -> Tensor:
    """Pixel containing each (x, y) point: round half up (long)."""
    return torch.floor(points + 0.5).long()


def _box_mask(centres: Tensor, half: Tensor, active: Tensor, shape_hw: torch.Size) -> Tensor:
    """(N, 1, H, W) bool union of boxes |col − cx| ≤ half, |row − cy| ≤ half; centres (N, M, 2) long (x, y);
    shape_hw is a map's `x.shape[-2:]`."""
    h, w = shape_hw
    cols = torch.arange(w, device=centres.device)
    rows = torch.arange(h, device=centres.device)
    in_x = ((cols - centres[..., 0:1]).abs() <= half[..., None]) & active[..., None]  # (N, M, W)
    in_y = (rows - centres[..., 1:2]).abs() <= half[..., None]  # (N, M, H)
    return (torch.einsum("nmh,nmw->nhw", in_y.float(), in_x.float()) > 0)[:, None]


def _random_boxes(images: Tensor, holes: int, half_size: HalfSize, gen: torch.Generator) -> Tensor:
    """Union of `holes` boxes per image with integer centres uniform over the whole image (N, 1, H, W) bool."""
    n = images.shape[0]
    h, w = images.shape[-2:]
    dev = images.device
    centres = torch.stack([_randint(gen, 0, w - 1, (n, holes), dev), _randint(gen, 0, h - 1, (n, holes), dev)], -1)
    half = _randint(gen, *half_size, (n, holes), dev)
    return _box_mask(centres, half, torch.ones((n, holes), dtype=torch.bool, device=dev), images.shape[-2:])
