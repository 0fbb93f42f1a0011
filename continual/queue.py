"""How the API hands jobs to workers (no torch here).

The job row (continual.jobs) is always written first. With a broker (`POSELOOP_BROKER_URL=redis://…`) a Celery
message carrying the job id is sent to the `train` queue; without one the embedded worker polls the table.

Broker outages: every broker call is bounded (`broker_timeout_s` for connecting and for each socket operation,
no publish retries), so a request never waits on a broker that is down or hung. A message the broker did not
take goes to the outbox (`data_dir/outbox.sqlite`, durable) and a background thread of the process sends it again
every `broker_retry_s` until the broker takes it: queued retrain jobs and the ingest checks of new uploads are
dispatched as soon as the broker is back, without waiting for the scheduler's orphan sweep (which still covers
a message the broker accepted and then lost). While the outbox holds anything, new messages queue behind it
instead of trying the broker inline. Celery keeps no results (the job row is the result), so there is no result
backend whose reconnection limit could leave the process in a "must be restarted" state.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from continual.jobs import ACTIVE_STATES, Job, JobNotFound, JobStore
from continual.settings import Settings
from core.sqlite import open_wal, transaction

log = logging.getLogger("poseloop.queue")
MODEL = "poseloop"
RETRAIN_TASK = "poseloop.retrain"
SCHEDULE_TASK = "poseloop.maybe_retrain"
INGEST_TASK = "poseloop.ingest_check"
BROKER_PROBE_CACHE_S = 2.0  # /readyz answers from the last probe this young (a load balancer polls often)
_OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    key TEXT PRIMARY KEY, task TEXT NOT NULL, args TEXT NOT NULL, queue TEXT NOT NULL, created TEXT NOT NULL);
"""


def jobs_store(settings: Settings) -> JobStore:
    return JobStore(settings.loop.data_dir / "jobs.db")


def celery_app(settings: Settings):
    """The Celery app shared by the API (sending) and the workers (poseloop.worker.tasks registers the tasks)."""
    from celery import Celery

    if not settings.loop.broker_url:
        raise ValueError("no broker configured (POSELOOP_BROKER_URL)")
    timeout = settings.limits.broker_timeout_s
    transport = {
        "visibility_timeout": settings.loop.visibility_timeout_s,
        "socket_connect_timeout": timeout,  # a host that does not answer
        "socket_timeout": timeout,  # a broker that accepted the connection and hangs (must exceed BRPOP's 1 s)
        "socket_keepalive": True,
    }
    app = Celery("poseloop", broker=settings.loop.broker_url)
    app.conf.update(
        task_acks_late=True,  # a message leaves Redis only after its task returned
        task_reject_on_worker_lost=True,  # a killed child re-queues instead of acking
        worker_prefetch_multiplier=1,  # long tasks never queue behind each other in one worker
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_transport_options=transport,
        broker_connection_timeout=timeout,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # workers and beat wait for the broker as long as it takes
        task_ignore_result=True,  # the job row holds every result; no result backend to reconnect to
        task_serializer="json",
        accept_content=["json"],
        task_routes={
            RETRAIN_TASK: {"queue": "train"},
            SCHEDULE_TASK: {"queue": "ingest"},
            INGEST_TASK: {"queue": "ingest"},
        },
        beat_schedule={"maybe-retrain": {"task": SCHEDULE_TASK, "schedule": settings.retrain.check_s}},
        timezone="UTC",
    )
    return app


class Outbox:
    """Messages waiting for the broker, one row per `key` (a job's message or "ingest"), oldest first. SQLite
    (WAL) so that every process of the host shares it and nothing is lost when one of them dies."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        open_wal(self.path, _OUTBOX_SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with transaction(self.path) as db:
            yield db

    def put(self, key: str, task: str, args: list[Any], queue: str) -> None:
        with self._db() as db:
            db.execute(
                "INSERT OR IGNORE INTO outbox VALUES (?, ?, ?, ?, ?)",
                (key, task, json.dumps(args), queue, datetime.now(UTC).isoformat(timespec="milliseconds")),
            )

    def items(self) -> list[tuple[str, str, list[Any], str]]:
        with self._db() as db:
            rows = db.execute("SELECT key, task, args, queue FROM outbox ORDER BY created, key").fetchall()
        return [(key, task, json.loads(args), queue) for key, task, args, queue in rows]

    def remove(self, key: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM outbox WHERE key = ?", (key,))

    def __len__(self) -> int:
        with self._db() as db:
            return db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]


# one redelivery thread per outbox and process, however many JobQueues the process builds
_redelivery: dict[Path, threading.Thread] = {}
_redelivery_lock = threading.Lock()


class JobQueue:
    """Submit jobs (idempotent, single-flight per model) and dispatch them to the configured workers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.jobs = jobs_store(settings)
        self._celery = celery_app(settings) if settings.loop.broker_url else None
        self.outbox = Outbox(settings.loop.data_dir / "outbox.sqlite") if self._celery is not None else None
        self._probe_lock = threading.Lock()
        self._probe: tuple[float, str | None] = (float("-inf"), None)  # (monotonic time, error or None)
        self._probing = False
        if self.outbox is not None and len(self.outbox):
            self._redeliver_in_background()  # left by an earlier process, e.g. the broker was down at its end

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
        self._send("ingest", INGEST_TASK, [], "ingest")

    def dispatch(self, job_id: str) -> bool:
        """Send the job's message (Celery mode). False if the broker did not take it now: the message waits in
        the outbox and is sent when the broker is back."""
        return self._send(f"retrain:{job_id}", RETRAIN_TASK, [job_id], "train")

    def flush_outbox(self) -> int:
        """Send the waiting messages, oldest first; stop at the first the broker refuses. A job that finished
        (or vanished) meanwhile is dropped. Returns how many were sent."""
        if self.outbox is None:
            return 0
        sent = 0
        for key, task, args, queue in self.outbox.items():
            if task == RETRAIN_TASK and not self._still_active(args[0]):
                self.outbox.remove(key)
                continue
            try:
                self._publish(task, args, queue)
            except Exception as err:
                log.debug("broker still unavailable (%s); %s keeps waiting", err, key)
                break
            self.outbox.remove(key)
            sent += 1
        if sent:
            log.info("broker reachable: sent %d message(s) that waited in the outbox", sent)
        return sent

    def broker_status(self) -> dict[str, Any]:
        """For /readyz: {"mode"} and, with a broker, whether it answered the last ping (None until the first
        ping is done), its error, how long ago it was checked and how many messages wait in the outbox. Never
        waits for the broker: a ping older than BROKER_PROBE_CACHE_S starts a new one in the background."""
        if self._celery is None or self.outbox is None:
            return {"mode": "embedded"}
        with self._probe_lock:
            checked, error = self._probe
            stale = time.monotonic() - checked >= BROKER_PROBE_CACHE_S
            if stale and not self._probing:
                self._probing = True
                threading.Thread(target=self._refresh_probe, name="poseloop-broker-ping", daemon=True).start()
        known = checked != float("-inf")
        return {
            "mode": "celery",
            "reachable": (error is None) if known else None,
            "error": error if known else "not checked yet",
            "checked_s_ago": round(time.monotonic() - checked, 1) if known else None,
            "undelivered": len(self.outbox),
        }

    # ------------------------------------------------------------------ internals
    def _send(self, key: str, task: str, args: list[Any], queue: str) -> bool:
        if self._celery is None or self.outbox is None:
            return True
        if len(self.outbox) == 0:
            try:
                self._publish(task, args, queue)
                return True
            except Exception as err:
                log.warning("broker unavailable (%s): %s waits in the outbox and is sent when it is back", err, key)
        self.outbox.put(key, task, args, queue)  # behind the messages already waiting (the broker is away)
        self._redeliver_in_background()
        return False

    def _publish(self, task: str, args: list[Any], queue: str) -> None:
        assert self._celery is not None, "only called in Celery mode"
        self._celery.send_task(task, args=args, queue=queue, retry=False, ignore_result=True)

    def _refresh_probe(self) -> None:
        error = self._ping()
        with self._probe_lock:
            self._probe, self._probing = (time.monotonic(), error), False

    def _ping(self) -> str | None:
        """None if the broker answers a PING within broker_timeout_s, else what went wrong (no credentials)."""
        assert self._celery is not None, "only called in Celery mode"
        try:
            with self._celery.connection_for_write() as conn:
                conn.ensure_connection(max_retries=0, timeout=self.settings.limits.broker_timeout_s)
                conn.default_channel.client.ping()
            return None
        except Exception as err:
            return f"{type(err).__name__}: {str(err)[:200]}"

    def _still_active(self, job_id: str) -> bool:
        try:
            return self.jobs.get(job_id).state in ACTIVE_STATES
        except JobNotFound:
            return False

    def _redeliver_in_background(self) -> None:
        assert self.outbox is not None, "only called in Celery mode"
        with _redelivery_lock:
            running = _redelivery.get(self.outbox.path)
            if running is not None and running.is_alive():
                return
            thread = threading.Thread(target=self._redeliver, name="poseloop-redeliver", daemon=True)
            _redelivery[self.outbox.path] = thread
            thread.start()

    def _redeliver(self) -> None:
        """Every broker_retry_s: send what waits; end once the outbox is empty (checked under the lock, so a
        message put meanwhile starts a new thread)."""
        assert self.outbox is not None, "only called in Celery mode"
        pause = threading.Event()
        while True:
            pause.wait(self.settings.limits.broker_retry_s)
            try:
                self.flush_outbox()
            except Exception:  # the outbox or job table unreadable for a moment: try again next round
                log.exception("outbox redelivery failed")
            with _redelivery_lock:
                if len(self.outbox) == 0:
                    _redelivery.pop(self.outbox.path, None)
                    return
