"""The training worker's own Prometheus metrics, served by the worker process on `loop.worker_metrics_port`.

The API's /metrics already reports the loop from its stores (jobs by state, queue depth, gate decisions, pool
size); what only the worker knows is here: how long its chunks take, how many training steps per second it runs,
whether it is busy, what the ingest check got through, and its own process (CPU seconds, memory), as Flower
shows for a Celery worker. One registry per process, no `_created` series.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)

from continual.jobs import Job
from continual.retrain import RetrainContext
from continual.runner import work_once

log = logging.getLogger("poseloop.worker")
CHUNK_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800)


class WorkerMetrics:
    """The worker's series; `work_once` and `ingest` wrap what the worker does and record it."""

    def __init__(self) -> None:
        disable_created_metrics()
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.info = Info("poseloop_worker", "the worker: name, niceness, threads, cores", registry=r)
        self.chunks = Counter(
            "poseloop_worker_job_chunks_total",
            "job chunks this worker ran, by outcome (finished, paused = a chunk done, lost = lease lost)",
            ["outcome"],
            registry=r,
        )
        self.chunk_seconds = Histogram(
            "poseloop_worker_job_chunk_seconds", "wall time of one job chunk", buckets=CHUNK_BUCKETS, registry=r
        )
        self.finished = Counter(
            "poseloop_worker_jobs_finished_total", "jobs this worker finished, by final state", ["state"], registry=r
        )
        self.steps = Counter("poseloop_worker_train_steps_total", "training steps this worker ran", registry=r)
        self.steps_per_s = Gauge(
            "poseloop_worker_train_steps_per_second", "training steps per second of the last chunk", registry=r
        )
        self.busy = Gauge("poseloop_worker_busy", "1 while the worker runs a job chunk", registry=r)
        self.last_chunk = Gauge(
            "poseloop_worker_last_chunk_timestamp_seconds", "when the last job chunk ended (Unix time)", registry=r
        )
        self.checked = Counter(
            "poseloop_worker_ingest_checked_total", "uploads the ingest check thumbnailed and scored", registry=r
        )

    def describe(self, name: str, nice: int, threads: int, cpus: tuple[int, ...] | None) -> None:
        self.info.info({"name": name, "nice": str(nice), "threads": str(threads), "cpus": str(cpus or "all")})

    def serve(self, port: int, host: str = "0.0.0.0") -> bool:
        """Serve /metrics on `port` (0 = off); False (logged) when the port is taken, e.g. a second worker on
        the same machine: the worker still works, only its metrics are not exposed."""
        if port <= 0:
            return False
        try:
            start_http_server(port, host, registry=self.registry)
        except OSError as err:
            log.warning("worker metrics not served on port %d: %s", port, err)
            return False
        log.info("worker metrics on http://%s:%d/metrics", host, port)
        return True

    def work_once(
        self, ctx: RetrainContext, job_id: str | None = None, chunk_steps: int | None = None
    ) -> tuple[str, Job | None]:
        """continual.runner.work_once, measured (an idle poll is not a chunk)."""
        started = time.perf_counter()
        claimed: list[Job] = []  # the job as claimed: its progress is the step this chunk starts from
        self.busy.set(1)
        try:
            outcome, job = work_once(ctx, job_id, chunk_steps, on_claim=claimed.append)
        finally:
            self.busy.set(0)
        if outcome == "idle" or job is None:
            return outcome, job
        seconds = time.perf_counter() - started
        after = ctx.jobs.get(job.id)
        before = int(claimed[0].progress.get("step", 0)) if claimed else 0
        steps = max(0, int(after.progress.get("step", 0)) - before)
        self.chunks.labels(outcome).inc()
        self.chunk_seconds.observe(seconds)
        self.steps.inc(steps)
        if steps:
            self.steps_per_s.set(steps / seconds)
        if outcome == "finished":
            self.finished.labels(after.state).inc()
        self.last_chunk.set(time.time())
        return outcome, job

    def ingest(self, check: Callable[[], int]) -> int:
        """Run one ingest-check batch (`check` returns how many uploads it checked) and count it."""
        n = check()
        self.checked.inc(n)
        return n
