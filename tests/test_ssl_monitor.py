"""Collapse monitor: per-step statistics and the sticky, resumable guard."""

import io
import math

import pytest
import torch

from training.methods.base import Method
from training.ssl.monitor import CollapseGuard, CollapseStats, collapse_stats, labeled_mean_peak

torch.set_num_threads(1)
H, W = 8, 6


def _maps(peaks: list[float], locs: list[tuple[int, int]]) -> torch.Tensor:
    """(1, K, H, W) with one spike of height peaks[k] at (x, y) = locs[k]."""
    hm = torch.zeros(1, len(peaks), H, W)
    for k, (v, (x, y)) in enumerate(zip(peaks, locs)):
        hm[0, k, y, x] = v
    return hm


def test_collapse_stats_mean_peak_low_fraction_and_agreement():
    a = _maps([0.8, 0.05, 0.6, 0.4], [(1, 1), (2, 2), (3, 3), (0, 7)])
    s = collapse_stats(a)
    assert s.mean_peak == pytest.approx((0.8 + 0.05 + 0.6 + 0.4) / 4)
    assert s.low_peak_fraction == pytest.approx(0.25) and s.agreement is None
    # joint 0 within 2 px (dx=1, dy=1); joint 1 close but not confident; joint 2 3 px away; joint 3 exactly 2 px
    b = _maps([0.7, 0.9, 0.6, 0.5], [(2, 2), (2, 2), (3, 6), (2, 7)])
    assert collapse_stats(a, b).agreement == pytest.approx(0.5)
    assert collapse_stats(a, b).reference_peak == pytest.approx((0.7 + 0.9 + 0.6 + 0.5) / 4)  # b's mean peak
    assert s.reference_peak is None  # no second predictor
    flat = torch.zeros(1, 4, H, W)
    assert collapse_stats(flat, flat.clone()).agreement == 0.0  # flat maps do not "agree"
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    assert collapse_stats(a, mask=mask).mean_peak == pytest.approx(0.7)


def test_labeled_mean_peak_counts_only_annotated_joints():
    a = _maps([0.8, 0.05, 0.6, 0.4], [(1, 1), (2, 2), (3, 3), (0, 7)])
    weight = torch.tensor([[1.0, 0.0, 0.5, 0.0]])  # a weight of any positive size marks an annotated joint
    assert labeled_mean_peak(a, weight) == pytest.approx(0.7)


def _stream(kind: str, steps: int, seed: int = 0):
    """Per-step stats of synthetic unlabeled predictions (2 crops, 4 joints, noisy Gaussians)."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    for t in range(steps):
        if kind == "healthy":
            amp = 0.6 + 0.1 * torch.randn(2, 4, 1, 1, generator=g)
        elif kind == "collapse":  # healthy for 150 steps, then the peaks decay to background
            amp = torch.full((2, 4, 1, 1), 0.6 * (1.0 if t < 150 else math.exp(-(t - 150) / 40)))
        else:  # "flat": never learned anything
            amp = torch.full((2, 4, 1, 1), 0.02)
        cx = torch.randint(1, W - 1, (2, 4, 1, 1), generator=g).float()
        cy = torch.randint(1, H - 1, (2, 4, 1, 1), generator=g).float()
        hm = amp * torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / 8) + 0.02 * torch.rand(2, 4, H, W, generator=g)
        yield collapse_stats(hm)


def _first_fire(guard: CollapseGuard, stats) -> tuple[int | None, str | None]:
    first, reason = None, None
    for t, s in enumerate(stats):
        r = guard.update(s)
        if r is not None and first is None:
            first, reason = t, r
    return first, reason


def test_guard_fires_on_a_stream_decaying_to_background():
    guard = CollapseGuard()
    first, reason = _first_fire(guard, _stream("collapse", 400))
    assert first is not None and 150 < first < 400, first
    assert "mean peak" in reason and guard.fired


def test_guard_stays_quiet_on_a_healthy_noisy_stream():
    guard = CollapseGuard()
    first, _ = _first_fire(guard, _stream("healthy", 500, seed=1))
    assert first is None and guard.armed and guard.reference == pytest.approx(0.6, abs=0.1)


def test_guard_fires_on_high_low_peak_fraction_even_when_the_mean_holds():
    guard = CollapseGuard(window=5, min_steps=5, reference=0.5, drop_ratio=None)
    few_strong = CollapseStats(mean_peak=0.5, low_peak_fraction=0.95)
    assert all(guard.update(few_strong) is None for _ in range(4))
    assert "low-peak fraction" in guard.update(few_strong)


def test_guard_is_sticky():
    guard = CollapseGuard(window=3, min_steps=3, reference=0.6)
    for _ in range(3):
        reason = guard.update(CollapseStats(0.01, 0.99))
    assert reason is not None
    assert all(guard.update(CollapseStats(0.8, 0.0)) == reason for _ in range(10))


def test_guard_arming_on_a_never_healthy_stream():
    assert _first_fire(CollapseGuard(), _stream("flat", 200))[0] is None
    assert _first_fire(CollapseGuard(arm_on_healthy=False), _stream("flat", 200))[0] == 99  # min_steps


def test_guard_fires_at_once_on_non_finite_stats():
    guard = CollapseGuard()
    assert "non-finite" in guard.update(CollapseStats(float("nan"), 0.0))


def test_guard_state_round_trip_through_a_method_checkpoint():
    stats = list(_stream("collapse", 300, seed=2))

    class Holder(Method):
        def __init__(self):
            super().__init__(torch.nn.Linear(1, 1))
            self.guard = CollapseGuard()

    a = Holder()
    for s in stats[:170]:
        a.guard.update(s)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b = Holder()
    b.load_state_dict(torch.load(buffer, weights_only=True))
    assert b.guard.steps == 170 and b.guard.armed and b.guard.get_extra_state() == a.guard.get_extra_state()
    outs_a = [a.guard.update(s) for s in stats[170:]]
    outs_b = [b.guard.update(s) for s in stats[170:]]
    assert outs_a == outs_b and outs_a[-1] is not None
    with pytest.raises(ValueError):
        CollapseGuard(window=7).load_state_dict(a.guard.state_dict())
