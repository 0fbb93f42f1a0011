"""How the API hands jobs to workers (no torch here).

The job row (continual.jobs) is always written first. With a broker (`POSELOOP_BROKER_URL=redis://…`) a Celery
message carrying the job id is sent to the `train` queue; without one the embedded worker polls the table. If
sending fails (broker down), the job stays queued and the scheduler re-sends it: an accepted request is never lost.
"""

from __future__ import annotations

import logging
from typing import Any

from continual.jobs import Job, JobStore
from continual.settings import Settings

log = logging.getLogger("poseloop.queue")
MODEL = "poseloop"
RETRAIN_TASK = "poseloop.retrain"
SCHEDULE_TASK = "poseloop.maybe_retrain"
INGEST_TASK = "poseloop.ingest_check"


def jobs_store(settings: Settings) -> JobStore:
    return JobStore(settings.loop.data_dir / "jobs.db")


def celery_app(settings: Settings):
    """The Celery app shared by the API (sending) and the workers (poseloop.worker.tasks registers the tasks)."""
    from celery import Celery

    if not settings.loop.broker_url:
        raise ValueError("no broker configured (POSELOOP_BROKER_URL)")
    vt = {"visibility_timeout": settings.loop.visibility_timeout_s}
    app = Celery("poseloop", broker=settings.loop.broker_url, backend=settings.loop.broker_url)
    app.conf.update(
        task_acks_late=True,  # a message leaves Redis only after its task returned
        task_reject_on_worker_lost=True,  # a killed child re-queues instead of acking
        worker_prefetch_multiplier=1,  # long tasks never queue behind each other in one worker
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_transport_options=vt,
        result_backend_transport_options=vt,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=7 * 86400,
        task_routes={
            RETRAIN_TASK: {"queue": "train"},
            SCHEDULE_TASK: {"queue": "ingest"},
            INGEST_TASK: {"queue": "ingest"},
        },
        beat_schedule={"maybe-retrain": {"task": SCHEDULE_TASK, "schedule": settings.retrain.check_s}},
        timezone="UTC",
    )
    return app


class JobQueue:
    """Submit jobs (idempotent, single-flight per model) and dispatch them to the configured workers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.jobs = jobs_store(settings)
        self._celery = celery_app(settings) if settings.loop.broker_url else None

    @property
    def mode(self) -> str:
        return "celery" if self._celery is not None else "embedded"

    def submit_retrain(
        self, params: dict[str, Any], actor: str, idempotency_key: str | None = None
    ) -> tuple[Job, bool]:
        job, created = self.jobs.submit("retrain", MODEL, params, actor, idempotency_key)
        if created:
            self.dispatch(job.id)
        return job, created

    def dispatch_ingest_checks(self) -> None:
        """Celery mode: ask the `ingest` queue to check new uploads (embedded: the idle worker does it)."""
        if self._celery is None:
            return
        try:
            self._celery.send_task(INGEST_TASK, queue="ingest", retry=False)
        except Exception as err:
            log.warning("could not queue ingest checks (%s)", err)

    def dispatch(self, job_id: str) -> bool:
        """Send the job's message (Celery mode). False if the broker is unreachable (the scheduler re-sends)."""
        if self._celery is None:
            return True
        try:
            self._celery.send_task(RETRAIN_TASK, args=[job_id], queue="train", retry=False)
            return True
        except Exception as err:
            log.warning("could not send job %s to the broker (%s); it stays queued", job_id, err)
            return False
