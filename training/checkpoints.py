"""Checkpoints written by the trainer: load one, export it to ONNX with the metadata contract, evaluate it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

if TYPE_CHECKING:
    from models.export import WeightStorage


def load_checkpoint(path: Path):
    """(TrainConfig, PoseNet with weights, checkpoint dict) from a best.pt written by the trainer."""
    import torch

    from models.network import build_model
    from training.config import TrainConfig

    state = torch.load(path, map_location="cpu", weights_only=True)
    config = TrainConfig.model_validate(state["config"])
    model = build_model(config.model.model_copy(update={"pretrained": False}))
    model.load_state_dict(state["model"])
    model.eval()
    return config, model, state


def _val_crops(config, model, count: int = 8) -> list[np.ndarray] | None:
    """Normalised crops of the first validation persons, for the export parity check (None without data)."""
    from training.data import build_splits
    from training.datasets.topdown import TopDownDataset
    from training.engine import codec_for

    try:
        splits = build_splits(config.data)
    except FileNotFoundError:
        return None
    dataset = TopDownDataset(splits.val[:count], codec_for(config), model.mean, model.std, config.data.padding)
    return [dataset[i]["image"].numpy() for i in range(len(dataset))]


def export_checkpoint(checkpoint: Path, out: Path, version: str | None = None, weights: str = "float32"):
    from models.export import export_onnx
    from models.schemas import get_schema
    from training.engine import codec_for

    config, model, state = load_checkpoint(checkpoint)
    codec = codec_for(config)
    schema = get_schema(config.data.model_schema)
    metrics = state.get("metrics", {})
    extra = {
        "poseloop.metrics": json.dumps({k: round(v, 3) for k, v in metrics.items() if "/" not in k}),
        "poseloop.config_hash": config.config_hash(),
        "poseloop.git_commit": state.get("git_commit", "unknown"),
    }
    return export_onnx(
        model,
        codec,
        schema,
        Path(out),
        version=version or f"{config.name}@{state['step']}",
        trained_on=state.get("trained_on", ""),
        extra_metadata=extra,
        parity_images=_val_crops(config, model),
        padding=config.data.padding,
        weights=cast("WeightStorage", weights),  # a CLI string: export_onnx rejects anything else
    )


def evaluate_checkpoint(
    checkpoint: Path,
    split: str = "val",
    flip_test: bool | None = None,
    refinement: str | None = None,
    device: str | None = None,
    per_person: bool = False,
    reliability: bool = False,
) -> dict:
    """Metrics of a checkpoint on `split`: "val" (the split it was selected on; the dev split under LSP protocol
    v2), "report" (v2: the split nothing was chosen on), "train" (the records it trained on) or "unseen" (labeled
    training records beyond its label budget, e.g. LSP im0101–0800 for N = 100: a labeled stand-in for the
    unlabeled pool, to measure how good its pseudo-labels would be without touching validation)."""
    from training.data import build_splits
    from training.engine import codec_for, pick_device
    from training.evaluator import evaluate_model

    if split not in ("val", "train", "unseen", "report"):
        raise ValueError(f"split must be val, train or unseen (or report, under LSP protocol v2), got {split!r}")
    config, model, _ = load_checkpoint(checkpoint)
    if refinement:
        config = config.model_copy(update={"codec": config.codec.model_copy(update={"refinement": refinement})})
    # Labeled splits only, without the budget: label budgets keep a prefix, so the run's records are the first
    # `label_budget` and the unseen ones the rest.
    splits = build_splits(
        config.data.model_copy(update={"unlabeled": None, "label_budget": None, "pseudo_labels": None})
    )
    budget = config.data.label_budget or len(splits.train)
    records = {
        "val": splits.val,
        "train": splits.train[:budget],
        "unseen": splits.train[budget:],
        "report": splits.report,
    }[split]
    if split == "unseen" and not records:
        raise ValueError(f"{checkpoint} trained on every labeled record: no unseen split")
    if split == "report" and not records:
        raise ValueError(f"{checkpoint} has no report split (LSP data.lsp_protocol v2 has one)")
    flip = config.eval.flip_test if flip_test is None else flip_test
    dev = pick_device(device)
    metrics = evaluate_model(
        model.to(dev),
        records,
        dataset=config.data.dataset,
        codec=codec_for(config),
        mean=model.mean,
        std=model.std,
        padding=config.data.padding,
        flip_test=flip,
        batch_size=config.eval.batch_size,
        device=dev,
        coco_gt=config.data.val_ann_file,
        per_person=per_person,
        reliability=reliability,
    )
    return {
        "checkpoint": str(checkpoint),
        "split": split,
        "persons": len(records),
        "flip_test": flip,
        "refinement": config.codec.refinement,
        **metrics,
    }


def save_compact(checkpoint: Path, out: Path, **extra: object) -> Path:
    """The checkpoint with its floating-point weights stored as float16 (half the size; a model loads them back
    into float32), its config and metadata kept, plus `extra` fields; written durably. Releases and retrained
    registry versions store this, so a served version costs what the bundled one does."""
    import torch

    from training.run_files import atomic_save

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    compact = {
        **state,
        "model": {k: v.half() if v.is_floating_point() else v for k, v in state["model"].items()},
        "weights_storage": "float16",
        **extra,
    }
    atomic_save(compact, Path(out))
    return Path(out)
