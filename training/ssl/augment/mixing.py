"""Occlusion by other images of the batch: pasted boxes (Cut-Occlude, Keypoint-Mix, CutMix) and blends (MixUp).

The pixels that hide a part of image i come from a random OTHER image of the batch (a permutation without fixed
points; with a batch of one, the image itself), so the hard view keeps natural image statistics, unlike zeroed
boxes. Cut-Occlude and Keypoint-Mix paste the box around a joint of the source onto a joint of image i;
CutMix pastes boxes at random positions; MixUp blends whole images. Images (N, 3, H, W) normalised; joints
(N, K, 2) input px (x, y); nothing here modifies its inputs. Box half-sizes (`half_size_frac`) are fractions of
the crop's shorter side min(H, W), converted to integer px from the images' shape on each call (see `_sampling`):
the defaults give 10–19 px at 256×192 and 5–9 px at 128×96.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from training.ssl.augment._sampling import (
    HALF_SIZE_FRAC,
    HalfSizeFrac,
    _centre,
    _choose,
    _gather_points,
    _half_sizes,
    _other_image,
    _rand,
    _random_boxes,
    _valid,
)


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
    half_size_frac: HalfSizeFrac = HALF_SIZE_FRAC,
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
    half = _half_sizes(generator, half_size_frac, images.shape[-2:], (n, m), images.device)
    src = _centre(_gather_points(joints[perm], src_idx))
    dst = _centre(_gather_points(joints, dst_idx))
    return _paste_all(images, perm[:, None].expand(n, m), src, dst, half, dst_ok & src_ok)


def keypoint_mix(
    images: Tensor,
    joints: Tensor,
    valid: Tensor | None = None,
    *,
    num_joints: int = 3,
    half_size_frac: HalfSizeFrac = HALF_SIZE_FRAC,
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
    half = _half_sizes(generator, half_size_frac, images.shape[-2:], (n, m), images.device)
    src = _centre(joints[source, src_idx])
    dst = _centre(_gather_points(joints, dst_idx))
    return _paste_all(images, source, src, dst, half, dst_ok & (best >= 0))


def cutmix(
    images: Tensor, *, holes: int = 5, half_size_frac: HalfSizeFrac = HALF_SIZE_FRAC, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Fill `holes` random boxes (placed as in `cutout`) with the same pixels of another image of the batch.
    Returns (images, mask)."""
    perm = _other_image(images.shape[0], generator, images.device)
    mask = _random_boxes(images, holes, half_size_frac, generator)
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
