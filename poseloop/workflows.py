"""What the CLI commands do, as plain functions (testable without a shell)."""

from __future__ import annotations

import os
from pathlib import Path

BUNDLED_MODEL_DIR = Path(__file__).resolve().parent.parent / "artifacts"


def default_model_path() -> Path | None:
    """$POSELOOP_MODEL, else the newest bundled artifacts/<name>/v<N>/model.onnx, else None."""
    env = os.environ.get("POSELOOP_MODEL")
    if env:
        return Path(env)
    bundled = sorted(
        BUNDLED_MODEL_DIR.glob("*/v*/model.onnx"), key=lambda p: (p.parent.parent.name, int(p.parent.name[1:] or 0))
    )
    return bundled[-1] if bundled else None


def predict_image(
    image: Path,
    boxes: list[list[float]],
    model: Path | None = None,
    render: Path | None = None,
    flip_test: bool = False,
) -> dict:
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
    from models.registry import ModelRegistry

    if (Path(registry_dir) / "index.json").exists() and ModelRegistry(registry_dir).active() is not None:
        return None
    model = model or default_model_path()
    if model is not None:
        return Path(model)
    from training.checkpoints import export_checkpoint
    from training.config import load_config
    from training.engine import Trainer

    config_path = Path(__file__).resolve().parent.parent / "configs" / "quick.yaml"
    cfg = load_config(
        config_path,
        [
            "name=bootstrap",
            "optim.iterations=200",
            "optim.batch_size=16",
            "schedule.val_every=100",
            "schedule.checkpoint_every=50",
        ],
    )
    print(
        f"empty registry and no bundled model: training a bootstrap model ({cfg.optim.iterations} steps, "
        "a few minutes on CPU)",
        flush=True,
    )
    result = Trainer(cfg).fit()
    onnx_path = result.run_dir / "model.onnx"
    export_checkpoint(result.run_dir / "best.pt", onnx_path, version="bootstrap")
    return onnx_path
