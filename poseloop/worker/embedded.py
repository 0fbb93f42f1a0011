"""The embedded worker (no broker): polls the job table, runs jobs to completion, is its own scheduler, and
runs the ingest checks (thumbnails, teacher confidence) when it has no job.

Limits: one machine (the SQLite job table and the data directory are local files); a job starts within
`worker_poll_s`; a killed worker's job is resumed by the next worker start (or by another embedded worker)
once its lease expires (`job_lease_s`).
"""

from __future__ import annotations

import logging
import threading
import time

from continual.queue import JobQueue
from continual.runner import context, worker_name
from continual.schedule import tick
from continual.settings import Settings
from poseloop.worker.checks import check_pending
from poseloop.worker.metrics import WorkerMetrics

log = logging.getLogger("poseloop.worker")


def run_embedded_worker(settings: Settings, stop: threading.Event | None = None, schedule: bool = True) -> None:
    stop = stop or threading.Event()
    ctx = context(settings, worker_name("embedded"))
    queue = JobQueue(settings)
    metrics = WorkerMetrics()
    metrics.serve(settings.loop.worker_metrics_port)
    try:
        ctx.uploads.sweep()  # temp files and unindexed images a killed process left behind (logged)
    except Exception:
        log.exception("upload sweep at start failed")
    next_tick = time.monotonic()
    log.info("embedded worker %s polling %s", ctx.owner, ctx.jobs.path)
    while not stop.is_set():
        if schedule and time.monotonic() >= next_tick:
            next_tick = time.monotonic() + settings.retrain.check_s
            try:
                decision = tick(queue, ctx.registry, ctx.uploads)
                if decision["retrain"]:
                    log.info("scheduler: %s → job %s", decision["retrain"], decision["job"])
            except Exception:
                log.exception("scheduler tick failed")
        outcome, _ = metrics.work_once(ctx)
        if outcome == "idle" and metrics.ingest(lambda: check_pending(ctx.uploads, ctx.registry)) == 0:
            stop.wait(settings.loop.worker_poll_s)
