"""Batched easy→hard augmentations for semi-supervised pose training (torch, on the inputs' device).

Tensors: images (N, 3, H, W) normalised, so 0 is the dataset mean colour (the fill value); heatmaps (N, K, h, w);
joints (N, K, 2) in INPUT pixels of those images, (x, y) = (column, row); `valid` (N, K) bool/float, invalid (or
non-finite) joints are never chosen. Spatial sizes are read only as `h, w = x.shape[-2:]`; sizes are (w, h).
Every random draw comes from the explicit `generator` (a CPU generator, or one on the inputs' device); draws are
made on the generator's device and moved, so a seed gives the same result whatever the data. Nothing here
modifies its inputs.

Masks are square boxes of side 2·half + 1 px centred on the rounded centre, clipped to the image by construction
(a boolean over every pixel, no index arithmetic), so rows are never clamped by the width (the reference's H/W
swap, methods.md §9.1) and x is never used as a row (the Cut-Occlude transposition, §9.2).

The shared affine θ (PoseDual's T_{e→h}) lives in affine_grid's normalised space, where a map of size (w, h)
has x_n = 2x/w − 1. That is the codec's convention (heatmap pixel u ↔ input pixel 4u) rather than the
pixel-centre one of align_corners=False (u ↔ 4u + 1.5): with the latter, one θ moves image and heatmap points
apart by (M − I)·(1.5, 1.5) input px (up to 2.5 px at 60° and scale 0.75). `warp` therefore shifts θ by half a
pixel per resolution before affine_grid/grid_sample (align_corners=False), and `warp_points` uses the same map.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from core.registry import Registry

HalfSize = tuple[int, int]


# ---------------------------------------------------------------- random draws (all from the generator)
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


# ---------------------------------------------------------------- shared affine (image and heatmaps)
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


# ---------------------------------------------------------------- joint-centred masks
def joint_cutout(
    images: Tensor,
    joints: Tensor,
    valid: Tensor | None = None,
    *,
    num_joints: int = 5,
    half_size: HalfSize = (10, 19),
    jitter_std: float = 10.0,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Joint Cutout (Xie et al.): zero boxes centred on `num_joints` distinct valid joints + N(0, jitter_std) px.

    Half-sizes are uniform integers in half_size (inclusive). Returns (images, mask (N, 1, H, W) float).
    """
    n = joints.shape[0]
    idx, active = _choose(_valid(joints, valid), num_joints, generator)
    m = idx.shape[1]
    jitter = jitter_std * _randn(generator, (n, m, 2), joints.device)
    half = _randint(generator, *half_size, (n, m), joints.device)
    centres = _centre(_gather_points(joints, idx) + jitter.to(joints.dtype))
    mask = _box_mask(centres, half, active, images.shape[-2:])
    return images.masked_fill(mask, 0.0), mask.to(images.dtype)


def _paste(
    out: Tensor, source: Tensor, src: Tensor, dst: Tensor, half: Tensor, active: Tensor
) -> tuple[Tensor, Tensor]:
    """Paste the box of `half` around src (N, 2) long of source (N, C, H, W) centred on dst (N, 2) of `out`.

    A pixel is pasted only if it lies in the destination box and its source pixel is inside the image, so both
    boxes are clipped consistently at borders. Returns (new images, pasted region (N, 1, H, W) bool).
    """
    n, c = out.shape[:2]
    h, w = out.shape[-2:]
    rows = torch.arange(h, device=out.device)
    cols = torch.arange(w, device=out.device)
    src_rows = rows + (src[:, 1:2] - dst[:, 1:2])  # (N, H): source row for each destination row
    src_cols = cols + (src[:, 0:1] - dst[:, 0:1])  # (N, W)
    in_y = ((rows - dst[:, 1:2]).abs() <= half[:, None]) & (src_rows >= 0) & (src_rows < h)
    in_x = ((cols - dst[:, 0:1]).abs() <= half[:, None]) & (src_cols >= 0) & (src_cols < w) & active[:, None]
    region = (in_y[:, :, None] & in_x[:, None, :])[:, None]
    shifted = source.gather(2, src_rows.clamp(0, h - 1)[:, None, :, None].expand(n, c, h, w))
    shifted = shifted.gather(3, src_cols.clamp(0, w - 1)[:, None, None, :].expand(n, c, h, w))
    return torch.where(region, shifted, out), region


def _paste_all(
    images: Tensor, source_index: Tensor, src: Tensor, dst: Tensor, half: Tensor, active: Tensor
) -> tuple[Tensor, Tensor]:
    """Patches p = 0..M−1 in order; source_index, half, active (N, M); src, dst (N, M, 2) long."""
    out, mask = images, torch.zeros_like(images[:, :1], dtype=torch.bool)
    for p in range(src.shape[1]):
        out, region = _paste(out, images[source_index[:, p]], src[:, p], dst[:, p], half[:, p], active[:, p])
        mask = mask | region
    return out, mask.to(images.dtype)


def cut_occlude(
    images: Tensor,
    joints: Tensor,
    valid: Tensor | None = None,
    *,
    num_patches: int = 2,
    half_size: HalfSize = (10, 19),
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Keypoint Cut-Occlude (SSPCM's SSCO, coordinates done right).

    Each image i takes a random OTHER image j of the batch (permutation without fixed points); for each of
    `num_patches` patches, the box around a random valid joint of j is pasted centred on a random valid joint of
    i (distinct joints within an image). With a batch of one the source is the image itself.
    Returns (images, mask of pasted pixels (N, 1, H, W)).
    """
    n = images.shape[0]
    ok = _valid(joints, valid)
    perm = _other_image(n, generator, images.device)
    dst_idx, dst_ok = _choose(ok, num_patches, generator)
    src_idx, src_ok = _choose(ok[perm], num_patches, generator)
    m = dst_idx.shape[1]
    half = _randint(generator, *half_size, (n, m), images.device)
    src = _centre(_gather_points(joints[perm], src_idx))
    dst = _centre(_gather_points(joints, dst_idx))
    return _paste_all(images, perm[:, None].expand(n, m), src, dst, half, dst_ok & src_ok)


def keypoint_mix(
    images: Tensor,
    joints: Tensor,
    valid: Tensor | None = None,
    *,
    num_joints: int = 3,
    half_size: HalfSize = (10, 19),
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Keypoint-Mix (TRS, Yun et al. 2025), our reading of the abstract: mix keypoint appearances across images
    AND joints. For `num_joints` distinct valid joints j of image i, the box around a random valid joint k ≠ j of
    a random other image (drawn per patch, uniformly over all such (image, joint) pairs) is pasted centred on
    joint j — e.g. another person's ankle where this wrist was — so local evidence contradicts the pose while the
    target stays i's. With a batch of one the source is the image itself (still k ≠ j). Draws N·m·N·K keys
    (0.3 M for N = 64, m = 3, K = 24). Returns (images, mask).
    """
    n, k = joints.shape[:2]
    ok = _valid(joints, valid)
    dst_idx, dst_ok = _choose(ok, num_joints, generator)
    m = dst_idx.shape[1]
    other_image = ~torch.eye(n, dtype=torch.bool, device=ok.device) if n > 1 else torch.ones(1, 1, dtype=torch.bool)
    other_joint = torch.arange(k, device=ok.device) != dst_idx[..., None]  # (N, m, K)
    candidates = other_image.to(ok.device)[:, None, :, None] & ok[None, None] & other_joint[:, :, None]  # (N,m,N,K)
    keys = _rand(generator, candidates.shape, images.device).masked_fill(~candidates, -1.0).flatten(2)
    best, pick = keys.max(-1)
    source, src_idx = pick // k, pick % k
    half = _randint(generator, *half_size, (n, m), images.device)
    src = _centre(joints[source, src_idx])
    dst = _centre(_gather_points(joints, dst_idx))
    return _paste_all(images, source, src, dst, half, dst_ok & (best >= 0))


# ---------------------------------------------------------------- adaptive keypoint masking (AKM)
def relative_responses(peaks: Tensor, valid: Tensor | None = None) -> Tensor:
    """AKM relative response r = (h − H_min) / (H_max − H_min) per sample over its (valid) joints; (N, K).

    Zeros where H_max == H_min (or no valid joint) and for invalid joints.
    """
    ok = torch.ones_like(peaks, dtype=torch.bool) if valid is None else valid.to(peaks.device).bool()
    hmax = peaks.masked_fill(~ok, -math.inf).amax(1, keepdim=True)
    hmin = peaks.masked_fill(~ok, math.inf).amin(1, keepdim=True)
    span = hmax - hmin
    spread = torch.isfinite(span) & (span > 0)
    r = (peaks - hmin) / torch.where(spread, span, torch.ones_like(span))
    return torch.where(spread & ok, r, torch.zeros_like(r))


def adaptive_keypoint_mask(
    images: Tensor,
    joints: Tensor,
    peaks: Tensor,
    valid: Tensor | None = None,
    *,
    tau: float = 0.5,
    max_masks: int = 5,
    min_masks: int = 0,
    hard_sample_peak: float = 0.2,
    half_size: HalfSize = (10, 19),
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor]:
    """Adaptive Keypoint Masking (Meng et al. 2024), from the equations quoted in the abstract/summary.

    peaks (N, K): teacher peak response per joint. Easy joints: r ≥ tau. Sample i gets
    m_i = round_half_up(max_masks · #easy / #valid) zeroed joint-centred boxes on distinct random easy joints
    (never more than #easy, at least min_masks); samples whose max valid peak < hard_sample_peak ("extremely
    difficult") get min_masks. tau, max_masks, min_masks and hard_sample_peak are OUR choices (the paper's
    values were not retrievable) and belong in the method config. Returns (images, mask, counts (N,) long)
    where counts is the number of masks placed.
    """
    ok = _valid(joints, valid)
    easy = ok & (relative_responses(peaks, ok) >= tau)
    n_easy = easy.sum(1)
    counts = torch.floor(max_masks * n_easy / ok.sum(1).clamp(min=1) + 0.5).long().clamp(min=min_masks)
    hard = peaks.masked_fill(~ok, -math.inf).amax(1) < hard_sample_peak
    counts = torch.where(hard, torch.full_like(counts, min_masks), counts).minimum(n_easy)
    idx, active = _choose(easy, max(max_masks, min_masks), generator)
    active = active & (torch.arange(idx.shape[1], device=idx.device) < counts[:, None])
    half = _randint(generator, *half_size, idx.shape, images.device)
    mask = _box_mask(_centre(_gather_points(joints, idx)), half, active, images.shape[-2:])
    return images.masked_fill(mask, 0.0), mask.to(images.dtype), active.sum(1)


# ---------------------------------------------------------------- joint-agnostic augmentations
def _random_boxes(images: Tensor, holes: int, half_size: HalfSize, gen: torch.Generator) -> Tensor:
    """Union of `holes` boxes per image with integer centres uniform over the whole image (N, 1, H, W) bool."""
    n = images.shape[0]
    h, w = images.shape[-2:]
    dev = images.device
    centres = torch.stack([_randint(gen, 0, w - 1, (n, holes), dev), _randint(gen, 0, h - 1, (n, holes), dev)], -1)
    half = _randint(gen, *half_size, (n, holes), dev)
    return _box_mask(centres, half, torch.ones((n, holes), dtype=torch.bool, device=dev), images.shape[-2:])


def cutout(
    images: Tensor, *, holes: int = 5, half_size: HalfSize = (10, 19), generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Zero `holes` boxes with centres x ∈ [0, W), y ∈ [0, H). Returns (images, mask)."""
    mask = _random_boxes(images, holes, half_size, generator)
    return images.masked_fill(mask, 0.0), mask.to(images.dtype)


def cutmix(
    images: Tensor, *, holes: int = 5, half_size: HalfSize = (10, 19), generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Fill `holes` random boxes with the same pixels of another image of the batch. Returns (images, mask)."""
    perm = _other_image(images.shape[0], generator, images.device)
    mask = _random_boxes(images, holes, half_size, generator)
    return torch.where(mask, images[perm], images), mask.to(images.dtype)


def _beta(alpha: float, n: int, gen: torch.Generator) -> Tensor:
    """Beta(α, α) samples (n,) float64 from the generator: ratio of Marsaglia–Tsang gammas, in log space
    (Gamma(α) = Gamma(α + 1)·U^(1/α) for α < 1, which underflows for small α without logs)."""
    shape = alpha + 1.0 if alpha < 1 else alpha
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    log_gamma = torch.empty(2 * n, dtype=torch.float64)
    todo = torch.ones(2 * n, dtype=torch.bool)
    while todo.any():  # accepts ≥ 95% per round
        z = torch.randn(2 * n, generator=gen, device=gen.device, dtype=torch.float64).cpu()
        u = torch.rand(2 * n, generator=gen, device=gen.device, dtype=torch.float64).cpu()
        v = (1 + c * z) ** 3
        accept = todo & (v > 0) & (torch.log(u) < 0.5 * z**2 + d - d * v + d * torch.log(v.clamp(min=1e-300)))
        log_gamma = torch.where(accept, math.log(d) + torch.log(v.clamp(min=1e-300)), log_gamma)
        todo &= ~accept
    if alpha < 1:
        u = torch.rand(2 * n, generator=gen, device=gen.device, dtype=torch.float64).cpu()
        log_gamma = log_gamma + torch.log(u) / alpha
    return torch.sigmoid(log_gamma[:n] - log_gamma[n:])


def mixup(
    images: Tensor,
    *,
    alpha: float = 0.2,
    min_keep: float = 0.75,
    mode: Literal["beta", "uniform"] = "beta",
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor]:
    """MixUp with another image of the batch: out = lam·x + (1 − lam)·x[perm].

    mode="beta": lam = 1 − (1 − min_keep)·Beta(α, α) (MultiAugs: α = 0.2, min_keep = 0.75);
    mode="uniform": lam = 1 − (1 − min_keep)·U(0, 1). min_keep = 0 gives AKM's full-range Mixup branch.
    Returns (mixed, lam (N,), perm (N,)).
    """
    n = images.shape[0]
    if mode not in ("beta", "uniform"):
        raise ValueError(f"unknown mixup mode {mode!r}")
    perm = _other_image(n, generator, images.device)
    draw = _beta(alpha, n, generator) if mode == "beta" else _rand(generator, (n,), "cpu").double()
    lam = (1 - (1 - min_keep) * draw).to(device=images.device, dtype=images.dtype)
    mixed = lam[:, None, None, None] * images + (1 - lam[:, None, None, None]) * images[perm]
    return mixed, lam, perm


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


# ---------------------------------------------------------------- named paths for method configs
class AugmentSpec(NamedTuple):
    """A registered augmentation and the batch inputs it needs besides images and the generator."""

    fn: Callable[..., Any]
    needs: tuple[str, ...]  # subset of ("joints", "valid", "peaks")


def _identity(images: Tensor, *, generator: torch.Generator) -> Tensor:
    """The "none" path: the easy view itself (only the shared affine makes it hard)."""
    return images


AUGMENTS: Registry[AugmentSpec] = Registry("hard-view augmentation")
AUGMENTS.register("none")(AugmentSpec(_identity, ()))
AUGMENTS.register("joint_cutout")(AugmentSpec(joint_cutout, ("joints", "valid")))
AUGMENTS.register("cut_occlude")(AugmentSpec(cut_occlude, ("joints", "valid")))
AUGMENTS.register("keypoint_mix")(AugmentSpec(keypoint_mix, ("joints", "valid")))
AUGMENTS.register("adaptive_mask")(AugmentSpec(adaptive_keypoint_mask, ("joints", "peaks", "valid")))
AUGMENTS.register("cutout")(AugmentSpec(cutout, ()))
AUGMENTS.register("cutmix")(AugmentSpec(cutmix, ()))
AUGMENTS.register("mixup")(AugmentSpec(mixup, ()))
AUGMENTS.register("photometric")(AugmentSpec(photometric, ()))  # mean and std are required path kwargs


def _options(spec: AugmentSpec) -> tuple[set[str], set[str]]:
    """(all, required) parameters a path's kwargs may/must give: everything but images, the batch inputs in
    `spec.needs` and the generator."""
    params = list(inspect.signature(spec.fn).parameters.values())[1:]
    params = [p for p in params if p.name not in spec.needs and p.name != "generator"]
    return {p.name for p in params}, {p.name for p in params if p.default is p.empty}


@dataclass(frozen=True)
class AugmentPath:
    """One hard-view path: registry names joined by "+" applied in order (MultiAugs: JOCO = "cut_occlude+cutout",
    JCCM = "joint_cutout+cutmix") and per-component keyword overrides, e.g.
    AugmentPath("joint_cutout+cutmix", {"cutmix": {"holes": 2}}). Unknown names or options raise at construction.
    """

    name: str
    kwargs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        components = self.components
        for component in self.kwargs:
            if component not in components:
                raise KeyError(f"kwargs for {component!r}, which is not in path {self.name!r}")
        for component in components:
            allowed, required = _options(AUGMENTS.get(component))
            given = set(self.kwargs.get(component, {}))
            if given - allowed or required - given:
                raise TypeError(
                    f"{component}: unknown options {sorted(given - allowed)}, missing {sorted(required - given)}"
                )
        object.__setattr__(self, "kwargs", {c: dict(o) for c, o in self.kwargs.items()})

    def __hash__(self) -> int:
        return hash((self.name, repr(sorted(self.kwargs.items()))))

    @property
    def components(self) -> tuple[str, ...]:
        parts = tuple(part.strip() for part in self.name.split("+"))
        for part in parts:
            AUGMENTS.get(part)  # raises KeyError on unknown names
        return parts

    @classmethod
    def parse(cls, spec: str | Mapping[str, Any] | AugmentPath) -> AugmentPath:
        """From a config entry: "cut_occlude+cutout" or {"name": ..., "kwargs": {component: {...}}}."""
        if isinstance(spec, AugmentPath):
            return spec
        if isinstance(spec, str):
            return cls(spec)
        return cls(spec["name"], spec.get("kwargs", {}))


@functools.lru_cache(maxsize=64)
def _parse_name(name: str) -> AugmentPath:
    return AugmentPath(name)


def check_path(path: str | Mapping[str, Any] | AugmentPath) -> AugmentPath:
    """The validated AugmentPath of a config entry; raises KeyError (unknown name) or TypeError (bad options)."""
    return _parse_name(path) if isinstance(path, str) else AugmentPath.parse(path)


def apply_path(
    path: str | Mapping[str, Any] | AugmentPath,
    images: Tensor,
    joints: Tensor | None,
    valid: Tensor | None,
    peaks: Tensor | None,
    generator: torch.Generator,
) -> Tensor:
    """The hard view of `images` (N, 3, H, W) for one path (an AugmentPath or a config entry, see `check_path`);
    joints (N, K, 2) input px and peaks (N, K) are needed only by joint-based components (the same for every
    component: masks do not move joints)."""
    path = check_path(path)
    inputs = {"joints": joints, "valid": valid, "peaks": peaks}
    out = images
    for component in path.components:
        spec = AUGMENTS.get(component)
        args = [inputs[name] for name in spec.needs]
        if any(a is None for a, name in zip(args, spec.needs) if name != "valid"):
            raise ValueError(f"augmentation {component!r} needs {[n for n in spec.needs if n != 'valid']}")
        result = spec.fn(out, *args, generator=generator, **path.kwargs.get(component, {}))
        out = result[0] if isinstance(result, tuple) else result
    return out
