"""Which pseudo-labels to keep, and thresholds calibrated for a stated precision on a labeled dev split.

A joint is kept when its teacher score ≥ τ_score and its spread (view/member disagreement) ≤ τ_spread; a person
with fewer than `min_joints` kept joints is dropped. τ_score is not guessed: the same teacher (same TTA) labels the
dev records, each dev joint is marked correct by PCK@0.2 (torso = left shoulder ↔ right hip, as LSP evaluation),
and the loosest τ_score whose kept joints are at least `precision` correct is taken. Pure numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from models.schemas import KeypointSchema
from training import evaluation


@dataclass(frozen=True)
class Thresholds:
    score: float
    spread: float = math.inf  # in units of the box's longer side (TeacherOutput.spread)
    min_joints: int = 1


@dataclass(frozen=True)
class FilterSpec:
    """How a round filters: calibrate for `precision` over `spread_grid` (the τ_spread candidates; the pair
    keeping the most dev joints wins), or use fixed `thresholds` (no calibration)."""

    precision: float = 0.8
    min_joints: int = 6
    spread_grid: tuple[float, ...] = (0.02, 0.04, 0.08, math.inf)
    pck_threshold: float = 0.2
    thresholds: Thresholds | None = None

    def to_json(self) -> dict[str, Any]:
        return json_safe(asdict(self))


@dataclass(frozen=True)
class Calibration:
    """The chosen thresholds and how they did on dev: precision = correct / kept joints (NaN when none kept),
    kept_fraction = kept / counted dev joints (those labeled in the dev ground truth)."""

    thresholds: Thresholds
    target: float
    precision: float
    kept_fraction: float
    joints: int

    def to_json(self) -> dict[str, Any]:
        return json_safe(asdict(self))


def json_safe(value: Any) -> Any:
    """inf / NaN → None, recursively (strict JSON has neither)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def keep_mask(scores: np.ndarray, spread: np.ndarray, thresholds: Thresholds) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) kept joints and (N,) kept persons. NaN scores/spreads (joints the teacher lacks) are never kept."""
    scores, spread = np.asarray(scores, np.float64), np.asarray(spread, np.float64)
    with np.errstate(invalid="ignore"):
        kept = (scores >= thresholds.score) & (spread <= thresholds.spread)
    return kept, kept.sum(1) >= thresholds.min_joints


def pck_correct(
    pred: np.ndarray, gt: np.ndarray, visibility: np.ndarray, schema: KeypointSchema, threshold: float = 0.2
) -> tuple[np.ndarray, np.ndarray]:
    """(correct, counted), both (N, K) bool: PCK@threshold of the torso (left shoulder ↔ right hip of the ground
    truth). Counted = labeled ground truth of a person whose torso joints are labeled; a NaN prediction is wrong."""
    visibility = np.asarray(visibility)
    ls, rh = schema.index("left_shoulder"), schema.index("right_hip")
    torso = evaluation.torso_size(gt, ls, rh)
    torso = np.where((visibility[:, ls] > 0) & (visibility[:, rh] > 0), torso, np.nan)
    result = evaluation.pck(pred, gt, visibility > 0, torso, threshold)
    assert result.correct is not None and result.counted is not None  # pck() always keeps them
    return result.correct, result.counted


def _loosest_score(scores: np.ndarray, correct: np.ndarray, precision: float) -> tuple[float, int, int]:
    """(τ, kept, correct kept) for the lowest τ whose joints with score ≥ τ are ≥ `precision` correct; (inf, 0, 0)
    when no τ reaches it. Inputs are 1-D over candidate joints."""
    order = np.argsort(-scores, kind="stable")
    s, ok = scores[order], correct[order].astype(np.int64)
    hits = np.cumsum(ok)
    kept = np.arange(1, len(s) + 1)
    last_of_tie = np.r_[s[1:] != s[:-1], True]  # a threshold keeps every joint with an equal score
    valid = np.flatnonzero(last_of_tie & (hits >= precision * kept - 1e-9))
    if not len(valid):
        return math.inf, 0, 0
    i = int(valid[-1])
    return float(s[i]), int(kept[i]), int(hits[i])


def calibrate(
    scores: np.ndarray,
    spread: np.ndarray,
    correct: np.ndarray,
    counted: np.ndarray,
    precision: float,
    min_joints: int = 1,
    spread_grid: Sequence[float] = (math.inf,),
) -> Calibration:
    """Thresholds from dev joints (all arrays (N, K)): for each τ_spread in `spread_grid` the loosest τ_score
    reaching `precision`; the pair keeping the most joints wins (ties: the looser τ_spread)."""
    counted = np.asarray(counted, bool)
    s, sp, ok = (np.asarray(a, np.float64)[counted] for a in (scores, spread, correct))
    total = int(counted.sum())
    if total == 0:
        raise ValueError("calibration needs labeled dev joints")
    best: tuple[int, float, float, int] | None = None  # (kept, τ_spread, τ_score, correct kept)
    for tau_spread in sorted(spread_grid):
        with np.errstate(invalid="ignore"):
            candidate = np.isfinite(s) & (sp <= tau_spread)
        tau, kept, hits = _loosest_score(s[candidate], ok[candidate].astype(bool), precision)
        if best is None or kept >= best[0]:
            best = (kept, tau_spread, tau, hits)
    assert best is not None
    kept, tau_spread, tau, hits = best
    return Calibration(
        thresholds=Thresholds(tau, tau_spread, min_joints),
        target=precision,
        precision=hits / kept if kept else math.nan,
        kept_fraction=kept / total,
        joints=total,
    )
