"""Occlusion by zeroing: square boxes set to 0, the dataset mean colour of normalised images.

Joint Cutout and Adaptive Keypoint Masking centre their boxes on (valid) joints, so they hide exactly the evidence
the teacher's pseudo-labels point at; Cutout places its boxes anywhere in the image. Images (N, 3, H, W)
normalised; joints (N, K, 2) input px (x, y); every function returns the masked images and the mask
(N, 1, H, W) float (1 = zeroed), and never modifies its inputs. Box half-sizes (`half_size_frac`) and the Joint
Cutout jitter (`jitter_frac`) are fractions of the crop's shorter side min(H, W), converted to px from the images'
shape on each call (see `_sampling`), so the masked share of the crop does not depend on its resolution.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from training.ssl.augment._sampling import (
    HALF_SIZE_FRAC,
    JITTER_FRAC,
    HalfSizeFrac,
    _box_mask,
    _centre,
    _choose,
    _gather_points,
    _half_sizes,
    _randn,
    _random_boxes,
    _valid,
    shorter_side,
)


def joint_cutout(
    images: Tensor,
    joints: Tensor,
    valid: Tensor | None = None,
    *,
    num_joints: int = 5,
    half_size_frac: HalfSizeFrac = HALF_SIZE_FRAC,
    jitter_frac: float = JITTER_FRAC,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Joint Cutout (Xie et al.): zero boxes centred on `num_joints` distinct valid joints + N(0, σ²) px jitter.

    With s = min(H, W): σ = jitter_frac·s px; half-sizes are uniform integers in [round(lo·s), round(hi·s)] for
    half_size_frac = (lo, hi) (defaults: σ = 10 px, half-sizes 10–19 px at 256×192; 5 px, 5–9 px at 128×96).
    Returns (images, mask (N, 1, H, W) float).
    """
    n = joints.shape[0]
    idx, active = _choose(_valid(joints, valid), num_joints, generator)
    m = idx.shape[1]
    jitter = jitter_frac * shorter_side(images.shape[-2:]) * _randn(generator, (n, m, 2), joints.device)
    half = _half_sizes(generator, half_size_frac, images.shape[-2:], (n, m), joints.device)
    centres = _centre(_gather_points(joints, idx) + jitter.to(joints.dtype))
    mask = _box_mask(centres, half, active, images.shape[-2:])
    return images.masked_fill(mask, 0.0), mask.to(images.dtype)


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
    half_size_frac: HalfSizeFrac = HALF_SIZE_FRAC,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor]:
    """Adaptive Keypoint Masking (Meng et al. 2024), from the equations quoted in the abstract/summary.

    peaks (N, K): teacher peak response per joint. Easy joints: r ≥ tau. Sample i gets
    m_i = round_half_up(max_masks · #easy / #valid) zeroed joint-centred boxes on distinct random easy joints
    (never more than #easy, at least min_masks); samples whose max valid peak < hard_sample_peak ("extremely
    difficult") get min_masks. tau, max_masks, min_masks and hard_sample_peak are OUR choices (the paper's
    values were not retrievable) and belong in the method config. Box half-sizes as in `joint_cutout`
    (half_size_frac of min(H, W)). Returns (images, mask, counts (N,) long)
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
    half = _half_sizes(generator, half_size_frac, images.shape[-2:], idx.shape, images.device)
    mask = _box_mask(_centre(_gather_points(joints, idx)), half, active, images.shape[-2:])
    return images.masked_fill(mask, 0.0), mask.to(images.dtype), active.sum(1)


def cutout(
    images: Tensor, *, holes: int = 5, half_size_frac: HalfSizeFrac = HALF_SIZE_FRAC, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Zero `holes` boxes with centres x ∈ [0, W), y ∈ [0, H) and half-sizes from half_size_frac of min(H, W)
    (as in `joint_cutout`). Returns (images, mask)."""
    mask = _random_boxes(images, holes, half_size_frac, generator)
    return images.masked_fill(mask, 0.0), mask.to(images.dtype)
