"""The scheduler's retrain decision and its orphan sweep (embedded mode: no broker)."""

import cv2
import numpy as np

from continual.queue import JobQueue
from continual.schedule import retrain_reason, tick
from continual.settings import load_settings
from continual.uploads import UploadStore
from models.registry import ModelRegistry
from tests.serving_fixtures import tiny_pose_onnx


def _image(i: int) -> bytes:
    img = np.full((40, 30, 3), i % 255, np.uint8)
    img[i % 40, :, 1] = 255
    return cv2.imencode(".png", img)[1].tobytes()


def test_retrain_after_enough_new_images_since_the_active_models_pool(tmp_path):
    registry = ModelRegistry(tmp_path / "reg")
    store = UploadStore(tmp_path / "up")
    assert retrain_reason(registry, store, 3, 1e9) is None  # no active model: nothing to improve
    for i in range(4):
        store.add(_image(i), f"{i}.png", None, "t", "t")
    v1 = registry.register(tiny_pose_onnx(tmp_path / "a.onnx"), data_summary={"unlabeled_seq": 2}, actor="t")
    registry.set_active(v1.version, "t")
    assert retrain_reason(registry, store, 3, 1e9) is None  # only 2 new since its pool
    store.add(_image(9), "9.png", None, "t", "t")
    assert "3 new unlabeled images" in retrain_reason(registry, store, 3, 1e9)
    assert "old" in retrain_reason(registry, store, 100, max_age_h=1e-9)  # old model, some new images


def test_tick_submits_once_and_resends_orphans(tmp_path):
    settings = load_settings(
        registry_dir=tmp_path / "reg", data_dir=tmp_path / "data", retrain_min_new_images=1, orphan_after_s=0
    )
    registry = ModelRegistry(settings.registry.dir)
    registry.set_active(registry.register(tiny_pose_onnx(tmp_path / "a.onnx"), actor="t").version, "t")
    store = UploadStore(settings.loop.data_dir / "uploads")
    store.add(_image(1), "1.png", None, "t", "t")
    queue = JobQueue(settings)
    first = tick(queue, registry, store)
    second = tick(queue, registry, store)
    assert first["job"] and second["job"] == first["job"] and len(queue.jobs.list()) == 1  # single flight
    assert second["resent"] == [first["job"]]  # still unclaimed: the sweep re-sends it (a no-op when embedded)
    assert queue.jobs.get(first["job"]).requested_by == "scheduler"


def test_ingest_checks_make_thumbnails_and_teacher_confidence(tmp_path):
    from poseloop.worker.checks import check_pending

    registry = ModelRegistry(tmp_path / "reg")
    store = UploadStore(tmp_path / "up")
    store.add(_image(1), "1.png", None, "t", "t")
    store.add(_image(2), "2.png", [[2, 2, 20, 30], [5, 5, 10, 10]], "t", "t")
    assert check_pending(store, registry) == 0  # no model yet: nothing to judge them with
    registry.set_active(registry.register(tiny_pose_onnx(tmp_path / "a.onnx"), actor="t").version, "t")
    assert check_pending(store, registry) == 2 and check_pending(store, registry) == 0
    stats = store.stats(0)
    assert stats["checked"] == 2 and stats["mean_teacher_confidence"] > 0
    for record in store.snapshot():
        thumb = cv2.imread(str(store.thumbnail_path(record.sha256)))
        assert thumb is not None and max(thumb.shape[:2]) <= 160
