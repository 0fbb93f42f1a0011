"""The scheduler's decision (celery beat's `maybe_retrain`, or the embedded worker's timer); no torch.

Retrain when at least `retrain_min_new_images` uploads arrived since the active model's training pool was
snapshotted, or when the active model is older than `retrain_max_age_h` and at least one new image arrived.
Each tick also re-sends orphaned jobs (see JobStore.orphans).
"""

from __future__ import annotations

from datetime import UTC, datetime

from continual.queue import JobQueue
from continual.uploads import UploadStore
from models.registry import ModelRegistry


def retrain_reason(registry: ModelRegistry, uploads: UploadStore, min_new: int, max_age_h: float) -> str | None:
    active = registry.active()
    if active is None:
        return None
    since = int((active.meta.get("data_summary") or {}).get("unlabeled_seq") or 0)
    new = uploads.count_since(since)
    if new >= min_new:
        return f"{new} new unlabeled images ≥ {min_new}"
    age_h = (datetime.now(UTC) - datetime.fromisoformat(active.created)).total_seconds() / 3600
    if new > 0 and age_h > max_age_h:
        return f"active model is {age_h:.0f} h old (> {max_age_h:g} h) and {new} new images arrived"
    return None


def tick(queue: JobQueue, registry: ModelRegistry, uploads: UploadStore) -> dict:
    """One scheduler pass: re-send orphans, then maybe submit a retrain (single-flight makes repeats harmless)."""
    s = queue.settings
    resent = [job.id for job in queue.jobs.orphans(s.loop.orphan_after_s) if queue.dispatch(job.id)]
    reason = retrain_reason(registry, uploads, s.retrain.min_new_images, s.retrain.max_age_h)
    job_id = None
    if reason is not None:
        job, _ = queue.submit_retrain({"reason": reason}, actor="scheduler")
        job_id = job.id
    return {"resent": resent, "retrain": reason, "job": job_id}
