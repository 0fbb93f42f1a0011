"""Helpers for the continual-loop tests: a small real trained model (checkpoint + ONNX), a registry with it
active, LSPET images to upload, and settings pointing every store into one temporary directory."""

from __future__ import annotations

from pathlib import Path

from continual.settings import load_settings
from models.registry import ModelRegistry

REPO = Path(__file__).resolve().parent.parent
# tiny but real: MobileNetV2 (ImageNet init) at 64x48, trained for a few steps on 32 LSP images
SMALL_MODEL = [
    "data.input_h=64",
    "data.input_w=48",
    "data.label_budget=32",
    "optim.batch_size=8",
    "model.head_channels=32",
    "eval.flip_test=false",
    "schedule.log_every=5",
]
# what every test retrain adds on top of the active model's config: small batches, a cheap unlabeled branch
RETRAIN_OVERRIDES = ["optim.batch_size=4"]


def train_small_model(out_dir: Path, iterations: int = 40) -> tuple[Path, Path]:
    """(model.onnx, best.pt) of a short supervised run; cached in `out_dir`."""
    from training.checkpoints import export_checkpoint
    from training.config import load_config
    from training.engine import Trainer

    run_dir = out_dir / "small"
    onnx_path = run_dir / "model.onnx"
    if not onnx_path.exists():
        cfg = load_config(
            REPO / "configs" / "quick.yaml",
            [
                *SMALL_MODEL,
                f"output_dir={out_dir}",
                "name=small",
                f"optim.iterations={iterations}",
                f"schedule.val_every={iterations}",
            ],
        )
        Trainer(cfg).fit(progress=False)
        export_checkpoint(run_dir / "best.pt", onnx_path, version="small")
    return onnx_path, run_dir / "best.pt"


def install_active(registry_dir: Path, onnx_path: Path, checkpoint: Path) -> ModelRegistry:
    registry = ModelRegistry(registry_dir)
    info = registry.register(onnx_path, checkpoint_path=checkpoint, actor="test")
    registry.set_active(info.version, "test")
    return registry


# the retrain default is distillation from an external ONNX teacher; the tests use the same code path with
# MoveNet Thunder
TEST_TEACHER = REPO / "artifacts" / "teachers" / "movenet-thunder" / "model.onnx"


def loop_settings(root: Path, **overrides):
    overrides.setdefault("retrain_teacher", str(TEST_TEACHER))
    overrides.setdefault("worker_metrics_port", 0)  # in-process workers of many tests: no fixed port
    return load_settings(registry_dir=root / "registry", data_dir=root / "data", dev=True, job_lease_s=30, **overrides)


def lspet_images(data_root: Path, count: int) -> list[Path]:
    return sorted((data_root / "lspet" / "images").glob("*.jpg"))[:count]


def upload_lspet(store, data_root: Path, count: int, actor: str = "test") -> list[str]:
    """Add the first `count` LSPET images with their person boxes; returns their ids."""
    import json

    boxes = json.loads((data_root / "lspet" / "boxes.json").read_text())["boxes"]
    ids = []
    for path in lspet_images(data_root, count):
        ids.append(store.add(path.read_bytes(), path.name, [boxes[path.name]], "test", actor).sha256)
    return ids
