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
    boxes: list[list[float]] | None = None,
    model: Path | None = None,
    render: Path | None = None,
    flip_test: bool | None = None,
    *,
    detector: Path | str | None = None,
    det_threshold: float | None = None,
    max_persons: int | None = None,
    kpt_threshold: float | None = None,
) -> dict:
    """The /v1/pose answer for one image file, computed in this process (ONNX Runtime; no torch, no server).

    As the API: no boxes → the person detector finds the people (none found → `persons: []`); boxes given
    ([x, y, w, h] image pixels) → those, refused like the API's (core.inputs.parse_boxes: InputError for a box
    entirely outside the image, too small, too many). detector: the detector ONNX; None = settings'
    `inference.detector_path`, "" = no detector (the whole image is one person). The other options default to
    settings.inference (POSELOOP_* variables) and are checked by the API's own rules (serving.routes.pose):
    InputError naming the option.
    """
    import cv2

    from continual.settings import load_settings
    from core.inputs import parse_boxes
    from serving.backends import BackendLoadError
    from serving.backends.onnxruntime import OnnxRuntimeBackend
    from serving.pipeline import PosePipeline, load_image_rgb, to_json
    from serving.render import render_poses
    from serving.routes.pose import RequestOptions, body_options, pipeline_options, resolve_options

    settings = load_settings()
    sent = {"max_persons": max_persons, "det_threshold": det_threshold, "kpt_threshold": kpt_threshold}
    sent["flip"] = flip_test
    chosen = body_options({k: v for k, v in sent.items() if v is not None}, strict=False)  # InputError if bad
    applied = resolve_options(RequestOptions(), chosen, settings)
    model = model or default_model_path()
    if model is None or not Path(model).exists():
        raise SystemExit("no model: pass --model PATH.onnx or set POSELOOP_MODEL (train one with `poseloop train`)")
    rgb = load_image_rgb(Path(image).read_bytes())
    height, width = rgb.shape[:2]
    checked = parse_boxes(boxes or None, width, height, settings.limits.max_boxes)
    detector_path = settings.inference.detector_path if detector is None else (Path(detector) if detector else None)
    person_detector = None
    if checked is None and detector_path is not None:  # boxes given: no detector needed
        from serving.backends.detector import embedded_detector

        try:
            person_detector = embedded_detector(
                detector_path, settings.inference.ort_threads, settings.inference.detector_iou
            )
        except BackendLoadError as err:
            raise SystemExit(
                f"person detector: {err} (pass --detector PATH, or --detector '' for the whole image)"
            ) from None
    backend = OnnxRuntimeBackend(model)
    pipeline = PosePipeline(backend, detector=person_detector)
    prepared = pipeline.prepare(rgb, checked, pipeline_options(applied))
    poses = pipeline.decode(backend.infer(prepared.crops), prepared) if prepared.persons else []
    result = to_json(poses, backend.metadata.version, applied.kpt_threshold, (width, height))
    result["image"] = {"width": width, "height": height, "id": None}
    result["boxes_from"] = prepared.source
    result["options"] = applied.model_dump()
    if render:
        overlay = render_poses(rgb, poses, backend.metadata.schema.skeleton, applied.kpt_threshold)
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
