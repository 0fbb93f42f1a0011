"""Dataset-specific validation: LSP PCK@0.2, MPII PCKh@0.5, COCO OKS AP — one call for the trainer and CLI."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from models.codec import HeatmapCodec
from training import evaluation
from training.datasets.records import PersonRecord
from training.inference import predict_records


def metric_name(dataset: str) -> str:
    """The scalar that selects the best checkpoint (higher is better)."""
    return {"lsp": "pck_limbs", "mpii": "pckh", "coco": "ap"}[dataset]


def _ground_truth(records: list[PersonRecord]) -> tuple[np.ndarray, np.ndarray]:
    """Stacked (N, K, 2) keypoints and (N, K) visibility of labeled records (ValueError on an unlabeled one)."""
    keypoints, visibility = [], []
    for r in records:
        if r.keypoints is None or r.visibility is None:
            raise ValueError(f"{r.record_id} is unlabeled: evaluation needs ground-truth keypoints")
        keypoints.append(r.keypoints)
        visibility.append(r.visibility)
    return np.stack(keypoints), np.stack(visibility)


def _in_lsp14(schema: str, pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predictions and labels of LSP records mapped into `schema` (training/data.py remap_record), mapped back to
    LSP-14 by joint name; the mask leaves out the LSP joints `schema` lacks (e.g. COCO-17 has no neck, head top)."""
    from models.schema_map import joint_map
    from models.schemas import LSP14, get_schema

    mapping = joint_map(get_schema(schema), LSP14)
    known = mapping >= 0
    index = np.where(known, mapping, 0)
    mask = np.broadcast_to(known, (len(gt), len(known))).copy()
    back_pred = np.where(known[None, :, None], pred[:, index], 0.0)
    back_gt = np.where(known[None, :, None], gt[:, index], 0.0)
    return back_pred, back_gt, mask


def evaluate_model(
    model: torch.nn.Module,
    records: list[PersonRecord],
    *,
    dataset: str,
    codec: HeatmapCodec,
    mean,
    std,
    padding: float,
    flip_test: bool,
    batch_size: int,
    device: torch.device | str = "cpu",
    coco_gt=None,
    per_person: bool = False,
    reliability: bool = False,
) -> dict[str, Any]:
    """Predict every record and score it; returns flat metrics (percentages for PCK, 0–100 AP).
    per_person (LSP): also "per_person" = correct and counted limb joints of each record, in order — what a
    paired bootstrap between two models needs. reliability (LSP): also "reliability" = limb PCK by heatmap
    peak (`evaluation.confidence_reliability`), i.e. how good this model's pseudo-labels would be."""
    if (per_person or reliability) and dataset != "lsp":
        raise ValueError(f"per-person and reliability scores are LSP PCK only, not {dataset}")
    pred = predict_records(
        model, records, codec, mean, std, padding=padding, flip_test=flip_test, batch_size=batch_size, device=device
    )
    if dataset == "lsp":
        gt, _ = _ground_truth(records)
        predicted, mask = pred.keypoints, None
        if records[0].schema != "lsp14":  # a model in another schema: LSP PCK on the joints both schemas share
            predicted, gt, mask = _in_lsp14(records[0].schema, predicted, gt)
        result = evaluation.lsp_pck(predicted, gt, mask=mask)
        correct, counted = result.correct, result.counted
        assert correct is not None and counted is not None  # pck() always keeps them
        metrics: dict[str, Any] = {"pck_all": result.subset["all"], "pck_limbs": result.subset["limbs"]}
        from models.schemas import LSP14

        metrics.update(
            {f"pck/{name}": float(v) for name, v in zip(LSP14.keypoints, result.per_joint) if np.isfinite(v)}
        )
        limbs = list(evaluation.LSP_SUBSETS["limbs"])
        if per_person:
            metrics["per_person"] = {
                "limbs_correct": correct[:, limbs].sum(1).tolist(),
                "limbs_counted": counted[:, limbs].sum(1).tolist(),
            }
        if reliability:
            metrics["reliability"] = evaluation.confidence_reliability(
                correct[:, limbs], counted[:, limbs], pred.scores[:, limbs]
            )
        return metrics
    if dataset == "mpii":
        gt, visibility = _ground_truth(records)
        mask = visibility > 0
        fallback = evaluation.mpii_head_size_from_box(np.stack([r.box for r in records]))
        heads = np.array([r.head_size or f for r, f in zip(records, fallback)], np.float64)
        result = evaluation.pckh(pred.keypoints, gt, mask, heads)
        return {"pckh": result.overall}
    if dataset == "coco":
        if coco_gt is None:
            raise ValueError("COCO evaluation needs the ground-truth annotation file (data.val_ann_file)")
        results = []
        for record, kpts, scores in zip(records, pred.keypoints, pred.scores):
            flat = np.concatenate([kpts, scores[:, None]], 1).reshape(-1)
            results.append(
                {
                    "image_id": record.image_id,
                    "category_id": 1,
                    "keypoints": flat.tolist(),
                    "score": float(scores[scores > 0.2].mean()) if (scores > 0.2).any() else 0.0,
                }
            )
        stats = evaluation.coco_keypoint_ap(results, coco_gt)
        return {k.lower(): v for k, v in stats.items()}
    raise ValueError(f"unknown dataset {dataset!r}")
