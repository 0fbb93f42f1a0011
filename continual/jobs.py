"""Retrain jobs: one SQLite table that the API, the workers and the scheduler share (no torch here).

The table is the source of truth for a job's state, progress and result in both queue modes:
  * embedded (no broker configured): `poseloop worker` polls the table and claims jobs itself;
  * Celery/Redis: the API also sends a `poseloop.retrain` task carrying the job id; Celery handles delivery and
    redelivery (acks_late, reject on worker loss) and the task claims the row the same way.
A claim is a lease (owner + expiry) renewed by heartbeats. A worker that dies stops renewing, so the row
becomes claimable again once the lease expires: the redelivered task (Celery) or the next poll (embedded) takes
it over and the retrain resumes from its last checkpoint. Nothing is kept only in memory or only in the broker.

States: queued → running → succeeded | failed | cancelled. One queued-or-running retrain per model: a second
request gets the existing job. An Idempotency-Key maps to one job forever.
Limits (embedded mode): one machine (SQLite over a network filesystem is not safe), polling latency ~1 s.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.sqlite import open_wal

ACTIVE_STATES = ("queued", "running")
FINAL_STATES = ("succeeded", "failed", "cancelled")
LOG_TAIL = 200

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, model TEXT NOT NULL, state TEXT NOT NULL,
    idempotency_key TEXT UNIQUE, params TEXT NOT NULL, requested_by TEXT NOT NULL,
    created TEXT NOT NULL, updated TEXT NOT NULL, started TEXT, finished TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, lease_owner TEXT, lease_until REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    progress TEXT NOT NULL DEFAULT '{}', result TEXT NOT NULL DEFAULT '{}', error TEXT);
CREATE TABLE IF NOT EXISTS job_logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, ts TEXT NOT NULL, line TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS job_logs_job ON job_logs(job_id, id);
"""


class JobNotFound(LookupError):
    pass


class LeaseLost(RuntimeError):
    """Another worker owns the job now (this one was presumed dead): stop without touching it."""


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    model: str
    state: str
    params: dict[str, Any]
    requested_by: str
    created: str
    updated: str
    started: str | None
    finished: str | None
    attempts: int
    cancel_requested: bool
    progress: dict[str, Any]
    result: dict[str, Any]
    error: str | None
    idempotency_key: str | None
    lease_owner: str | None

    def to_dict(self, logs: list[str] | None = None) -> dict[str, Any]:
        out = {
            k: getattr(self, k)
            for k in (
                "id",
                "kind",
                "model",
                "state",
                "params",
                "requested_by",
                "created",
                "updated",
                "started",
                "finished",
                "attempts",
                "cancel_requested",
                "progress",
                "result",
                "error",
            )
        }
        if logs is not None:
            out["logs_tail"] = logs
        return out


class JobStore:
    """SQLite job table at `path` (WAL; safe across the processes of one machine)."""

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        """`clock` gives the epoch seconds leases are measured in (tests inject one instead of sleeping)."""
        self.path = Path(path)
        self._clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        open_wal(self.path, _SCHEMA)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One short IMMEDIATE transaction: read-modify-write sequences cannot interleave across processes."""
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA synchronous=FULL")
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    # ------------------------------------------------------------------ requests (API, scheduler)
    def submit(
        self, kind: str, model: str, params: dict[str, Any], requested_by: str, idempotency_key: str | None = None
    ) -> tuple[Job, bool]:
        """(job, created). Returns the job already bound to `idempotency_key`, or the model's queued/running job
        of this kind, instead of creating a second one."""
        with self._tx() as db:
            if idempotency_key is not None:
                row = db.execute("SELECT * FROM jobs WHERE idempotency_key = ?", (idempotency_key,)).fetchone()
                if row is not None:
                    return _job(row), False
            row = db.execute(
                "SELECT * FROM jobs WHERE kind = ? AND model = ? AND state IN ('queued', 'running') "
                "ORDER BY created, rowid LIMIT 1",
                (kind, model),
            ).fetchone()
            if row is not None:
                return _job(row), False
            job_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]
            now = _now()
            db.execute(
                "INSERT INTO jobs (id, kind, model, state, idempotency_key, params, requested_by, created, "
                "updated) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
                (job_id, kind, model, idempotency_key, json.dumps(params), requested_by, now, now),
            )
            _log(db, job_id, f"queued by {requested_by}")
            return _job(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()), True

    def request_cancel(self, job_id: str, actor: str) -> Job:
        """A queued job is cancelled at once; a running one stops at its next heartbeat (checkpoint kept)."""
        with self._tx() as db:
            job = _get(db, job_id)
            if job.state == "queued":
                db.execute(
                    "UPDATE jobs SET state = 'cancelled', cancel_requested = 1, finished = ?, updated = ? WHERE id = ?",
                    (_now(), _now(), job_id),
                )
                _log(db, job_id, f"cancelled by {actor} before it started")
            elif job.state == "running":
                db.execute("UPDATE jobs SET cancel_requested = 1, updated = ? WHERE id = ?", (_now(), job_id))
                _log(db, job_id, f"cancel requested by {actor}")
            return _get(db, job_id)

    # ------------------------------------------------------------------ reads
    def get(self, job_id: str) -> Job:
        with self._tx() as db:
            return _get(db, job_id)

    def list(self, limit: int = 50, state: str | None = None) -> builtins.list[Job]:
        with self._tx() as db:
            if state:
                rows = db.execute(
                    "SELECT * FROM jobs WHERE state = ? ORDER BY created DESC, rowid DESC LIMIT ?", (state, limit)
                )
            else:
                rows = db.execute("SELECT * FROM jobs ORDER BY created DESC, rowid DESC LIMIT ?", (limit,))
            return [_job(r) for r in rows.fetchall()]

    def summary(self) -> dict[str, Any]:
        """What monitoring scrapes: jobs by state, finished retrains by gate decision, the newest gate's figures."""
        gate = "json_extract(result, '$.gate.decision')"
        with self._tx() as db:
            states = dict.fromkeys((*ACTIVE_STATES, *FINAL_STATES), 0)
            states.update(dict(db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()))
            decisions = dict(db.execute(f"SELECT {gate}, COUNT(*) FROM jobs WHERE {gate} IS NOT NULL GROUP BY 1"))
            last = db.execute(
                f"SELECT json_extract(result, '$.gate') FROM jobs WHERE {gate} IS NOT NULL "
                "ORDER BY finished DESC, created DESC LIMIT 1"
            ).fetchone()
        return {"states": states, "gate_decisions": decisions, "last_gate": json.loads(last[0]) if last else None}

    def logs(self, job_id: str, tail: int = 50) -> builtins.list[str]:
        with self._tx() as db:
            rows = db.execute(
                "SELECT ts, line FROM job_logs WHERE job_id = ? ORDER BY id DESC LIMIT ?", (job_id, tail)
            ).fetchall()
        return [f"{r['ts']} {r['line']}" for r in reversed(rows)]

    def last_finished(self, kind: str, model: str) -> Job | None:
        with self._tx() as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE kind = ? AND model = ? AND state IN "
                "('succeeded', 'failed', 'cancelled') ORDER BY finished DESC LIMIT 1",
                (kind, model),
            ).fetchone()
        return _job(row) if row else None

    # ------------------------------------------------------------------ workers
    def claim(self, owner: str, lease_s: float, job_id: str | None = None) -> Job | None:
        """Take a queued job (or `job_id`), or a running one whose lease expired (its worker died)."""
        with self._tx() as db:
            now = self._clock()
            query = "SELECT * FROM jobs WHERE (state = 'queued' OR (state = 'running' AND lease_until < ?))"
            args: list[Any] = [now]
            if job_id is not None:
                query += " AND id = ?"
                args.append(job_id)
            row = db.execute(query + " ORDER BY created, rowid LIMIT 1", args).fetchone()
            if row is None:
                return None
            job = _job(row)
            if job.cancel_requested:
                db.execute(
                    "UPDATE jobs SET state = 'cancelled', finished = ?, updated = ? WHERE id = ?",
                    (_now(), _now(), job.id),
                )
                _log(db, job.id, "cancelled (requested while its worker was gone)")
                return None
            db.execute(
                "UPDATE jobs SET state = 'running', lease_owner = ?, lease_until = ?, attempts = attempts + 1, "
                "started = COALESCE(started, ?), updated = ? WHERE id = ?",
                (owner, now + lease_s, _now(), _now(), job.id),
            )
            resumed = " (resuming: previous worker lost)" if job.state == "running" else ""
            _log(db, job.id, f"claimed by {owner}, attempt {job.attempts + 1}{resumed}")
            return _get(db, job.id)

    def heartbeat(
        self,
        job_id: str,
        owner: str,
        lease_s: float,
        progress: dict[str, Any] | None = None,
        result: dict[str, Any] | None = None,
        log: str | None = None,
    ) -> bool:
        """Renew the lease (and record progress/result/log). Returns True if cancellation was requested.
        Raises LeaseLost if another worker owns the job."""
        with self._tx() as db:
            job = _owned(db, job_id, owner)
            merged = {**job.result, **(result or {})}
            db.execute(
                "UPDATE jobs SET lease_until = ?, progress = ?, result = ?, updated = ? WHERE id = ?",
                (
                    self._clock() + lease_s,
                    json.dumps(progress if progress is not None else job.progress),
                    json.dumps(merged),
                    _now(),
                    job_id,
                ),
            )
            if log:
                _log(db, job_id, log)
            return job.cancel_requested

    def release(self, job_id: str, owner: str, log: str | None = None) -> None:
        """Give a running job back (end of a chunk): claimable at once by the next task or poll."""
        with self._tx() as db:
            _owned(db, job_id, owner)
            db.execute(
                "UPDATE jobs SET lease_owner = NULL, lease_until = 0, updated = ? WHERE id = ?", (_now(), job_id)
            )
            if log:
                _log(db, job_id, log)

    def orphans(self, queued_for_s: float) -> builtins.list[Job]:
        """Jobs nobody is working on: running with an expired lease, or queued for longer than `queued_for_s`
        (their message may have been lost with a broker restart). The scheduler re-sends them."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT * FROM jobs WHERE state = 'running' AND lease_until < ?", (self._clock(),)
            ).fetchall()
            queued = db.execute("SELECT * FROM jobs WHERE state = 'queued'").fetchall()
        cutoff = datetime.now(UTC).timestamp() - queued_for_s
        return [_job(r) for r in rows] + [
            _job(r) for r in queued if datetime.fromisoformat(r["created"]).timestamp() < cutoff
        ]

    def finish(
        self, job_id: str, owner: str, state: str, result: dict[str, Any] | None = None, error: str | None = None
    ) -> Job:
        if state not in FINAL_STATES:
            raise ValueError(f"not a final state: {state}")
        with self._tx() as db:
            job = _owned(db, job_id, owner)
            db.execute(
                "UPDATE jobs SET state = ?, result = ?, error = ?, finished = ?, updated = ?, "
                "lease_until = NULL WHERE id = ?",
                (state, json.dumps({**job.result, **(result or {})}), error, _now(), _now(), job_id),
            )
            _log(db, job_id, f"{state}" + (f": {error}" if error else ""))
            return _get(db, job_id)


def _get(db: sqlite3.Connection, job_id: str) -> Job:
    row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise JobNotFound(f"no job {job_id!r}")
    return _job(row)


def _owned(db: sqlite3.Connection, job_id: str, owner: str) -> Job:
    """The job, if `owner` still holds it (running, its lease); LeaseLost otherwise."""
    job = _get(db, job_id)
    if job.state != "running" or job.lease_owner != owner:
        raise LeaseLost(f"job {job_id} is {job.state} and owned by {job.lease_owner}, not {owner}")
    return job


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        kind=row["kind"],
        model=row["model"],
        state=row["state"],
        params=json.loads(row["params"]),
        requested_by=row["requested_by"],
        created=row["created"],
        updated=row["updated"],
        started=row["started"],
        finished=row["finished"],
        attempts=row["attempts"],
        cancel_requested=bool(row["cancel_requested"]),
        progress=json.loads(row["progress"]),
        result=json.loads(row["result"]),
        error=row["error"],
        idempotency_key=row["idempotency_key"],
        lease_owner=row["lease_owner"],
    )


def _log(db: sqlite3.Connection, job_id: str, line: str) -> None:
    db.execute("INSERT INTO job_logs (job_id, ts, line) VALUES (?, ?, ?)", (job_id, _now(), line[:2000]))
    db.execute(
        "DELETE FROM job_logs WHERE job_id = ? AND id NOT IN (SELECT id FROM job_logs WHERE job_id = ? "
        "ORDER BY id DESC LIMIT ?)",
        (job_id, job_id, LOG_TAIL),
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
