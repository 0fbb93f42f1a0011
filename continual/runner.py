"""Claim → run (a chunk of) a retrain job → finish or release: the one code path of both worker kinds."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable

from continual.jobs import Job, LeaseLost
from continual.retention import prune_job_dirs
from continual.retrain import RetrainContext, run_retrain
from continual.settings import Settings
from continual.uploads import UploadStore
from core.logs import log_context
from models.registry import ModelRegistry

log = logging.getLogger("poseloop.worker")


def worker_name(kind: str) -> str:
    return f"{kind}@{socket.gethostname()}:{os.getpid()}"


def context(settings: Settings, owner: str) -> RetrainContext:
    from continual.queue import jobs_store

    return RetrainContext(
        settings,
        jobs_store(settings),
        ModelRegistry(settings.registry.dir, settings.registry.keep_versions),
        UploadStore(settings.loop.data_dir / "uploads"),
        owner,
    )


def work_once(
    ctx: RetrainContext,
    job_id: str | None = None,
    chunk_steps: int | None = None,
    on_claim: Callable[[Job], None] | None = None,
) -> tuple[str, Job | None]:
    """("idle" | "finished" | "paused" | "lost", job). Paused = a chunk was done; the job is claimable again.
    on_claim: called with the job as claimed, before any work (its progress is where this chunk starts)."""
    job = ctx.jobs.claim(ctx.owner, ctx.settings.loop.job_lease_s, job_id)
    if job is None:
        return "idle", None
    if on_claim is not None:
        on_claim(job)
    with log_context(job_id=job.id):
        return _work_on(ctx, job, chunk_steps)


def _work_on(ctx: RetrainContext, job: Job, chunk_steps: int | None) -> tuple[str, Job | None]:
    log.info("working on job %s (attempt %d)", job.id, job.attempts)
    try:
        done = run_retrain(ctx, job, chunk_steps)
    except LeaseLost as err:
        log.warning("lost job %s: %s", job.id, err)
        return "lost", job
    except BaseException:  # shutdown (SIGTERM/Ctrl-C): hand the job back so the next worker resumes it at once
        try:
            ctx.jobs.release(job.id, ctx.owner, log=f"{ctx.owner} stopped; job released for resumption")
        except Exception:
            log.exception("could not release job %s; it resumes once its lease expires", job.id)
        raise
    if done is None:
        ctx.jobs.release(job.id, ctx.owner, log=f"chunk done by {ctx.owner}")
        return "paused", job
    log.info("job %s %s", done.id, done.state)
    try:
        prune_job_dirs(ctx.settings.loop.data_dir / "jobs", ctx.jobs, ctx.settings.retrain.keep_job_dirs)
    except OSError:  # disk hygiene must not turn a finished job into a failure; the next job tries again
        log.exception("pruning job directories failed")
    return "finished", done
