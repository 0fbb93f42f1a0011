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


def test_a_record_that_breaks_the_check_is_quarantined_and_the_rest_go_on(tmp_path):
    """One bad stored image (here: its file was corrupted on disk after upload) must not stop the worker: it is
    quarantined — out of the checks and of every retrain pool — with its reason, and the others are checked."""
    from poseloop.worker.checks import check_pending

    registry = ModelRegistry(tmp_path / "reg")
    registry.set_active(registry.register(tiny_pose_onnx(tmp_path / "a.onnx"), actor="t").version, "t")
    store = UploadStore(tmp_path / "up")
    bad = store.add(_image(1), "1.png", None, "t", "t")
    store.add(_image(2), "2.png", None, "t", "t")
    broken = next(r for r in store.snapshot() if r.seq == bad.seq)
    broken.path.write_bytes(b"not an image any more")
    assert check_pending(store, registry) == 2  # both were tried; the worker did not raise
    assert check_pending(store, registry) == 0  # the quarantined one is not offered again
    stats = store.stats(0)
    assert stats["checked"] == 1 and stats["quarantined"] == 1 and stats["total"] == 2
    assert [r.seq for r in store.snapshot()] == [bad.seq + 1], "a quarantined image left the retrain pool"


def _finished(job_id: str, state: str, parent: str, seq: int, finished: str):
    from continual.jobs import Job

    return Job(
        id=job_id, kind="retrain", model="default", state=state, params={}, requested_by="scheduler",
        created=finished, updated=finished, started=finished, finished=finished, attempts=1,
        cancel_requested=False, progress={}, result={"plan": {"parent": parent, "unlabeled_seq": seq}},
        error=None, idempotency_key=None, lease_owner=None,
    )  # fmt: skip


def test_scheduler_holds_on_an_unchanged_pool_and_backs_off_after_failures():
    from datetime import UTC, datetime

    from continual.schedule import hold_reason

    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    rejected = _finished("j1", "succeeded", "3", 40, "2026-12-01T11:59:00+00:00")
    assert "unchanged since job j1" in hold_reason([rejected], "3", 40, now)
    assert hold_reason([rejected], "3", 41, now) is None  # a new upload: go
    assert hold_reason([rejected], "4", 40, now) is None  # another active version: go
    failed = [_finished(f"f{i}", "failed", "3", 30 + i, "2026-12-01T11:00:00+00:00") for i in range(3)]
    assert "3 failed job(s) in a row" in hold_reason(failed, "3", 99, now)  # 4 h backoff, 1 h elapsed
    assert hold_reason(failed[:1], "3", 99, now) is None  # one failure: 1 h backoff, 1 h elapsed
    assert hold_reason([], "3", 40, now) is None
