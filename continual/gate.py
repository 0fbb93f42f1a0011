"""The promotion gate: promote a retrained candidate only on evidence that it is better than the active version.

Both models are scored by the same function on the same split (`score_checkpoint`), and the candidate is the
*last* checkpoint of its job (nothing was chosen on that split, so its figure carries no best-of-several bias).
For LSP the comparison is a paired bootstrap over persons (both models on the same resampled persons): the
candidate is promoted only when the lower bound of the 95% interval of Δ clears the margin. Datasets without
per-person scores (COCO AP) have no interval; their point Δ must clear the margin, and the reason says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal


@dataclass(frozen=True)
class GateEvidence:
    """What the decision rests on, as recorded in the job, the audit log and /metrics."""

    metric: str
    candidate: float
    baseline: float
    delta: float
    ci_low: float | None  # None: no per-person scores (COCO), the point Δ decides
    ci_high: float | None
    persons: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        interval = f" [{self.ci_low:+.2f}, {self.ci_high:+.2f}]" if self.ci_low is not None else " (no interval)"
        return f"{self.metric} {self.candidate:.2f} vs {self.baseline:.2f}: Δ {self.delta:+.2f}{interval}"


def compare(candidate: dict[str, Any], baseline: dict[str, Any]) -> GateEvidence:
    """Evidence from two `score_checkpoint` results on the same split."""
    from training.evaluation import paired_bootstrap_delta

    if candidate["metric"] != baseline["metric"] or candidate["persons"] != baseline["persons"]:
        raise ValueError("candidate and baseline were not scored on the same split")
    low = high = None
    people_c, people_b = candidate.get("per_person"), baseline.get("per_person")
    if people_c and people_b:
        if people_c["limbs_counted"] != people_b["limbs_counted"]:
            raise ValueError("candidate and baseline counted different joints: not the same persons")
        _, low, high = paired_bootstrap_delta(
            people_c["limbs_correct"], people_b["limbs_correct"], people_b["limbs_counted"]
        )
    return GateEvidence(
        metric=candidate["metric"],
        candidate=candidate["value"],
        baseline=baseline["value"],
        delta=round(candidate["value"] - baseline["value"], 3),
        ci_low=None if low is None else round(low, 3),
        ci_high=None if high is None else round(high, 3),
        persons=candidate["persons"],
    )


def decide(evidence: GateEvidence, margin: float, collapse: str | None) -> tuple[Literal["promote", "reject"], str]:
    """("promote" | "reject", reason). The bound that must clear `margin` is the interval's lower end."""
    if collapse:
        return "reject", f"collapse guard fired: {collapse}"
    bound = evidence.ci_low if evidence.ci_low is not None else evidence.delta
    which = "lower bound" if evidence.ci_low is not None else "Δ"
    if bound >= margin:
        return "promote", f"{evidence.describe()}; {which} {bound:+.2f} ≥ margin {margin}"
    return "reject", f"{evidence.describe()}; {which} {bound:+.2f} < margin {margin}"


LABELED_METRIC = "pck_limbs"  # the gate's metric on registered labeled persons, whatever the model's dataset


def score_checkpoint(checkpoint: Path, config: Any, records: list | None = None) -> dict[str, Any]:
    """The gate's one scoring function: metric of `checkpoint` on the config's validation split, with the
    per-person counts a paired comparison needs (LSP). Candidate and baseline both go through it.

    `records` (labeled PersonRecords in the model's schema, e.g. the gate part of the registered labels): score
    on them instead, as PCK@0.2 of the torso on the limb joints each person has labeled (visibility > 0; persons
    without both torso joints are not counted), per person, so the paired bootstrap applies to any dataset."""
    from training.checkpoints import load_checkpoint
    from training.data import build_splits
    from training.engine import codec_for, pick_device
    from training.evaluator import evaluate_model, metric_name

    _, model, _ = load_checkpoint(checkpoint)
    if records is not None:
        return _score_records(model, config, records)
    splits = build_splits(config.data)
    device = pick_device(None)
    metrics = evaluate_model(
        model.to(device),
        splits.val,
        dataset=config.data.dataset,
        codec=codec_for(config),
        mean=model.mean,
        std=model.std,
        padding=config.data.padding,
        flip_test=config.eval.flip_test,
        batch_size=config.eval.batch_size,
        device=device,
        coco_gt=config.data.val_ann_file,
        per_person=config.data.dataset == "lsp",
    )
    key = metric_name(config.data.dataset)
    score = {"metric": key, "value": round(metrics[key], 3), "persons": len(splits.val)}
    if "per_person" in metrics:
        score["per_person"] = metrics["per_person"]
    return score


def _score_records(model: Any, config: Any, records: list) -> dict[str, Any]:
    """(see score_checkpoint) LABELED_METRIC with per-person limb counts on labeled `records`."""
    import numpy as np

    from models.schemas import LSP14, LSP_LIMB_JOINTS, get_schema
    from training.distill.filter import pck_correct
    from training.engine import codec_for, pick_device
    from training.inference import predict_records

    if not records:
        raise ValueError("no labeled persons to score on")
    schema = get_schema(records[0].schema)
    limb_names = {LSP14.keypoints[j] for j in LSP_LIMB_JOINTS}
    limbs = [j for j, name in enumerate(schema.keypoints) if name in limb_names]
    device = pick_device(None)
    pred = predict_records(
        model.to(device),
        records,
        codec_for(config),
        model.mean,
        model.std,
        padding=config.data.padding,
        flip_test=config.eval.flip_test,
        batch_size=config.eval.batch_size,
        device=device,
    )
    gt = np.stack([r.keypoints for r in records])
    visibility = np.stack([r.visibility for r in records])
    correct, counted = pck_correct(pred.keypoints, gt, visibility, schema)
    correct, counted = correct[:, limbs].sum(1), counted[:, limbs].sum(1)
    total = int(counted.sum())
    if total == 0:
        raise ValueError("the labeled persons have no limb joint with both torso joints labeled: nothing to score")
    return {
        "metric": LABELED_METRIC,
        "value": round(100.0 * float(correct.sum()) / total, 3),
        "persons": len(records),
        "per_person": {"limbs_correct": correct.tolist(), "limbs_counted": counted.tolist()},
    }
