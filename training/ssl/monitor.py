"""Collapse monitor for the unlabeled branch (methods.md §2.1, §11.2).

Consistency training can drift to all-background heatmaps (keypoint pixels are a tiny minority class). The
symptoms are a falling mean peak and a growing fraction of joints with a near-zero peak on the unlabeled
predictions. `collapse_stats` measures them for one step; `CollapseGuard` watches a moving window and raises a
sticky flag. All thresholds below are our choices (no paper gives numbers); keep them in the method config.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from training.ssl.pseudo import peaks


@dataclass
class CollapseStats:
    mean_peak: float  # mean over samples and joints of each heatmap's maximum
    low_peak_fraction: float  # fraction of joints whose peak < `low`
    agreement: float | None = None  # fraction of joints confident in both predictors with argmaxes ≤ radius apart
    # mean peak of the second predictor (the teacher's target): tells a flat teacher from a student that cannot
    # find the joints its hard view hides, when `mean_peak` dips
    reference_peak: float | None = None


def collapse_stats(
    pred: Tensor, other: Tensor | None = None, low: float = 0.1, radius: float = 2.0, mask: Tensor | None = None
) -> CollapseStats:
    """Statistics of one step's unlabeled heatmaps pred (N, K, h, w) (and optionally a second predictor's, e.g.
    the peer or the teacher, same shape).

    mask (N, K), optional: joints to count (e.g. drop channels the dataset never supervises).
    agreement: a PCK-like rate — a joint agrees when BOTH peaks are ≥ `low` and the two integer argmaxes are within
    `radius` heatmap px (Euclidean). Requiring confidence matters: two flat maps share argmax pixel 0 and would
    otherwise "agree" perfectly while collapsed. None without `other`. Costs one host sync per call.
    """
    values, coords = peaks(pred.detach())
    values = values.float()
    m = torch.ones_like(values) if mask is None else mask.float()
    count = m.sum().clamp_min(1.0)
    mean_peak = float((values * m).sum() / count)
    low_fraction = float(((values < low).float() * m).sum() / count)
    agreement = reference_peak = None
    if other is not None:
        if other.shape != pred.shape:
            raise ValueError(f"predictors differ in shape: {tuple(pred.shape)} vs {tuple(other.shape)}")
        v2, c2 = peaks(other.detach())
        reference_peak = float((v2.float() * m).sum() / count)
        close = (coords - c2).norm(dim=-1) <= radius
        ok = close & (values >= low) & (v2.float() >= low)
        agreement = float((ok.float() * m).sum() / count)
    return CollapseStats(mean_peak, low_fraction, agreement, reference_peak)


def labeled_mean_peak(pred: Tensor, target_weight: Tensor) -> float:
    """Mean peak of the main head on the labeled crops' annotated joints: the supervised side of the collapse
    statistics, logged by every method so a dip in the unlabeled `mean_peak` can be told apart from the flat-heatmap
    phase MSE regression goes through on labeled data too. Costs one host sync per call."""
    return collapse_stats(pred, mask=target_weight > 0).mean_peak


class CollapseGuard(nn.Module):
    """Sticky collapse flag over a moving window of per-step CollapseStats of the UNLABELED predictions.

    update(stats) returns None while healthy and a reason string from the step it fires on (and forever after).
    It fires only once `min_steps` stats were seen and the window is full, when the window means satisfy any of:
      - low-peak fraction > low_fraction_limit (0.9: nearly every joint below the `low` peak);
      - mean peak < mean_peak_limit (0.05: a clean σ=2 target peaks at ~1, a trained net at ~0.5-0.9);
      - mean peak < drop_ratio × reference (0.2: lost 80% of its level); reference is given, or else the window
        mean at the moment the guard arms. drop_ratio=None disables this test.
    arm_on_healthy (default True): the guard arms only after one full window that passes all absolute tests (or
    when `reference` is given), so a student trained from scratch, whose heatmaps are flat for the first few
    hundred steps, is not flagged for not having learned yet; it flags a fall from a healthy state. With False it
    also flags a run that never became healthy after min_steps.
    Non-finite stats fire at once. It is an nn.Module only so that a Method holding it checkpoints its state
    (extra state in Method.state_dict()); `state_dict()` / `load_state_dict()` round-trip it for resume.
    """

    def __init__(
        self,
        window: int = 50,
        min_steps: int = 100,
        low_fraction_limit: float = 0.9,
        mean_peak_limit: float = 0.05,
        reference: float | None = None,
        drop_ratio: float | None = 0.2,
        arm_on_healthy: bool = True,
    ):
        super().__init__()
        if window < 1:
            raise ValueError("window must be >= 1")
        self.window, self.min_steps = window, min_steps
        self.low_fraction_limit, self.mean_peak_limit = low_fraction_limit, mean_peak_limit
        self.drop_ratio, self.arm_on_healthy = drop_ratio, arm_on_healthy
        self._given_reference = reference
        self._reset()

    def _reset(self) -> None:
        self.history: deque[tuple[float, float]] = deque(maxlen=self.window)
        self.steps = 0
        self.reference: float | None = self._given_reference
        self.armed = (not self.arm_on_healthy) or self._given_reference is not None
        self.reason: str | None = None

    @property
    def fired(self) -> bool:
        return self.reason is not None

    def _means(self) -> tuple[float, float]:
        n = len(self.history)
        return sum(p for p, _ in self.history) / n, sum(f for _, f in self.history) / n

    def update(self, stats: CollapseStats) -> str | None:
        if self.reason is not None:
            return self.reason
        self.steps += 1
        if not (math.isfinite(stats.mean_peak) and math.isfinite(stats.low_peak_fraction)):
            self.reason = f"non-finite unlabeled heatmap stats at update {self.steps}"
            return self.reason
        self.history.append((stats.mean_peak, stats.low_peak_fraction))
        if len(self.history) < self.window:
            return None
        peak, low = self._means()
        healthy = low <= self.low_fraction_limit and peak >= self.mean_peak_limit
        if not self.armed and healthy:
            self.armed = True
        if self.reference is None and self.armed:
            self.reference = peak
        if not self.armed or self.steps < self.min_steps:
            return None
        where = f"(window of {self.window}, update {self.steps})"
        if low > self.low_fraction_limit:
            self.reason = f"low-peak fraction {low:.3f} > {self.low_fraction_limit} {where}"
        elif peak < self.mean_peak_limit:
            self.reason = f"mean peak {peak:.4f} < {self.mean_peak_limit} {where}"
        elif self.drop_ratio is not None and self.reference is not None and peak < self.drop_ratio * self.reference:
            self.reason = f"mean peak {peak:.4f} < {self.drop_ratio} x reference {self.reference:.4f} {where}"
        return self.reason

    def get_extra_state(self) -> dict:
        return {
            "history": list(self.history),
            "steps": self.steps,
            "reference": self.reference,
            "armed": self.armed,
            "reason": self.reason,
            "window": self.window,
        }

    def set_extra_state(self, state: dict) -> None:
        if state["window"] != self.window:
            raise ValueError(f"guard state has window {state['window']}, this guard {self.window}")
        self.history = deque((tuple(x) for x in state["history"]), maxlen=self.window)
        self.steps, self.reference = state["steps"], state["reference"]
        self.armed, self.reason = state["armed"], state["reason"]
