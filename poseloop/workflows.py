"""What the CLI commands do, as plain functions (testable without a shell)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

SCHEMA_OF_DATASET = {"lsp": "lsp14", "coco": "coco17", "mpii": "mpii16"}
BUNDLED_MODEL_DIR = Path(__file__).resolve().parent.parent / "artifacts"


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
    schema = get_schema(SCHEMA_OF_DATASET[config.data.dataset])
    metrics = state.get("metrics", {})
    extra = {
        "poseloop.metrics": json.dumps({k: round(v, 3) for k, v in metrics.items() if "/" not in k}),
        "poseloop.config_hash": config.config_hash(),
        "poseloop.git_commit": state.get("git_commit", "unknown"),
    }
    return export_onnx(model, codec, schema, Path(out), version=version or f"{config.name}@{state['step']}",
                       trained_on=state.get("trained_on", ""), extra_metadata=extra,
                       parity_images=_val_crops(config, model), padding=config.data.padding, weights=weights)


def evaluate_checkpoint(checkpoint: Path, split: str = "val", flip_test: bool | None = None,
                        refinement: str | None = None, device: str | None = None, per_person: bool = False,
                        reliability: bool = False) -> dict:
    """Metrics of a checkpoint on `split`: "val", "train" (the records it trained on) or "unseen" (labeled
    training records beyond its label budget, e.g. LSP im0101–0800 for N = 100: a labeled stand-in for the
    unlabeled pool, to measure how good its pseudo-labels would be without touching validation)."""
    from training.data import build_splits
    from training.engine import codec_for, pick_device
    from training.evaluator import evaluate_model

    if split not in ("val", "train", "unseen"):
        raise ValueError(f"split must be val, train or unseen, got {split!r}")
    config, model, _ = load_checkpoint(checkpoint)
    if refinement:
        config = config.model_copy(update={"codec": config.codec.model_copy(update={"refinement": refinement})})
    # Labeled splits only, without the budget: label budgets keep a prefix, so the run's records are the first
    # `label_budget` and the unseen ones the rest.
    splits = build_splits(config.data.model_copy(update={"unlabeled": None, "label_budget": None}))
    budget = config.data.label_budget or len(splits.train)
    records = {"val": splits.val, "train": splits.train[:budget], "unseen": splits.train[budget:]}[split]
    if split == "unseen" and not records:
        raise ValueError(f"{checkpoint} trained on every labeled record: no unseen split")
    flip = config.eval.flip_test if flip_test is None else flip_test
    dev = pick_device(device)
    metrics = evaluate_model(model.to(dev), records, config.data.dataset, codec_for(config), model.mean, model.std,
                             config.data.padding, flip, config.eval.batch_size, dev,
                             coco_gt=config.data.val_ann_file, per_person=per_person, reliability=reliability)
    return {"checkpoint": str(checkpoint), "split": split, "persons": len(records), "flip_test": flip,
            "refinement": config.codec.refinement, **metrics}


def default_model_path() -> Path | None:
    """$POSELOOP_MODEL, else the newest bundled artifacts/<name>/v<N>/model.onnx, else None."""
    env = os.environ.get("POSELOOP_MODEL")
    if env:
        return Path(env)
    bundled = sorted(BUNDLED_MODEL_DIR.glob("*/v*/model.onnx"), key=lambda p: (p.parent.parent.name,
                                                                              int(p.parent.name[1:] or 0)))
    return bundled[-1] if bundled else None


def predict_image(image: Path, boxes: list[list[float]], model: Path | None = None, render: Path | None = None,
                  flip_test: bool = False) -> dict:
    import cv2

    from serving.backends.onnxruntime import OnnxRuntimeBackend
    from serving.pipeline import PosePipeline, load_image_rgb, to_json
    from serving.render import render_poses

    model = model or default_model_path()
    if model is None or not Path(model).exists():
        raise SystemExit("no model: pass --model PATH.onnx or set POSELOOP_MODEL (train one with `poseloop train`)")
    backend = OnnxRuntimeBackend(model)
    pipeline = PosePipeline(backend, flip_test=flip_test)
    rgb = load_image_rgb(Path(image).read_bytes())
    poses = pipeline.predict(rgb, boxes or None)
    result = to_json(poses, backend.metadata.version)
    if render:
        overlay = render_poses(rgb, poses, backend.metadata.schema.skeleton)
        cv2.imwrite(str(render), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
        result["render"] = str(render)
    return result


def ensure_first_model(registry_dir: Path, model: Path | None = None) -> Path | None:
    """The ONNX to install into an empty registry (None when a version is already active).

    Order: `model`, $POSELOOP_MODEL / the bundled model, else a bootstrap model trained now (quick supervised run
    on the LSP training split; a few minutes on 2 CPU cores).
    """
    from serving.registry import ModelRegistry

    if (Path(registry_dir) / "index.json").exists() and ModelRegistry(registry_dir).active() is not None:
        return None
    model = model or default_model_path()
    if model is not None:
        return Path(model)
    from training.config import load_config
    from training.engine import Trainer

    config_path = Path(__file__).resolve().parent.parent / "configs" / "quick.yaml"
    cfg = load_config(config_path, ["name=bootstrap", "optim.iterations=200", "optim.batch_size=16",
                                    "schedule.val_every=100", "schedule.checkpoint_every=50"])
    print(f"empty registry and no bundled model: training a bootstrap model ({cfg.optim.iterations} steps, "
          "a few minutes on CPU)", flush=True)
    result = Trainer(cfg).fit()
    onnx_path = result.run_dir / "model.onnx"
    export_checkpoint(result.run_dir / "best.pt", onnx_path, version="bootstrap")
    return onnx_path
