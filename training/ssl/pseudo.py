"""Pseudo-label processing for unlabeled crops: confidence weights, view aggregation, threshold-and-refine and
cross-student selection (Yu et al., WACV 2024; see shared/reference/methods.md §5).

All functions are batched torch, run on the inputs' device, never modify their inputs, and take heatmaps laid out
(N, K, h, w) in heatmap pixels (x = column, y = row), the frame of models/codec.py. They carry no gradient
semantics of their own: pass detached teacher heatmaps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

SubPixel = Literal["quarter", "gaussian", "none"]


@dataclass
class PseudoLabels:
    """Targets for the unlabeled loss: heatmaps (N, K, h, w) and per-joint loss weights (N, K) in [0, 1]."""

    heatmaps: Tensor
    weights: Tensor

    def __post_init__(self) -> None:
        if self.heatmaps.dim() != 4 or tuple(self.weights.shape) != tuple(self.heatmaps.shape[:2]):
            raise ValueError(
                f"expected heatmaps (N,K,h,w) and weights (N,K), got {tuple(self.heatmaps.shape)} "
                f"and {tuple(self.weights.shape)}"
            )


def _check_heatmaps(heatmaps: Tensor) -> None:
    if heatmaps.dim() != 4:
        raise ValueError(f"heatmaps must be (N, K, h, w), got shape {tuple(heatmaps.shape)}")


def peaks(heatmaps: Tensor) -> tuple[Tensor, Tensor]:
    """Argmax of each joint's heatmap.

    heatmaps (N, K, h, w) → values (N, K) in the heatmaps' dtype, coords (N, K, 2) float32 integer heatmap
    pixels (x = column, y = row). Ties go to the first pixel in row-major order (torch.argmax).
    """
    _check_heatmaps(heatmaps)
    w = heatmaps.shape[-1]
    flat = heatmaps.flatten(2)
    values, idx = flat.max(-1)
    coords = torch.stack([idx % w, torch.div(idx, w, rounding_mode="floor")], -1).float()
    return values, coords


def confidence_weights(heatmaps: Tensor, *, threshold: float = 0.1, soft: bool = False) -> Tensor:
    """Per-joint loss weights (N, K) float32 from each joint's peak value.

    Hard (default): 1 where peak > threshold, else 0. Soft: the peak clipped to [0, 1] where peak > threshold,
    else 0 (threshold=0 gives the plain clipped peak). Non-finite peaks get 0.

    The default 0.1 is our choice, taken from SSPCM's score filter (which thresholds the mean peak of two nets at
    0.1); MultiAugs reports that 0.5 hurts, and PoseDual/MultiAugs use no filter at all (threshold=0, hard, keeps
    every joint whose peak is positive). Keep it a method-config parameter.
    """
    values, _ = peaks(heatmaps)
    values = values.float()
    keep = values > threshold  # NaN compares False
    if soft:
        return torch.where(keep, values.clamp(0.0, 1.0), torch.zeros_like(values))
    return keep.float()


def aggregate_views(heatmaps_per_view: list[Tensor]) -> Tensor:
    """Pixel-wise maximum over views (Yu et al.'s aggregation). Each view must already be mapped back to one
    common frame (inverse affine / flip-back done by the caller); all (N, K, h, w) of one shape. Returns a new
    tensor."""
    if not heatmaps_per_view:
        raise ValueError("aggregate_views needs at least one view")
    shapes = {tuple(v.shape) for v in heatmaps_per_view}
    if len(shapes) != 1:
        raise ValueError(f"all views must share one shape, got {sorted(shapes)}")
    _check_heatmaps(heatmaps_per_view[0])
    return torch.stack(heatmaps_per_view).amax(0)


def _at(flat: Tensor, w: int, x: Tensor, y: Tensor) -> Tensor:
    """flat (N, K, h*w) sampled at integer (x, y) (N, K) → (N, K)."""
    return flat.gather(-1, (y * w + x).unsqueeze(-1)).squeeze(-1)


def _axis_offset(flat: Tensor, h: int, w: int, x: Tensor, y: Tensor, axis: int, mode: SubPixel) -> Tensor:
    """Sub-pixel offset along x (axis 0) or y (axis 1) around the integer argmax; 0 at the border."""
    dx, dy = (1, 0) if axis == 0 else (0, 1)
    pos, size = (x, w) if axis == 0 else (y, h)
    inner = (pos > 0) & (pos < size - 1)
    lo = _at(flat, w, (x - dx).clamp(0, w - 1), (y - dy).clamp(0, h - 1)).float()
    hi = _at(flat, w, (x + dx).clamp(0, w - 1), (y + dy).clamp(0, h - 1)).float()
    if mode == "quarter":
        off = 0.25 * torch.sign(hi - lo)
    else:  # "gaussian": vertex of the parabola through the log responses (exact for a clean Gaussian)
        c = _at(flat, w, x, y).float()
        llo, lc, lhi = (t.clamp_min(1e-10).log() for t in (lo, c, hi))
        curv = llo - 2 * lc + lhi
        off = torch.where(curv < 0, 0.5 * (llo - lhi) / torch.where(curv < 0, curv, -1.0), 0.0).clamp(-0.5, 0.5)
    return torch.where(inner, off, torch.zeros_like(off))


def subpixel_peaks(heatmaps: Tensor, mode: SubPixel = "quarter") -> tuple[Tensor, Tensor]:
    """peaks() refined to sub-pixel coords (N, K, 2) float32.

    "quarter": argmax + 0.25 px towards the higher neighbour per axis, exactly the codec's default decoder.
    "gaussian": per-axis 3-point parabola on the log response (a separable 1-D DARK without the blur): exact for
    a clean Gaussian, noisier on noisy maps; clipped to ±0.5 px. "none": the integer argmax.
    (A local centroid is not offered: with σ=2 a radius-1..3 centroid recovers only 15-65% of the true offset.)
    """
    values, coords = peaks(heatmaps)
    if mode == "none":
        return values, coords
    if mode not in ("quarter", "gaussian"):
        raise ValueError(f"unknown sub-pixel mode {mode!r}")
    h, w = heatmaps.shape[-2:]
    flat = heatmaps.flatten(2)
    x, y = coords[..., 0].long(), coords[..., 1].long()
    off_x = _axis_offset(flat, h, w, x, y, 0, mode)
    off_y = _axis_offset(flat, h, w, x, y, 1, mode)
    return values, coords + torch.stack([off_x, off_y], -1)


def render_gaussians(centres: Tensor, size: tuple[int, int], sigma: float = 2.0) -> Tensor:
    """Clean unnormalised Gaussians exp(-d²/2σ²) (peak 1 at the exact sub-pixel centre, like codec.encode).

    centres (N, K, 2) heatmap px (x, y); size (h, w). Returns (N, K, h, w) float32 on the centres' device.
    """
    h, w = size
    xs = torch.arange(w, device=centres.device, dtype=torch.float32)
    ys = torch.arange(h, device=centres.device, dtype=torch.float32)
    mx = centres[..., 0, None].float()
    my = centres[..., 1, None].float()
    gx = torch.exp(-((xs - mx) ** 2) / (2 * sigma**2))  # (N, K, w)
    gy = torch.exp(-((ys - my) ** 2) / (2 * sigma**2))  # (N, K, h)
    return gy.unsqueeze(-1) * gx.unsqueeze(-2)


def threshold_and_refine(
    heatmaps: Tensor, *, threshold: float = 0.3, sigma: float = 2.0, subpixel: SubPixel = "quarter"
) -> PseudoLabels:
    """Yu et al.'s denoising: keep joints whose peak ≥ threshold and replace each kept joint's heatmap by a clean
    Gaussian (peak 1, `sigma`) centred at the sub-pixel argmax of its response; dropped joints get an all-zero
    heatmap and weight 0. Kept joints get weight 1.

    The paper's threshold is not known to us ([UNVERIFIED] in methods.md §5): 0.3 is our choice and belongs in
    the method config. sigma must match the codec's (2 at stride 4 for 256x192). With subpixel="quarter",
    codec.decode (quarter) of a refined map returns exactly what it returns for the original map.
    """
    _check_heatmaps(heatmaps)
    values, centres = subpixel_peaks(heatmaps, subpixel)
    keep = values.float() >= threshold  # NaN peaks are dropped
    h, w = heatmaps.shape[-2:]
    clean = render_gaussians(centres, (h, w), sigma) * keep[..., None, None]
    dtype = heatmaps.dtype if heatmaps.is_floating_point() else torch.float32
    return PseudoLabels(clean.to(dtype), keep.float())


def view_disagreement(views: list[Tensor]) -> Tensor:
    """Per-joint spread (N, K) float32 of one network's predictions of several views of the same images (mapped
    back to one frame): the maximum over pixels of the pixel-wise standard deviation across views (population
    std). 0 for a single view or identical views. Low = the prediction does not depend on the view."""
    if not views:
        raise ValueError("view_disagreement needs at least one view")
    for v in views:
        _check_heatmaps(v)
    stacked = torch.stack([v.float() for v in views])  # (V, N, K, h, w)
    return stacked.std(0, correction=0).flatten(2).amax(-1)


def cross_student_uncertainty(a: Tensor, b: Tensor) -> Tensor:
    """Per-joint disagreement (N, K) float32 of two students' heatmaps of the same view(s): the maximum over pixels
    of the pixel-wise standard deviation of the pair. For two values the (population) std is |a − b| / 2; we use
    that (the unbiased estimator would only scale it by √2, which changes no selection). 0 iff identical."""
    _check_heatmaps(a)
    if a.shape != b.shape:
        raise ValueError(f"student heatmaps differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return ((a.float() - b.float()).abs() * 0.5).flatten(2).amax(-1)


def select_by_uncertainty(
    candidates: list[PseudoLabels], uncertainties: list[Tensor], *, ignore_dropped: bool = True
) -> PseudoLabels:
    """Per sample and joint, the candidate with the lowest uncertainty (ties → the earliest candidate).

    Our reading of Yu et al. (methods.md §5, [NOTE]-level source): the pool holds the refined pseudo-heatmaps of
    both students (and/or of several view groups); each candidate comes with the cross-student uncertainty
    (N, K) of the heatmaps it was built from, and every student is trained on the least uncertain one. With
    ignore_dropped (default), candidates whose weight is 0 (dropped by the threshold) are not eligible — two
    students that both see nothing agree perfectly, so their std is ~0 and would otherwise win; a joint with no
    eligible candidate keeps weight 0.
    """
    if not candidates or len(candidates) != len(uncertainties):
        raise ValueError("need one uncertainty tensor per candidate, and at least one candidate")
    heatmaps = torch.stack([c.heatmaps for c in candidates])  # (C, N, K, h, w)
    weights = torch.stack([c.weights for c in candidates])  # (C, N, K)
    unc = torch.stack([u.float() for u in uncertainties])  # (C, N, K)
    if unc.shape != weights.shape:
        raise ValueError(f"uncertainties {tuple(unc.shape)} do not match candidate weights {tuple(weights.shape)}")
    unc = torch.nan_to_num(unc, nan=float("inf"))
    if ignore_dropped:
        unc = torch.where(weights > 0, unc, torch.full_like(unc, float("inf")))
    choice = unc.argmin(0)  # (N, K)
    picked_w = weights.gather(0, choice[None]).squeeze(0)
    idx = choice[None, ..., None, None].expand(1, *heatmaps.shape[1:])
    picked_h = heatmaps.gather(0, idx).squeeze(0)
    return PseudoLabels(picked_h, picked_w)
