"""PCK, PCKh and COCO keypoint AP: hand-computed examples and the COCO fixture."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from models.schemas import LSP14, LSP_TORSO, MPII16
from tests.data_paths import data_path
from training.datasets import load_coco_keypoints, load_mpii
from training.evaluation import (
    coco_keypoint_ap,
    confidence_reliability,
    lsp_pck,
    mpii_head_size_from_box,
    mpii_head_size_from_headbox,
    paired_bootstrap_delta,
    pck,
    pckh,
    to_coco_results,
    torso_size,
)


def offsets(gt: np.ndarray, d: np.ndarray) -> np.ndarray:
    """pred = gt + d, with d broadcast to (N, K, 2)."""
    return gt + np.broadcast_to(d, gt.shape)


# ---------------------------------------------------------------- PCK


@pytest.mark.filterwarnings("error")
def test_pck_hand_example_with_inclusive_boundary():
    # normaliser 10, threshold 0.5 -> radius 5. Errors per joint:
    # person 0: 5 (3-4-5, on the boundary: correct), 5.01 (wrong), 0 (correct)
    # person 1: 4 (correct), 6 (wrong), NaN prediction (wrong)
    gt = np.zeros((2, 3, 2))
    pred = np.array([[[3, 4], [5.01, 0], [0, 0]], [[0, 4], [6, 0], [np.nan, np.nan]]])
    res = pck(pred, gt, np.ones((2, 3), bool), np.array([10.0, 10.0]), threshold=0.5)
    np.testing.assert_allclose(res.per_joint, [100, 0, 50])
    assert res.overall == pytest.approx(100 * 3 / 6)
    assert res.subset == {}


def test_pck_threshold_boundary_float_exact():
    # 0.2 * 25 = 5 and the error is exactly 5: error / normaliser == 0.2 is correct (<=)
    gt = np.zeros((1, 1, 2))
    assert pck(np.array([[[3.0, 4.0]]]), gt, [[True]], [25.0], threshold=0.2).overall == 100.0
    assert pck(np.array([[[3.0, 4.0001]]]), gt, [[True]], [25.0], threshold=0.2).overall == 0.0


def test_pck_perfect_prediction_is_100():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 100, (7, 5, 2))
    res = pck(gt.copy(), gt, np.ones((7, 5), bool), np.full(7, 3.0), joint_subsets={"ab": [0, 1]})
    assert res.overall == 100.0 and res.subset == {"ab": 100.0}
    np.testing.assert_array_equal(res.per_joint, 100.0)


@pytest.mark.filterwarnings("error")
def test_pck_unlabeled_joints_and_bad_normalisers_are_excluded():
    gt = np.zeros((3, 3, 2))
    pred = offsets(gt, np.array([100.0, 0.0]))  # every prediction wrong ...
    pred[:, 1] = 0.0  # ... except joint 1
    mask = np.ones((3, 3), bool)
    mask[:, 2] = False  # joint 2 never labeled -> NaN, not in overall
    mask[0, 0] = False  # one unlabeled entry
    res = pck(pred, gt, mask, np.array([1.0, 1.0, 0.0]))  # person 2: zero normaliser -> excluded
    # counted: person 0 joint 1; person 1 joints 0, 1 -> correct: joint 1 twice
    assert np.isnan(res.per_joint[2])
    np.testing.assert_allclose(res.per_joint[:2], [0.0, 100.0])
    assert res.overall == pytest.approx(100 * 2 / 3)
    empty = pck(pred, gt, np.zeros((3, 3), bool), np.ones(3), joint_subsets={"s": [0]})
    assert np.isnan(empty.overall) and np.isnan(empty.subset["s"]) and np.isnan(empty.per_joint).all()


def test_pck_subsets_pool_counts():
    gt = np.zeros((2, 2, 2))
    pred = gt.copy()
    pred[0, 1] = [9, 0]  # joint 1 of person 0 wrong
    mask = np.array([[True, True], [False, True]])
    res = pck(pred, gt, mask, np.ones(2), threshold=1.0, joint_subsets={"both": [0, 1], "j1": [1]})
    assert res.subset["both"] == pytest.approx(100 * 2 / 3)  # pooled, not mean of (100, 50)
    assert res.subset["j1"] == pytest.approx(50.0)
    assert res.correct.tolist() == [[True, False], [False, True]]  # per-person booleans behind the percentages
    assert res.counted.tolist() == mask.tolist()


def test_paired_bootstrap_delta_separates_a_real_difference_from_person_luck():
    rng = np.random.default_rng(1)
    counted = np.full(200, 12)
    base = rng.binomial(12, 0.45, 200)
    delta, low, high = paired_bootstrap_delta(base, base, counted)
    assert (delta, low, high) == (0.0, 0.0, 0.0)  # same predictions: no spread at all
    better = np.minimum(base + rng.binomial(1, 0.5, 200), 12)  # about +0.5 joint per person: a real gain
    delta, low, high = paired_bootstrap_delta(better, base, counted)
    assert delta == pytest.approx(100 * (better.sum() - base.sum()) / counted.sum())
    assert 0 < low < delta < high
    noisy = np.clip(base + rng.integers(-1, 2, 200), 0, 12)  # unbiased per-person noise
    delta, low, high = paired_bootstrap_delta(noisy, base, counted)
    assert low < 0 < high
    with pytest.raises(ValueError, match="equal-length"):
        paired_bootstrap_delta(base[:10], base, counted)


def test_confidence_reliability_bins_and_thresholds_by_hand():
    # 10 counted joints with peaks 0.05 .. 0.95; the five most confident are right, the rest wrong
    scores = np.arange(0.05, 1.0, 0.1).reshape(2, 5)
    correct = scores > 0.5
    counted = np.ones_like(correct)
    counted[0, 0] = False  # an uncounted joint (peak 0.05) must drop out everywhere
    out = confidence_reliability(correct, counted, scores, thresholds=(0.5, 0.9, 1.0), bins=3)
    assert out["joints"] == 9 and out["pck"] == pytest.approx(100 * 5 / 9)
    assert [b["pck"] for b in out["quantile_bins"]] == [
        0.0,
        pytest.approx(200 / 3),
        100.0,
    ]  # peaks 0.15-0.35 / 0.45-0.65 / 0.75-0.95
    assert sum(b["share"] for b in out["quantile_bins"]) == pytest.approx(1.0)
    half, high, none = out["thresholds"]
    assert (half["kept"], half["pck_kept"], half["pck_dropped"]) == (pytest.approx(5 / 9), 100.0, 0.0)
    assert high["kept"] == pytest.approx(1 / 9) and high["pck_dropped"] == pytest.approx(100 * 4 / 8)
    assert none["kept"] == 0.0 and np.isnan(none["pck_kept"]) and none["pck_dropped"] == pytest.approx(100 * 5 / 9)
    with pytest.raises(ValueError, match="one shape"):
        confidence_reliability(correct, counted, scores[:1])


def test_per_person_and_reliability_scores_refuse_non_lsp_datasets():
    from training.evaluator import evaluate_model

    for flag in ("per_person", "reliability"):  # refused before any prediction, instead of silently left out
        with pytest.raises(ValueError, match="LSP PCK only, not mpii"):
            evaluate_model(
                None,
                [],
                dataset="mpii",
                codec=None,
                mean=None,
                std=None,
                padding=1.25,
                flip_test=False,
                batch_size=1,
                **{flag: True},
            )


def test_pck_rejects_bad_shapes():
    with pytest.raises(ValueError):
        pck(np.zeros((2, 3, 2)), np.zeros((2, 4, 2)), np.ones((2, 3), bool), np.ones(2))
    with pytest.raises(ValueError):
        pck(np.zeros((2, 3, 2)), np.zeros((2, 3, 2)), np.ones((2, 3), bool), np.ones(3))


def lsp_person(torso: float) -> np.ndarray:
    """(14, 2) LSP ground truth whose left shoulder <-> right hip distance is `torso`."""
    gt = np.tile(np.arange(14, dtype=float)[:, None], (1, 2)) * 7.0
    lsho, rhip = LSP_TORSO
    gt[lsho] = [50.0, 50.0]
    gt[rhip] = [50.0 + 0.6 * torso, 50.0 + 0.8 * torso]
    return gt


def test_torso_size_uses_left_shoulder_right_hip():
    assert (LSP14.index("left_shoulder"), LSP14.index("right_hip")) == LSP_TORSO
    gt = np.stack([lsp_person(10.0), lsp_person(25.0)])
    np.testing.assert_allclose(torso_size(gt, *LSP_TORSO), [10.0, 25.0])


def test_lsp_pck_threshold_and_subsets():
    gt = np.stack([lsp_person(10.0), lsp_person(20.0)])
    # offset 2 px: 0.2 * 10 = 2 on the boundary for person 0, 0.1 for person 1 -> all correct
    assert lsp_pck(offsets(gt, np.array([2.0, 0.0])), gt).overall == 100.0
    res = lsp_pck(offsets(gt, np.array([3.0, 0.0])), gt)  # wrong for person 0 only
    assert res.overall == pytest.approx(50.0)
    assert res.subset["limbs"] == pytest.approx(50.0) and res.subset["all"] == pytest.approx(50.0)
    pred = gt.copy()
    pred[:, 12:] += 100  # neck and head top wrong: limbs unaffected
    res = lsp_pck(pred, gt)
    assert res.subset["limbs"] == 100.0
    assert res.subset["all"] == pytest.approx(100 * 12 / 14) == res.overall
    assert np.isnan(lsp_pck(pred, gt, mask=np.zeros((2, 14), bool)).overall)


# ---------------------------------------------------------------- PCKh


def test_pckh_threshold_mean_and_subsets():
    gt = np.random.default_rng(1).uniform(0, 200, (2, 16, 2))
    mask = np.ones((2, 16), bool)
    head = np.array([10.0, 4.0])
    # offset 2: 0.5 * 4 = 2 on the boundary for person 1 -> all correct
    res = pckh(offsets(gt, np.array([0.0, 2.0])), gt, mask, head)
    assert res.overall == 100.0 and res.subset["mean"] == 100.0
    res = pckh(offsets(gt, np.array([0.0, 3.0])), gt, mask, head)  # wrong for person 1 only
    assert res.overall == pytest.approx(50.0) and res.subset["wrist"] == pytest.approx(50.0)
    pred = gt.copy()
    pelvis, thorax, head_top = (MPII16.index(n) for n in ("pelvis", "thorax", "head_top"))
    pred[:, [pelvis, thorax]] += 50
    pred[:, head_top] += 50
    res = pckh(pred, gt, mask, head)
    assert res.subset["mean"] == pytest.approx(100 * 13 / 14)  # mean leaves out pelvis and thorax
    assert res.overall == pytest.approx(100 * 13 / 16)
    assert res.subset["head"] == 0.0 and res.subset["ankle"] == 100.0
    mask[:, 0] = False
    res = pckh(gt, gt, mask, head)
    assert np.isnan(res.per_joint[0]) and res.overall == 100.0
    assert pckh(gt[:, :14], gt[:, :14], mask[:, :14], head).subset == {}  # not MPII: no default subsets


def test_mpii_head_sizes():
    boxes = np.array([[[0, 0], [30, 40]], [[5, 5], [8, 9]]], float)
    np.testing.assert_allclose(mpii_head_size_from_headbox(boxes), [0.6 * 50, 0.6 * 5])
    np.testing.assert_allclose(mpii_head_size_from_box(np.array([[0, 0, 120, 120], [1, 1, 60, 90]])), [20, 15])


@pytest.mark.data
def test_mpii_box_fallback_equals_head_segment_on_fixture():
    ann = data_path("fixtures", "mpii", "test_mpii.json")
    records = load_mpii(ann, ann.parent)
    neck, top = MPII16.index("upper_neck"), MPII16.index("head_top")
    segment = np.array([np.linalg.norm(r.keypoints[top] - r.keypoints[neck]) for r in records])
    fallback = mpii_head_size_from_box(np.stack([r.box for r in records]))
    np.testing.assert_allclose(fallback, segment, rtol=1e-4)


# ---------------------------------------------------------------- COCO AP


def _gt_results(records) -> list[dict]:
    return [
        {
            "image_id": r.image_id,
            "category_id": 1,
            "keypoints": np.c_[r.keypoints, r.visibility].reshape(-1).tolist(),
            "score": 1.0,
        }
        for r in records
    ]


@pytest.mark.data
def test_coco_ap_is_100_for_ground_truth_and_drops_when_perturbed():
    ann = data_path("fixtures", "coco", "test_coco.json")
    records = load_coco_keypoints(ann, ann.parent)
    results = _gt_results(records)
    before = json.dumps(results)
    stats = coco_keypoint_ap(results, ann)
    assert json.dumps(results) == before  # caller's dicts untouched
    assert stats["AP"] == pytest.approx(100.0) and stats["AR"] == pytest.approx(100.0)
    assert set(stats) == {"AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"}
    rng = np.random.default_rng(0)
    noisy = []
    for r in records:
        kpts = r.keypoints + rng.normal(0, 0.1 * np.sqrt(r.area), r.keypoints.shape)
        noisy.append({**_gt_results([r])[0], "keypoints": np.c_[kpts, r.visibility].reshape(-1).tolist()})
    perturbed = coco_keypoint_ap(noisy, ann)
    assert perturbed["AP"] < 90.0
    # a single person's keypoints wrong: still lower than perfect
    shifted = {**results[1], "keypoints": (np.asarray(results[1]["keypoints"]) + 40).tolist()}
    one_off = results[:1] + [shifted] + results[2:]
    assert coco_keypoint_ap(one_off, ann)["AP"] < 100.0


@pytest.mark.data
def test_coco_ap_image_subset_and_results_helper():
    ann = data_path("fixtures", "coco", "test_coco.json")
    records = [r for r in load_coco_keypoints(ann, ann.parent) if r.image_id == 197388]
    results = to_coco_results(
        [r.image_id for r in records], np.stack([r.keypoints for r in records]), np.ones((len(records), 17))
    )
    assert results[0]["keypoints"][:3] == [*records[0].keypoints[0].tolist(), 1.0] and results[0]["score"] == 1.0
    assert coco_keypoint_ap(results, ann, image_ids=[197388])["AP"] == pytest.approx(100.0)
    assert coco_keypoint_ap(results, ann)["AP"] < 100.0  # the other images' people are missed
    with pytest.raises(ValueError):
        coco_keypoint_ap([], ann)


def test_evaluation_and_datasets_do_not_import_torch():
    code = "import sys, training.evaluation, training.datasets; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
