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


def evaluate_model(
    model: torch.nn.Module,
    records: list[PersonRecord],
    dataset: str,
    codec: HeatmapCodec,
    mean,
    std,
    padding: float = 1.25,
    flip_test: bool = False,
    batch_size: int = 64,
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
    pred = predict_records(model, records, codec, mean, std, padding, flip_test, batch_size, device)
    if dataset == "lsp":
        gt = np.stack([r.keypoints for r in records])
        result = evaluation.lsp_pck(pred.keypoints, gt)
        metrics: dict[str, Any] = {"pck_all": result.subset["all"], "pck_limbs": result.subset["limbs"]}
        from models.schemas import LSP14

        metrics.update({f"pck/{name}": float(v) for name, v in zip(LSP14.keypoints, result.per_joint)})
        limbs = list(evaluation.LSP_SUBSETS["limbs"])
        if per_person:
            metrics["per_person"] = {
                "limbs_correct": result.correct[:, limbs].sum(1).tolist(),
                "limbs_counted": result.counted[:, limbs].sum(1).tolist(),
            }
        if reliability:
            metrics["reliability"] = evaluation.confidence_reliability(
                result.correct[:, limbs], result.counted[:, limbs], pred.scores[:, limbs]
            )
        return metrics
    if dataset == "mpii":
        gt = np.stack([r.keypoints for r in records])
        mask = np.stack([r.visibility > 0 for r in records])
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
