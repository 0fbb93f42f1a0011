"""Celery tasks (Redis mode): `celery -A poseloop.worker.tasks worker -Q train -P solo -c 1` and `… beat`.

`poseloop.retrain` runs one chunk (`retrain_chunk_steps` training steps, checkpointed) and re-sends itself until
the job is finished, so every task is much shorter than the visibility timeout; a redelivered or duplicate
message is harmless because the job row's lease decides who works. CUDA is touched only inside tasks (solo pool:
no fork after CUDA init). A message the broker does not take (it is away) waits in the outbox (continual.queue);
the scheduler task sends what waits there first. At start each worker sweeps the upload dir (kill -9 leftovers).
"""

from __future__ import annotations

import logging

from celery.signals import worker_init, worker_ready

from continual.jobs import ACTIVE_STATES
from continual.queue import INGEST_TASK, RETRAIN_TASK, SCHEDULE_TASK, JobQueue, celery_app
from continual.runner import context, worker_name
from continual.schedule import tick
from continual.settings import load_settings
from continual.uploads import UploadStore
from models.registry import ModelRegistry
from poseloop.worker.checks import check_pending
from poseloop.worker.isolation import isolate
from poseloop.worker.metrics import WorkerMetrics

settings = load_settings()
app = celery_app(settings)
log = logging.getLogger("poseloop.worker")
metrics = WorkerMetrics()


@worker_init.connect
def _isolate(**_kwargs) -> None:
    """Lower priority, fewer threads, off the API's core — before the pool starts, so its processes inherit it;
    then the worker's own /metrics (solo pool: the tasks run in this process)."""
    chosen = isolate(settings)
    metrics.describe(worker_name("celery"), chosen.nice, chosen.threads, chosen.cpus)
    metrics.serve(settings.loop.worker_metrics_port)


@worker_ready.connect
def _sweep_uploads(**_kwargs) -> None:
    """Temp files and unindexed images a killed process left in the upload dir (UploadStore.sweep logs them)."""
    try:
        UploadStore(settings.loop.data_dir / "uploads").sweep()
    except Exception:  # a sweep that fails must not stop the worker; the next start tries again
        log.exception("upload sweep at start failed")


@app.task(name=RETRAIN_TASK, acks_late=True, reject_on_worker_lost=True)
def retrain(job_id: str) -> dict:
    ctx = context(settings, worker_name("celery"))
    outcome, job = metrics.work_once(ctx, job_id, settings.retrain.chunk_steps)
    if outcome == "paused":
        JobQueue(settings).dispatch(job_id)  # next chunk; the message is acked only after this returns
    elif outcome == "idle" and ctx.jobs.get(job_id).state in ACTIVE_STATES:
        # another worker holds a live lease (or held it before dying): look again once that lease could expire
        try:
            retrain.apply_async(
                args=[job_id],
                countdown=min(settings.loop.job_lease_s, settings.loop.visibility_timeout_s / 2),
                retry=False,
            )
        except Exception:  # the broker is away: the outbox sends the job's message once it is back
            JobQueue(settings).dispatch(job_id)
    return {"job": job_id, "outcome": outcome, "state": job.state if job else None}


@app.task(name=INGEST_TASK)
def ingest_check() -> dict:
    """Thumbnails and teacher confidence for new uploads (CPU, ONNX Runtime)."""
    store = UploadStore(settings.loop.data_dir / "uploads")
    registry = ModelRegistry(settings.registry.dir, settings.registry.keep_versions)
    checked = 0
    while (n := metrics.ingest(lambda: check_pending(store, registry))) > 0:
        checked += n
    return {"checked": checked}


@app.task(name=SCHEDULE_TASK)
def maybe_retrain() -> dict:
    registry = ModelRegistry(settings.registry.dir, settings.registry.keep_versions)
    queue = JobQueue(settings)
    queue.flush_outbox()  # the broker answers again (this task came through it): what waited goes first
    return tick(queue, registry, UploadStore(settings.loop.data_dir / "uploads"))
