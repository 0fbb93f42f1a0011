"""Operations (role `ops`): retrain jobs (and their training curves), promote (hot swap), rollback, pin/unpin
automatic promotion, audit.

Answers are typed (serving.ops_types); every error is the ErrorBody `{"error": {"code", "message"}}`.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from continual.jobs import FINAL_STATES, JobNotFound
from continual.overrides import check_overrides
from core.inputs import InputError
from serving.auth import Principal
from serving.ops_types import (
    EventList,
    Job,
    JobList,
    JobState,
    PinState,
    RetrainAccepted,
    SwapResult,
    error_responses,
)
from serving.routes.deps import get_service, require

router = APIRouter(prefix="/v1/ops", tags=["ops"], responses=error_responses(401, 403, 422))
VERSION_PATTERN = r"^[0-9]+$"


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(..., min_length=1, max_length=32, pattern=VERSION_PATTERN)
    reason: str | None = Field(None, max_length=500)


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(
        None, min_length=1, max_length=32, pattern=VERSION_PATTERN, description="default: the previous active version"
    )
    reason: str | None = Field(None, max_length=500)


@router.post(
    "/promote",
    summary="Hot-swap to a registered version (the old one serves until it is ready)",
    response_model=SwapResult,
    responses=error_responses(404, 409),
)
async def promote(
    body: PromoteRequest, request: Request, caller: Principal = Depends(require("ops"))
) -> dict[str, Any]:
    service = get_service(request)
    return await run_in_threadpool(service.promote, body.version, caller.actor, body.reason, False)


@router.post(
    "/rollback",
    summary="Hot-swap back to the previous active version (or the one given)",
    response_model=SwapResult,
    responses=error_responses(404, 409),
)
async def rollback(
    request: Request, body: RollbackRequest | None = None, caller: Principal = Depends(require("ops"))
) -> dict[str, Any]:
    service = get_service(request)
    body = body or RollbackRequest()
    return await run_in_threadpool(service.promote, body.version, caller.actor, body.reason, True)


@router.get("/events", summary="Audit log: who changed which version's state, when and why", response_model=EventList)
def events(
    request: Request, limit: int = Query(100, ge=1, le=10_000), _caller: Principal = Depends(require("ops"))
) -> dict[str, Any]:
    return {"events": get_service(request).manager.registry.events(limit)}


class RetrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Strict: JSON `true` is not the integer 1
    iterations: Annotated[int, Strict()] | None = Field(
        None, ge=1, le=1_000_000, description="training steps (default: the setting)"
    )
    margin: float | None = Field(None, ge=-100, le=100, description="promotion margin override (metric points)")
    nproc: Annotated[int, Strict()] | None = Field(
        None,
        ge=1,
        le=64,
        description="data-parallel training processes, one per GPU (torchrun + DDP; default: POSELOOP_TRAIN_NPROC)",
    )
    overrides: list[str] = Field(
        default_factory=list, max_length=32, description="training config overrides, e.g. optim.lr=0.0005"
    )
    reason: str | None = Field(None, max_length=500)

    @field_validator("margin", mode="before")
    @classmethod
    def _not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("margin must be a number, not a boolean")
        return value

    @field_validator("overrides")
    @classmethod
    def _allowed(cls, values: list[str]) -> list[str]:
        return check_overrides(values)  # continual.overrides: an allow-list with the typed fields' limits


class PinRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(
        None,
        min_length=1,
        max_length=32,
        pattern=VERSION_PATTERN,
        description="pin this version: promote it first (hot swap) unless it is active; default: the active one",
    )
    reason: str | None = Field(None, max_length=500)


class UnpinRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(None, max_length=500)


_RETRAIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": RetrainAccepted, "description": "The same request again: the job it started"},
    **error_responses(409),
}


def _job_or_404(service, job_id: str):
    try:
        return service.queue.jobs.get(job_id)
    except JobNotFound:
        raise StarletteHTTPException(404, f"no job {job_id!r}") from None


@router.post(
    "/retrain",
    status_code=202,
    summary="Start a retrain job (one per model; Idempotency-Key supported)",
    response_model=RetrainAccepted,
    responses=_RETRAIN_RESPONSES,
)
def retrain(
    request: Request,
    response: Response,
    body: RetrainRequest | None = None,
    idempotency_key: str | None = Header(None, max_length=200),
    caller: Principal = Depends(require("ops")),
) -> dict[str, Any]:
    service = get_service(request)
    body = body or RetrainRequest()
    params = {k: v for k, v in body.model_dump().items() if v not in (None, [])}
    if idempotency_key is not None and not idempotency_key.strip():
        raise InputError(422, "invalid_idempotency_key", "Idempotency-Key is empty; omit it or send a real key")
    if service.uploads.max_seq() == 0:
        raise InputError(409, "empty_pool", "the unlabeled pool is empty: upload images first (POST /v1/unlabeled)")
    job, created = service.queue.submit_retrain(params, caller.actor, idempotency_key)
    if not created:
        same = _request_params(job.params) == _request_params(params)
        if idempotency_key is not None and job.idempotency_key == idempotency_key and not same:
            raise InputError(
                422, "idempotency_key_reused", f"Idempotency-Key was used for job {job.id} with another body"
            )
        if not same:
            raise InputError(
                409,
                "retrain_running",
                f"job {job.id} ({job.state}) is already retraining this model with other "
                "parameters; cancel it or wait for it (GET /v1/ops/jobs/" + job.id + ")",
            )
        response.status_code = 200  # the very same request again: the job it started
    return {"created": created, "queue": service.queue.mode, "job": job.to_dict()}


def _request_params(params: dict[str, Any]) -> dict[str, Any]:
    """What makes two retrain requests the same job (the free-text reason does not)."""
    return {k: v for k, v in params.items() if k != "reason"}


@router.get("/jobs", summary="Recent jobs, newest first", response_model=JobList)
def jobs(
    request: Request,
    limit: int = Query(50, ge=1, le=1000),
    state: JobState | None = Query(None),
    _caller: Principal = Depends(require("ops")),
) -> dict[str, Any]:
    return {"jobs": [j.to_dict() for j in get_service(request).queue.jobs.list(limit, state)]}


@router.get(
    "/jobs/{job_id}",
    summary="One job: state, progress, metrics, gate decision and the tail of its log",
    response_model=Job,
    responses=error_responses(404),
)
def job(
    job_id: str, request: Request, tail: int = Query(50, ge=0, le=200), _caller: Principal = Depends(require("ops"))
) -> dict[str, Any]:
    service = get_service(request)
    found = _job_or_404(service, job_id)
    return found.to_dict(logs=service.queue.jobs.logs(job_id, tail))


class JobMetrics(BaseModel):
    job_id: str
    available: bool = Field(..., description="false: no metrics file on this host (queued, or trained elsewhere)")
    total_rows: int = Field(..., description="rows in the file; `rows` is every row, or an even sample of them")
    rows: list[dict[str, int | float | None]] = Field(
        ...,
        description="oldest first, numeric fields only: step, loss…, lr (training rows), val/<metric> (validation "
        "rows); non-finite values are null",
    )


MAX_METRIC_ROWS = 20_000


@router.get(
    "/jobs/{job_id}/metrics",
    summary="A job's training curve: the metrics.jsonl rows of its run directory (loss per logged step, validation)",
    response_model=JobMetrics,
    responses=error_responses(404),
)
def job_metrics(
    job_id: str,
    request: Request,
    max_rows: int = Query(2000, ge=10, le=MAX_METRIC_ROWS, description="training rows sampled evenly past this"),
    _caller: Principal = Depends(require("ops")),
) -> dict[str, Any]:
    service = get_service(request)
    found = _job_or_404(service, job_id)
    # the run directory continual.retrain gives a job: <data_dir>/jobs/<kind>-<id> (on the worker's host)
    path = service.settings.loop.data_dir / "jobs" / f"{found.kind}-{found.id}" / "metrics.jsonl"
    if not path.is_file():
        return {"job_id": found.id, "available": False, "total_rows": 0, "rows": []}
    rows = [row for row in (_metric_row(line) for line in path.read_text().splitlines()) if row]
    return {"job_id": found.id, "available": True, "total_rows": len(rows), "rows": _sample(rows, max_rows)}


def _metric_row(line: str) -> dict[str, int | float | None] | None:
    """The numeric fields of one metrics.jsonl line (NaN/inf → None: a diverged loss must still chart);
    None for a blank, torn (a write in progress) or step-less line."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(row, dict) or "step" not in row:
        return None
    numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {k: v if math.isfinite(v) else None for k, v in numbers.items()}


def _sample(rows: list[dict[str, int | float | None]], limit: int) -> list[dict[str, int | float | None]]:
    """Every validation row, and `limit` training rows taken evenly plus the last one (the curve's end)."""
    train = [i for i, row in enumerate(rows) if not any(k.startswith("val/") for k in row)]
    if len(train) <= limit:
        return rows
    stride = len(train) / limit
    keep = {train[int(j * stride)] for j in range(limit)} | {train[-1]}
    train_rows = set(train)
    return [row for i, row in enumerate(rows) if i in keep or i not in train_rows]


@router.post(
    "/jobs/{job_id}/cancel",
    summary="Cancel: a queued job at once, a running one at its next heartbeat",
    response_model=Job,
    responses=error_responses(404, 409),
)
def cancel(job_id: str, request: Request, caller: Principal = Depends(require("ops"))) -> dict[str, Any]:
    service = get_service(request)
    found = _job_or_404(service, job_id)
    if found.state in FINAL_STATES:
        raise InputError(409, "job_finished", f"job {job_id} already {found.state}: nothing to cancel")
    return service.queue.jobs.request_cancel(job_id, caller.actor).to_dict()


@router.post(
    "/pin",
    summary="Freeze automatic promotion, optionally on a given version (manual promote/rollback still work)",
    response_model=PinState,
    responses=error_responses(404, 409),
)
def pin(
    request: Request, body: PinRequest | None = None, caller: Principal = Depends(require("ops"))
) -> dict[str, Any]:
    # sync on purpose: FastAPI runs it in a worker thread, and a promotion loads a model (blocking)
    service = get_service(request)
    body = body or PinRequest()
    registry = service.manager.registry
    active = registry.active()
    if body.version is not None and (active is None or active.version != body.version):
        service.promote(body.version, caller.actor, body.reason or f"pin {body.version}", False)
    pinned = registry.set_pinned(True, caller.actor, body.reason)
    active = registry.active()
    return {"pinned": pinned, "active": active.version if active else None}


@router.post("/unpin", summary="Allow automatic promotion by the retrain gate again", response_model=PinState)
def unpin(
    request: Request, body: UnpinRequest | None = None, caller: Principal = Depends(require("ops"))
) -> dict[str, Any]:
    registry = get_service(request).manager.registry
    registry.set_pinned(False, caller.actor, (body or UnpinRequest()).reason)
    active = registry.active()
    return {"pinned": None, "active": active.version if active else None}
