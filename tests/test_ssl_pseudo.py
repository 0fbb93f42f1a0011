"""Pseudo-label processing: peaks, confidence weights, view max, threshold-and-refine, cross-student selection."""

import numpy as np
import pytest
import torch

from models.codec import HeatmapCodec
from models.geometry import Size
from training.ssl.pseudo import (
    PseudoLabels,
    aggregate_views,
    confidence_weights,
    cross_student_uncertainty,
    peaks,
    render_gaussians,
    select_by_uncertainty,
    subpixel_peaks,
    threshold_and_refine,
)

torch.set_num_threads(1)
CODEC = HeatmapCodec.for_input(Size(96, 128))  # heatmap w=24, h=32 (non-square)
W, H = CODEC.heatmap_size


def _gauss(x: float, y: float, amp: float = 1.0) -> torch.Tensor:
    """A codec-encoded Gaussian at heatmap px (x, y), scaled by amp: (h, w)."""
    hm, _ = CODEC.encode(np.array([[x, y]]) * CODEC.stride, np.ones(1))
    return torch.from_numpy(hm[0]) * amp


def _noisy_case(seed: int = 0) -> tuple[torch.Tensor, tuple[float, float]]:
    """(1, 2, h, w): joint 0 = 0.8-peak Gaussian at a sub-pixel spot + a 0.5 distractor + noise;
    joint 1 = a faint 0.2 Gaussian + noise (below the 0.3 threshold)."""
    g = torch.Generator().manual_seed(seed)
    truth = (10.2, 17.7)
    j0 = _gauss(*truth, 0.8) + _gauss(4.0, 5.0, 0.5) + 0.015 * torch.randn(H, W, generator=g)
    j1 = _gauss(15.0, 8.0, 0.2) + 0.02 * torch.randn(H, W, generator=g)
    return torch.stack([j0, j1])[None], truth


def test_peaks_value_and_xy_order_on_non_square_map():
    hm = torch.zeros(2, 3, H, W)
    hm[1, 2, 20, 5] = 0.7  # row 20, column 5
    values, coords = peaks(hm)
    assert values.shape == (2, 3) and coords.shape == (2, 3, 2)
    assert values[1, 2] == pytest.approx(0.7)
    assert coords[1, 2].tolist() == [5.0, 20.0]


@pytest.mark.parametrize("seed", range(4))
def test_threshold_and_refine_gives_a_clean_gaussian_at_the_true_peak_and_drops_faint_joints(seed):
    hm, truth = _noisy_case(seed)
    original = hm.clone()
    out = threshold_and_refine(hm, threshold=0.3, sigma=2.0)
    assert torch.equal(hm, original)  # input untouched
    assert out.weights.tolist() == [[1.0, 0.0]]
    assert torch.count_nonzero(out.heatmaps[0, 1]) == 0
    refined = out.heatmaps[0, 0]
    assert refined.max() <= 1.0 and refined.max() > 0.9
    assert refined[5, 4] < 1e-3  # the distractor is gone
    pred, _ = CODEC.decode(out.heatmaps.numpy())
    err = np.abs(pred[0, 0] / CODEC.stride - np.array(truth))
    assert err.max() <= 0.25 + 1e-6
    # clean: exactly a codec Gaussian at the refined centre
    _, centre = subpixel_peaks(hm)
    expected = _gauss(*centre[0, 0].tolist())
    assert torch.allclose(refined, expected, atol=1e-5)


def test_quarter_refinement_keeps_the_codec_decode_and_gaussian_mode_is_exact_on_clean_maps():
    rng = np.random.default_rng(3)
    pts = rng.uniform([2, 2], [W - 3, H - 3], (40, 2))
    hm = torch.stack([_gauss(x, y, 0.9) for x, y in pts])[None]  # (1, 40, h, w)
    out = threshold_and_refine(hm, threshold=0.3)
    before, _ = CODEC.decode(hm.numpy())
    after, _ = CODEC.decode(out.heatmaps.numpy())
    np.testing.assert_allclose(after, before, atol=1e-4)
    _, centres = subpixel_peaks(hm, "gaussian")
    np.testing.assert_allclose(centres[0].numpy(), pts, atol=1e-3)
    noisy, truth = _noisy_case(1)
    _, c = subpixel_peaks(noisy, "gaussian")
    assert np.abs(c[0, 0].numpy() - np.array(truth)).max() < 0.25


def test_threshold_boundary_is_inclusive_and_nan_is_dropped():
    hm = torch.zeros(1, 3, H, W)
    hm[0, 0, 3, 3] = 0.3
    hm[0, 1, 3, 3] = 0.2999
    hm[0, 2, 3, 3] = float("nan")
    assert threshold_and_refine(hm, threshold=0.3).weights.tolist() == [[1.0, 0.0, 0.0]]


def test_confidence_weights_hard_soft_and_non_finite():
    hm = torch.zeros(1, 4, 5, 4)
    for j, v in enumerate([0.05, 0.5, 1.7, float("nan")]):
        hm[0, j, 2, 1] = v
    assert confidence_weights(hm, threshold=0.1).tolist() == [[0.0, 1.0, 1.0, 0.0]]
    soft = confidence_weights(hm, threshold=0.1, soft=True)
    assert soft.tolist() == [[0.0, 0.5, 1.0, 0.0]]
    assert confidence_weights(hm, threshold=0.0, soft=True)[0, 0] == pytest.approx(0.05)


def test_aggregate_views_is_the_pixelwise_max():
    g = torch.Generator().manual_seed(0)
    views = [torch.rand(2, 3, 6, 5, generator=g) for _ in range(3)]
    copies = [v.clone() for v in views]
    agg = aggregate_views(views)
    assert torch.equal(agg, torch.maximum(torch.maximum(views[0], views[1]), views[2]))
    assert all(torch.equal(v, c) for v, c in zip(views, copies))
    with pytest.raises(ValueError):
        aggregate_views([views[0], views[1][:, :2]])


def test_cross_student_uncertainty_zero_when_identical_and_growing_with_disagreement():
    a = _gauss(12.0, 16.0)[None, None]
    assert cross_student_uncertainty(a, a.clone()).item() == 0.0
    u = [cross_student_uncertainty(a, _gauss(12.0 + d, 16.0)[None, None]).item() for d in (0.5, 1, 2, 4, 8)]
    assert all(x < y for x, y in zip(u, u[1:]))
    one = torch.zeros(1, 1, 3, 3)
    one[0, 0, 1, 1] = 1.0
    assert cross_student_uncertainty(one, torch.zeros_like(one)).item() == pytest.approx(0.5)  # |a-b|/2


def test_select_by_uncertainty_picks_the_lower_uncertainty_candidate_per_joint():
    g = torch.Generator().manual_seed(0)
    cands = [PseudoLabels(torch.rand(2, 3, 4, 5, generator=g), torch.ones(2, 3)) for _ in range(2)]
    u0 = torch.tensor([[0.1, 0.9, 0.5], [0.7, 0.2, 0.3]])
    u1 = torch.tensor([[0.2, 0.3, 0.5], [0.1, 0.6, 0.9]])
    out = select_by_uncertainty(cands, [u0, u1])
    winner = torch.tensor([[0, 1, 0], [1, 0, 0]])  # the tie at [0, 2] goes to the first candidate
    for n in range(2):
        for k in range(3):
            assert torch.equal(out.heatmaps[n, k], cands[int(winner[n, k])].heatmaps[n, k])
    # a dropped candidate (weight 0) is not eligible, however certain; no eligible candidate → weight 0
    cands[0].weights[0, 0] = 0.0
    cands[0].weights[1, 1] = 0.0
    cands[1].weights[1, 1] = 0.0
    out = select_by_uncertainty(cands, [u0, u1])
    assert torch.equal(out.heatmaps[0, 0], cands[1].heatmaps[0, 0]) and out.weights[0, 0] == 1.0
    assert out.weights[1, 1] == 0.0
    raw = select_by_uncertainty(cands, [u0, u1], ignore_dropped=False)
    assert raw.weights[0, 0] == 0.0 and torch.equal(raw.heatmaps[0, 0], cands[0].heatmaps[0, 0])


def test_render_gaussians_matches_codec_encode():
    centres = torch.tensor([[[3.25, 7.5], [20.0, 30.0]]])
    hm = render_gaussians(centres, (H, W), 2.0)
    for k in range(2):
        assert torch.allclose(hm[0, k], _gauss(*centres[0, k].tolist()), atol=1e-6)
