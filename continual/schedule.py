"""The scheduler's decision (celery beat's `maybe_retrain`, or the embedded worker's timer); no torch.

Retrain when at least `retrain_min_new_images` uploads arrived since the active model's training pool was
snapshotted, or when the active model is older than `retrain_max_age_h` and at least one new image arrived.
Each tick also re-sends orphaned jobs (see JobStore.orphans).

A retrain whose candidate was not promoted leaves the pool as it was, so the next tick would submit the same job
again, forever: the scheduler does not resubmit while the active version and the upload pool are the ones its
last finished job trained on, and after consecutive failed jobs it waits (1 h, doubling, at most 24 h).
"""

from __future__ import annotations

from datetime import UTC, datetime

from continual.jobs import Job
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


FAILURE_BACKOFF_S = 3600.0
MAX_BACKOFF_S = 86400.0


def hold_reason(finished: list[Job], active_version: str | None, max_seq: int, now: datetime) -> str | None:
    """Why the scheduler must not submit now, from its own finished jobs (newest first), or None."""
    if not finished:
        return None
    last = finished[0]
    plan = last.result.get("plan") or {}
    if plan.get("parent") == active_version and plan.get("unlabeled_seq") == max_seq:
        return f"unchanged since job {last.id} ({last.state}): same active version {active_version}, no new uploads"
    failures = 0
    for job in finished:
        if job.state != "failed":
            break
        failures += 1
    if failures and last.finished:
        wait = min(FAILURE_BACKOFF_S * 2 ** (failures - 1), MAX_BACKOFF_S)
        elapsed = (now - datetime.fromisoformat(last.finished)).total_seconds()
        if elapsed < wait:
            return f"{failures} failed job(s) in a row, last {last.id}: retrying in {wait - elapsed:.0f} s"
    return None


def tick(queue: JobQueue, registry: ModelRegistry, uploads: UploadStore) -> dict:
    """One scheduler pass: re-send orphans, then maybe submit a retrain (single-flight makes repeats harmless)."""
    s = queue.settings
    resent = [job.id for job in queue.jobs.orphans(s.loop.orphan_after_s) if queue.dispatch(job.id)]
    reason = retrain_reason(registry, uploads, s.retrain.min_new_images, s.retrain.max_age_h)
    if reason is not None:
        active = registry.active()
        mine = [j for j in queue.jobs.list(limit=20) if j.requested_by == "scheduler" and j.finished]
        held = hold_reason(mine, active.version if active else None, uploads.max_seq(), datetime.now(UTC))
        if held is not None:
            return {"resent": resent, "retrain": None, "job": None, "held": held}
    job_id = None
    if reason is not None:
        job, _ = queue.submit_retrain({"reason": reason}, actor="scheduler")
        job_id = job.id
    return {"resent": resent, "retrain": reason, "job": job_id}
