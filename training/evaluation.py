"""Pose metrics: PCK (LSP, PCK@0.2 of torso), PCKh (MPII, PCKh@0.5) and COCO keypoint AP. Numpy only.

Shapes: N persons, K joints; coordinates in any common pixel space (image pixels usually).
All results are percentages (0-100).

PCK rules used throughout:
- A joint counts when its ground truth is labeled (`mask`) and its person's normaliser is finite
  and > 0; everything else is excluded, not counted as wrong.
- A prediction is correct when ||pred - gt|| / normaliser <= threshold: the boundary is inclusive,
  as in the official MPII evaluation (HRNet `scaled_uv_err <= threshold`). A NaN prediction is wrong.
- per_joint[k] = correct / counted for joint k, NaN where joint k has nothing counted.
- overall and each subset pool all counted joints (correct / counted), i.e. the per-joint values
  weighted by their counts; joints with no labels drop out. This is HRNet's MPII "Mean"; HRNet's
  left/right pairs ("Shoulder" etc.) average the two per-joint values instead, which differs only
  when the two counts differ.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.schemas import LSP_LIMB_JOINTS, LSP_TORSO, MPII16

# MPII report columns (HRNet `mpii.py`): "mean" leaves out pelvis and thorax, as HRNet's "Mean" does.
MPII_SUBSETS: dict[str, tuple[int, ...]] = {
    "head": (MPII16.index("head_top"),),
    "shoulder": (MPII16.index("left_shoulder"), MPII16.index("right_shoulder")),
    "elbow": (MPII16.index("left_elbow"), MPII16.index("right_elbow")),
    "wrist": (MPII16.index("left_wrist"), MPII16.index("right_wrist")),
    "hip": (MPII16.index("left_hip"), MPII16.index("right_hip")),
    "knee": (MPII16.index("left_knee"), MPII16.index("right_knee")),
    "ankle": (MPII16.index("left_ankle"), MPII16.index("right_ankle")),
    "mean": tuple(k for k in range(16) if MPII16.keypoints[k] not in ("pelvis", "thorax")),
}
LSP_SUBSETS: dict[str, tuple[int, ...]] = {"limbs": tuple(LSP_LIMB_JOINTS), "all": tuple(range(14))}
SC_BIAS = 0.6  # MPII head size = SC_BIAS x head-box diagonal
COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


@dataclass
class PCKResult:
    """Percentages. per_joint: (K,), NaN for joints with nothing counted; subset: name -> pooled PCK.
    correct / counted: the (N, K) booleans behind them, kept for per-person statistics (paired bootstrap)."""

    overall: float
    per_joint: np.ndarray
    subset: dict[str, float] = field(default_factory=dict)
    correct: np.ndarray | None = field(default=None, repr=False)
    counted: np.ndarray | None = field(default=None, repr=False)


def paired_bootstrap_delta(
    correct_a: Sequence[int], correct_b: Sequence[int], counted: Sequence[int], resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """(delta, low, high): pooled PCK of A minus B in points, with a 95% percentile interval from resampling
    persons (both models scored on the same resampled persons). Per-person joint counts are the input, so the
    spread reflects which people are in the validation set — the dominant noise with 200 persons."""
    a, b, n = (np.asarray(x, dtype=np.float64) for x in (correct_a, correct_b, counted))
    if not (a.shape == b.shape == n.shape) or a.ndim != 1 or n.sum() <= 0:
        raise ValueError("correct_a, correct_b and counted must be equal-length per-person counts")
    idx = np.random.default_rng(seed).integers(0, len(n), size=(resamples, len(n)))
    deltas = 100.0 * (a[idx].sum(1) - b[idx].sum(1)) / np.maximum(n[idx].sum(1), 1)
    low, high = np.percentile(deltas, [2.5, 97.5])
    return float(100.0 * (a.sum() - b.sum()) / n.sum()), float(low), float(high)


def confidence_reliability(
    correct: np.ndarray,
    counted: np.ndarray,
    scores: np.ndarray,
    thresholds: Sequence[float] = (0.3, 0.5, 0.6, 0.7, 0.8),
    bins: int = 5,
) -> dict:
    """How far a model's heatmap peaks can be trusted as pseudo-labels: PCK of its joints per confidence
    quantile bin, and for each threshold τ the share of joints a `confidence_threshold` of τ would keep with
    the PCK of kept and dropped ones. Inputs are (N, K) arrays over the joints to study (e.g. the limbs)."""
    correct, counted = np.asarray(correct, dtype=bool), np.asarray(counted, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    if not (correct.shape == counted.shape == scores.shape) or not counted.any():
        raise ValueError("correct, counted and scores must have one shape, with at least one joint counted")
    ok, conf = correct[counted], scores[counted]

    def pck_of(selected: np.ndarray) -> float:
        return float(100.0 * ok[selected].mean()) if selected.any() else float("nan")

    edges = np.quantile(conf, np.linspace(0.0, 1.0, bins + 1))
    which = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, bins - 1)  # the top edge joins the last bin
    quantile_bins = [
        {
            "low": float(edges[i]),
            "high": float(edges[i + 1]),
            "share": float(np.mean(which == i)),
            "pck": pck_of(which == i),
        }
        for i in range(bins)
    ]
    cuts = [
        {
            "threshold": float(t),
            "kept": float(np.mean(conf >= t)),
            "pck_kept": pck_of(conf >= t),
            "pck_dropped": pck_of(conf < t),
        }
        for t in thresholds
    ]
    return {
        "joints": int(ok.size),
        "pck": pck_of(np.ones(ok.size, bool)),
        "quantile_bins": quantile_bins,
        "thresholds": cuts,
    }


def _ratio(correct: np.ndarray, counted: np.ndarray) -> float:
    total = counted.sum()
    return float(100.0 * correct.sum() / total) if total > 0 else float("nan")


def pck(
    pred: np.ndarray,
    gt: np.ndarray,
    mask: np.ndarray,
    normaliser: np.ndarray,
    threshold: float = 0.2,
    joint_subsets: Mapping[str, Sequence[int]] | None = None,
) -> PCKResult:
    """Percentage of correct keypoints (module docstring has the counting rules).

    Args:
        pred, gt: (N, K, 2).
        mask: (N, K) bool, True where the ground truth is labeled.
        normaliser: (N,) per-person length (torso, head size) in the same units as the coordinates.
        threshold: fraction of the normaliser.
        joint_subsets: name -> joint indices, pooled into `PCKResult.subset`.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 2:
        raise ValueError(f"pred and gt must both be (N, K, 2); got {pred.shape} and {gt.shape}")
    n, k = gt.shape[:2]
    mask = np.asarray(mask, dtype=bool)
    normaliser = np.asarray(normaliser, dtype=np.float64).reshape(-1)
    if mask.shape != (n, k) or normaliser.shape != (n,):
        raise ValueError(f"mask must be ({n}, {k}) and normaliser ({n},); got {mask.shape}, {normaliser.shape}")
    valid_person = np.isfinite(normaliser) & (normaliser > 0)
    counted = mask & valid_person[:, None]
    safe_norm = np.where(valid_person, normaliser, 1.0)
    with np.errstate(invalid="ignore"):
        error = np.linalg.norm(pred - gt, axis=-1) / safe_norm[:, None]
        correct = counted & (error <= threshold)
    per_count = counted.sum(axis=0)
    per_joint = np.full(k, np.nan)
    has = per_count > 0
    per_joint[has] = 100.0 * correct.sum(axis=0)[has] / per_count[has]
    subset = {name: _ratio(correct[:, list(idx)], counted[:, list(idx)]) for name, idx in (joint_subsets or {}).items()}
    return PCKResult(
        overall=_ratio(correct, counted), per_joint=per_joint, subset=subset, correct=correct, counted=counted
    )


def torso_size(gt: np.ndarray, left_shoulder_idx: int, right_hip_idx: int) -> np.ndarray:
    """(N,) distance between the left shoulder and the right hip of each (N, K, 2) ground truth."""
    gt = np.asarray(gt, dtype=np.float64)
    return np.linalg.norm(gt[:, left_shoulder_idx] - gt[:, right_hip_idx], axis=-1)


def lsp_pck(
    pred: np.ndarray,
    gt: np.ndarray,
    threshold: float = 0.2,
    mask: np.ndarray | None = None,
) -> PCKResult:
    """LSP PCK@0.2: normaliser = torso (left shoulder <-> right hip of the ground truth).

    LSP labels every joint (occluded ones too), so by default all 14 count. Subsets: "limbs"
    (the 12 limb joints, no neck and head top) and "all".
    """
    gt = np.asarray(gt)
    if mask is None:
        mask = np.ones(gt.shape[:2], dtype=bool)
    return pck(pred, gt, mask, torso_size(gt, *LSP_TORSO), threshold, LSP_SUBSETS)


def pckh(
    pred: np.ndarray,
    gt: np.ndarray,
    mask: np.ndarray,
    head_sizes: np.ndarray,
    threshold: float = 0.5,
    joint_subsets: Mapping[str, Sequence[int]] | None = None,
) -> PCKResult:
    """MPII PCKh@0.5: normaliser = head size.

    `head_sizes` are used as given. The official value is SC_BIAS (0.6) x head-box diagonal
    (`mpii_head_size_from_headbox`, as MPII's evaluation code and HRNet). Without head boxes,
    `mpii_head_size_from_box` gives the head segment length instead: an approximation, so the
    numbers are not comparable with published MPII results.
    `joint_subsets` None: MPII_SUBSETS when K = 16, none otherwise.
    """
    if joint_subsets is None:
        joint_subsets = MPII_SUBSETS if np.shape(gt)[1] == MPII16.num_keypoints else {}
    return pck(pred, gt, mask, head_sizes, threshold, joint_subsets)


def mpii_head_size_from_headbox(headboxes: np.ndarray) -> np.ndarray:
    """(N,) official MPII head sizes from (N, 2, 2) head boxes [[x1, y1], [x2, y2]]: 0.6 x diagonal."""
    headboxes = np.asarray(headboxes, dtype=np.float64)
    return SC_BIAS * np.linalg.norm(headboxes[:, 1] - headboxes[:, 0], axis=-1)


def mpii_head_size_from_box(boxes: np.ndarray) -> np.ndarray:
    """(N,) fallback head sizes from MPII person boxes (N, 4) xywh (squares of side scale x 200).

    MPII's person scale is tied to the head: on every fixture person, scale x 200 is exactly
    6 x the upper-neck <-> head-top distance. So side / 6 is the head segment length, which
    the PCKh paper names as the normaliser; how it relates to 0.6 x head-box diagonal (the
    official code) cannot be checked without head boxes.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.maximum(boxes[:, 2], boxes[:, 3]) / 6.0


def to_coco_results(
    image_ids: Sequence[int],
    keypoints: np.ndarray,
    keypoint_scores: np.ndarray,
    scores: Sequence[float] | None = None,
    category_id: int = 1,
) -> list[dict]:
    """COCO keypoint results from (N, K, 2) predictions and (N, K) confidences.

    Instance score defaults to the mean keypoint confidence; the per-keypoint v slot holds the
    keypoint confidence (COCO ignores it in OKS).
    """
    keypoints = np.asarray(keypoints, dtype=np.float64)
    keypoint_scores = np.asarray(keypoint_scores, dtype=np.float64)
    if scores is None:
        scores = keypoint_scores.mean(axis=1)
    results = []
    for image_id, kpts, kscores, score in zip(image_ids, keypoints, keypoint_scores, scores):
        flat = np.concatenate([kpts, kscores[:, None]], axis=1).reshape(-1)
        results.append(
            {"image_id": int(image_id), "category_id": category_id, "keypoints": flat.tolist(), "score": float(score)}
        )
    return results


def coco_keypoint_ap(
    results: list[dict],
    ann_file_or_coco,
    sigmas: Sequence[float] | None = None,
    image_ids: Sequence[int] | None = None,
) -> dict[str, float]:
    """COCO keypoint AP/AR (pycocotools COCOeval, iouType "keypoints"), as percentages.

    Args:
        results: COCO result dicts {image_id, category_id, keypoints: [x, y, v] * K, score};
            not modified (pycocotools would add fields, so it gets copies).
        ann_file_or_coco: a ground-truth json path or a pycocotools COCO object.
        sigmas: per-keypoint OKS sigmas; None keeps pycocotools' COCO-17 values.
        image_ids: evaluate these images only; None: every image of the ground truth.

    Returns: {"AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"}; NaN where
    pycocotools reports -1 (no ground truth in that area range).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:
        raise ValueError("coco_keypoint_ap: no results to evaluate")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = ann_file_or_coco if isinstance(ann_file_or_coco, COCO) else COCO(str(Path(ann_file_or_coco)))
        coco_dt = coco_gt.loadRes([{**r, "keypoints": list(r["keypoints"])} for r in results])
        evaluator = COCOeval(coco_gt, coco_dt, iouType="keypoints")
        if sigmas is not None:
            evaluator.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        if image_ids is not None:
            evaluator.params.imgIds = sorted(int(i) for i in image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {
        name: float(100.0 * value) if value >= 0 else float("nan")
        for name, value in zip(COCO_STAT_NAMES, evaluator.stats)
    }
