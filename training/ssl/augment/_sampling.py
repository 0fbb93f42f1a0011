"""Shared low-level pieces of the augmentations: random draws, joint choice and square box masks.

Every draw is made on the explicit generator's device (CPU, or the inputs' device) and then moved to `device`,
so a seed gives the same numbers whatever device the data lives on. Joints (N, K, 2) are input pixels,
(x, y) = (column, row); `valid` (N, K) bool/float, and non-finite joints are never valid.

Masks are square boxes of side 2·half + 1 px centred on the rounded centre, clipped to the image by construction
(a boolean over every pixel, no index arithmetic), so rows are never clamped by the width (the reference's H/W
swap, methods.md §9.1) and x is never used as a row (the Cut-Occlude transposition, §9.2).

Sizes are relative to the crop (this module owns the convention, see the package docstring): a length given as a
fraction f becomes f·s px with s = min(h, w) of the tensor it applies to (`h, w = x.shape[-2:]`). The defaults
are the papers' pixel values on 256×192 crops divided by their shorter side, REFERENCE_SIDE = 192: box
half-sizes 10–19 px → HALF_SIZE_FRAC = (10/192, 19/192), Joint Cutout jitter σ = 10 px → JITTER_FRAC = 10/192.
Integer half-sizes are drawn uniformly in [round(lo·s), round(hi·s)] (nearest integer, ties down, never below
1 px; see `_round_px` and `half_size_px`), so 256×192 reproduces the papers' 10–19 px exactly and 128×96 gets
5–9 px.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

HalfSizeFrac = tuple[float, float]  # (low, high) box half-sizes as fractions of the crop's shorter side min(h, w)

REFERENCE_SIDE = 192  # shorter side of the papers' 256×192 crops, where their pixel sizes were set
HALF_SIZE_FRAC: HalfSizeFrac = (10 / REFERENCE_SIDE, 19 / REFERENCE_SIDE)  # 10–19 px half-sizes at 256×192
JITTER_FRAC = 10 / REFERENCE_SIDE  # Joint Cutout centre jitter σ: 10 px at 256×192


def _rand(gen: torch.Generator, shape: Sequence[int], device) -> Tensor:
    return torch.rand(tuple(shape), generator=gen, device=gen.device).to(device)


def _randn(gen: torch.Generator, shape: Sequence[int], device) -> Tensor:
    return torch.randn(tuple(shape), generator=gen, device=gen.device).to(device)


def _randint(gen: torch.Generator, low: int, high: int, shape: Sequence[int], device) -> Tensor:
    """Integers uniform in [low, high] (both inclusive)."""
    return torch.randint(low, high + 1, tuple(shape), generator=gen, device=gen.device).to(device)


def shorter_side(shape_hw: Sequence[int]) -> int:
    """s = min(h, w) of a map's `x.shape[-2:]`: the length every size fraction multiplies."""
    h, w = shape_hw
    return min(int(h), int(w))


def _round_px(length: float) -> int:
    """A half-size in px rounded to the nearest integer, ties down, at least 1 px.

    Ties go down because a box is 2·half + 1 px wide: the centre pixel already makes boxes on crops smaller than
    the reference relatively larger. At 128×96 the top of HALF_SIZE_FRAC is 19/192 · 96 = 9.5: 9 keeps the mean
    box area within 0.1% of 256×192's share of the crop, 10 would add 15%. Within 1e-9 of a tie (float noise in
    frac·s, e.g. 10/96 · 96) counts as a tie; exact integers are unaffected."""
    return max(1, math.ceil(length - 0.5 - 1e-9))


def check_half_size_frac(half_size_frac: Sequence[float]) -> tuple[float, float]:
    """(lo, hi) as floats; ValueError unless 0 ≤ lo ≤ hi ≤ 1, so an old pixel range such as (10, 19) cannot pass
    as fractions."""
    values = tuple(float(v) for v in half_size_frac)
    if len(values) != 2 or not (0.0 <= values[0] <= values[1] <= 1.0):
        raise ValueError(
            f"half_size_frac must be (lo, hi) with 0 <= lo <= hi <= 1 (fractions of min(h, w)), got {half_size_frac}"
        )
    return values[0], values[1]


def half_size_px(half_size_frac: Sequence[float], shape_hw: Sequence[int]) -> tuple[int, int]:
    """Inclusive integer range [round(lo·s), round(hi·s)] px of box half-sizes for a map `shape_hw` = (h, w),
    s = min(h, w); each end at least 1 px. HALF_SIZE_FRAC gives (10, 19) at 256×192 and (5, 9) at 128×96.

    Raises ValueError as `check_half_size_frac`."""
    lo, hi = check_half_size_frac(half_size_frac)
    s = shorter_side(shape_hw)
    return _round_px(lo * s), _round_px(hi * s)


def _half_sizes(
    gen: torch.Generator, half_size_frac: Sequence[float], shape_hw: Sequence[int], shape: Sequence[int], device
) -> Tensor:
    """Integer half-sizes (long) uniform in `half_size_px(half_size_frac, shape_hw)`, of the given shape."""
    return _randint(gen, *half_size_px(half_size_frac, shape_hw), shape, device)


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


def _random_boxes(images: Tensor, holes: int, half_size_frac: Sequence[float], gen: torch.Generator) -> Tensor:
    """Union of `holes` boxes per image with integer centres uniform over the whole image (N, 1, H, W) bool;
    half-sizes from `half_size_frac` of min(H, W)."""
    n = images.shape[0]
    h, w = images.shape[-2:]
    dev = images.device
    centres = torch.stack([_randint(gen, 0, w - 1, (n, holes), dev), _randint(gen, 0, h - 1, (n, holes), dev)], -1)
    half = _half_sizes(gen, half_size_frac, images.shape[-2:], (n, holes), dev)
    return _box_mask(centres, half, torch.ones((n, holes), dtype=torch.bool, device=dev), images.shape[-2:])
