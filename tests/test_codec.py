"""Heatmap codec: encode→decode round trips, refinements, flip-back, metadata."""

import numpy as np
import pytest

from models.codec import HeatmapCodec
from models.geometry import Size, crop_affine, flip_affine, transform_points
from models.schemas import LSP14

CODEC = HeatmapCodec.for_input(Size(96, 128))  # heatmap 24 x 32


def _roundtrip(refinement, margin, n=700, seed=0):
    rng = np.random.default_rng(seed)
    w, h = CODEC.heatmap_size
    hm_pts = rng.uniform([margin, margin], [w - 1 - margin, h - 1 - margin], (n, 2))
    kpts = hm_pts * CODEC.stride
    heatmaps = np.stack([CODEC.encode(kpts[i : i + 14], np.ones(14))[0] for i in range(0, n, 14)])
    pred, scores = CODEC.decode(heatmaps, refinement)
    err = np.abs(pred.reshape(-1, 2) - kpts) / CODEC.stride
    return err, scores


def test_dark_roundtrip_under_a_tenth_of_a_heatmap_pixel():
    err, scores = _roundtrip("dark", margin=3)
    assert err.max() < 0.1
    assert scores.min() > 0.9


def test_quarter_and_argmax_error_bounds():
    err_q, _ = _roundtrip("quarter", margin=1)
    err_n, _ = _roundtrip("none", margin=1)
    assert err_n.max() <= 0.5 + 1e-6
    assert err_q.max() <= 0.25 + 1e-6
    assert err_q.mean() < err_n.mean()


def test_encode_weights_and_peak():
    kpts = np.array([[40.0, 60.0], [-100.0, 10.0], [10.0, 10.0]])
    hm, w = CODEC.encode(kpts, np.array([1, 1, 0]))
    assert hm.shape == (3, 32, 24) and hm.dtype == np.float32
    assert w.tolist() == [1.0, 0.0, 0.0]  # far outside → 0; unlabeled → 0
    assert hm[0].max() == pytest.approx(1.0, abs=1e-6)
    assert hm[0].argmax() == 15 * 24 + 10  # (x=10, y=15) in heatmap pixels: x is the column
    assert hm[1].max() == 0 and hm[2].max() == 0


def test_decode_to_image_through_inverse_affine():
    m = crop_affine(np.array([150.0, 90.0]), np.array([120.0, 160.0]), 20.0, CODEC.input_size)
    img_pts = np.array([[140.0, 80.0], [170.0, 120.0], [130.0, 60.0]])
    crop_pts = transform_points(img_pts, m)
    hm, _ = CODEC.encode(crop_pts, np.ones(3))
    pred, _ = CODEC.decode(hm[None], "dark")
    back = CODEC.to_image(pred, m[None])
    assert np.abs(back[0] - img_pts).max() < 0.5


def test_flip_back_recovers_mirrored_prediction():
    """Heatmaps of a mirrored crop, flipped back, peak at the original joints (within the 1-px shift rule)."""
    rng = np.random.default_rng(1)
    kpts = rng.uniform([16, 16], [80, 112], (14, 2))  # ≥ 4 heatmap px from the border (DARK blur)
    mirrored = transform_points(kpts, flip_affine(CODEC.input_size.w))[LSP14.flip_index]
    hm_mirror, _ = CODEC.encode(mirrored, np.ones(14))
    back = CODEC.flip_back(hm_mirror[None], LSP14.flip_index, shift=True)
    pred, _ = CODEC.decode(back, "dark")
    err = np.abs(pred[0] - kpts) / CODEC.stride
    # exact offset of a stride-4 mirror is 0.75 px; the 1-px shift leaves 0.25 px in x
    assert err[:, 0].max() < 0.35 and err[:, 1].max() < 0.1
    no_shift, _ = CODEC.decode(CODEC.flip_back(hm_mirror[None], LSP14.flip_index, shift=False), "dark")
    assert np.abs(no_shift[0, :, 0] - kpts[:, 0]).mean() / 4 > 0.6  # unshifted is clearly worse


def test_metadata_strings():
    meta = CODEC.to_metadata()
    assert meta["poseloop.input_size"] == "128,96"
    assert meta["poseloop.heatmap_stride"] == "4"
