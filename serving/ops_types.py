"""Wire types of /v1/models and /v1/ops/*: the routes' `response_model`s, their error bodies, and what
`poseloop.client` parses answers into (one definition for the server and its client).

Only pydantic is imported here, so the client stays light. Models allow extra fields: a newer server may add
some, and an older client keeps them (`model_extra`) instead of failing.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

VersionState = Literal["candidate", "active", "retired", "rejected"]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class ErrorDetail(BaseModel):
    code: str = Field(..., description="stable machine-readable code, e.g. unknown_version, unauthenticated")
    message: str = Field(..., description="what went wrong, for a person")


class ErrorBody(BaseModel):
    """Every error the API answers: `{"error": {"code", "message"}}`."""

    error: ErrorDetail


_ERROR_DESCRIPTIONS = {
    400: "Malformed request",
    401: "Missing, malformed or unknown bearer token (WWW-Authenticate: Bearer)",
    403: "The token lacks the role this route needs",
    404: "No such version or job",
    409: "Refused in the current state (rejected/pruned version, nothing to roll back to, job finished, ...)",
    413: "Request too large",
    422: "Invalid request body or parameters (the message names the field), or a candidate that failed to load",
    503: "No active model, or overloaded (Retry-After)",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status documented with the ErrorBody schema."""
    return {status: {"model": ErrorBody, "description": _ERROR_DESCRIPTIONS[status]} for status in statuses}


class PinInfo(_Open):
    actor: str
    reason: str | None = None
    since: str = Field(..., description="ISO 8601 UTC")


class VersionSummary(_Open):
    """One registered version (models.registry.VersionInfo.to_dict)."""

    version: str = Field(..., description="increasing integer, as a string")
    status: VersionState
    reason: str | None = Field(None, description="why it is in this state (gate decision, load failure, ...)")
    created: str
    updated: str
    on_disk: bool = Field(..., description="false once pruned: history only, cannot be served")
    parent: str | None = Field(None, description="the version it was trained from")
    metrics: dict[str, Any] = Field(default_factory=dict)
    size_bytes: int | None = None
    files: dict[str, Any] = Field(default_factory=dict, description="file name → {sha256, bytes}")
    data_summary: dict[str, Any] | None = Field(None, description="what it was trained on (unlabeled_seq, ...)")
    config: Any = Field(None, description="the resolved training config, when registered by a retrain job")
    model: dict[str, Any] = Field(default_factory=dict, description="ONNX contract summary")
    actor: str | None = Field(None, description="who registered it")


class ListedVersion(VersionSummary):
    loaded: bool = Field(..., description="loaded in this API process's backend")


class ModelList(_Open):
    active: str | None = Field(..., description="the registry's active version")
    previous_active: str | None = Field(..., description="what a rollback without a version goes back to")
    serving: str | None = Field(..., description="the version this process serves (follows `active`)")
    pinned: PinInfo | None = Field(None, description="set while automatic promotion is frozen")
    versions: list[ListedVersion]


class InputSize(BaseModel):
    width: int
    height: int


class ActiveModel(VersionSummary):
    serving: str
    keypoints: list[str]
    skeleton: list[list[int]] = Field(..., description="pairs of keypoint indices")
    input_size: InputSize
    decode: str


class SwapTiming(BaseModel):
    load: float = Field(..., description="ms: loading and warming the new version while the old one serves")
    flip: float = Field(..., description="ms: the atomic switch")
    total: float


class SwapResult(_Open):
    active: str
    previous: str | None
    action: Literal["promote", "rollback"]
    timing_ms: SwapTiming


class PinState(_Open):
    pinned: PinInfo | None = Field(..., description="null = the retrain gate may promote automatically")
    active: str | None = Field(None, description="the registry's active version after the call")


class AuditEvent(_Open):
    ts: str
    actor: str
    action: str = Field(..., description="register, promote, rollback, retire, reject, pin, unpin, prune, ...")
    version: str
    from_: str | None = Field(None, alias="from")
    to: str | None = None
    reason: str | None = None


class EventList(BaseModel):
    events: list[AuditEvent] = Field(..., description="oldest first")


class Job(_Open):
    id: str
    kind: str
    model: str
    state: JobState
    params: dict[str, Any]
    requested_by: str
    created: str
    updated: str
    started: str | None = None
    finished: str | None = None
    attempts: int
    cancel_requested: bool
    progress: dict[str, Any] = Field(
        default_factory=dict, description="stage, step, total_steps, percent, eta_s, losses, validation"
    )
    result: dict[str, Any] = Field(
        default_factory=dict, description="plan, metrics, candidate and `gate` {decision, reason, gain, ci_low, ...}"
    )
    error: str | None = None
    logs_tail: list[str] | None = Field(None, description="GET /v1/ops/jobs/{id} only")


class JobList(BaseModel):
    jobs: list[Job] = Field(..., description="newest first")


class RetrainAccepted(_Open):
    created: bool = Field(..., description="false: the same request again, answered with the job it started")
    queue: str = Field(..., description="embedded or celery")
    job: Job
