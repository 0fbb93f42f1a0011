"""Ingest checks (the `ingest` queue, or the embedded worker when idle): per uploaded image a thumbnail and the
active model's confidence on it (mean keypoint peak over its persons) and its flip disagreement (how far its
keypoints move between the image and its mirror, the two views the retrain's flip-TTA teacher averages) — the
statistics ops look at before a retrain (`GET /v1/unlabeled/stats`) and the active-learning export ranks by.
ONNX Runtime only, no torch; the teacher is the served model."""

from __future__ import annotations

import logging

import cv2
import numpy as np

from continual.uploads import UploadRecord, UploadStore
from core.fileio import atomic_write_bytes
from models.registry import ModelRegistry
from serving.pipeline import PosePipeline, load_image_rgb

log = logging.getLogger("poseloop.ingest")
THUMBNAIL_SIDE = 160


def check_pending(store: UploadStore, registry: ModelRegistry, limit: int = 64) -> int:
    """Check up to `limit` unchecked images; returns how many were checked (0 = nothing to do / no model)."""
    active = registry.active()
    if active is None:
        return 0
    pending = store.unchecked(limit)
    if not pending:
        return 0
    from serving.backends.onnxruntime import OnnxRuntimeBackend

    pipeline = PosePipeline(OnnxRuntimeBackend(active.onnx_path, intra_op_threads=1))
    for item in pending:
        try:
            _check_one(store, pipeline, item, active.version)
        except Exception as err:  # one bad record must never stop the worker: quarantine it, log it, go on
            log.exception("ingest check of %s failed; quarantined", item.sha256)
            store.quarantine(item.sha256, f"ingest check failed: {type(err).__name__}: {err}")
    log.info("checked %d uploads with version %s", len(pending), active.version)
    return len(pending)


def _check_one(store: UploadStore, pipeline: PosePipeline, item: UploadRecord, version: str) -> None:
    """Thumbnail, the served model's confidence and its flip disagreement for one stored image."""
    rgb = load_image_rgb(item.path.read_bytes())
    scale = THUMBNAIL_SIDE / max(rgb.shape[:2])
    thumb = cv2.resize(rgb, None, fx=min(scale, 1.0), fy=min(scale, 1.0), interpolation=cv2.INTER_AREA)
    _ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(thumb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    path = store.thumbnail_path(item.sha256)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, jpeg.tobytes())
    poses, gaps = pipeline.predict_with_flip_gap(rgb, item.boxes)
    confidence = float(np.mean([p.keypoint_scores.mean() for p in poses])) if poses else 0.0
    disagreement = float(gaps.mean()) if len(gaps) else None
    store.record_check(item.sha256, path, version, confidence, len(poses), disagreement)
