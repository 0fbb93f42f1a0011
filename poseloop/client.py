"""Typed, synchronous Python client of the PoseLoop HTTP API (the `poseloop` ops commands use it).

    from poseloop.client import PoseLoopClient
    with PoseLoopClient("http://127.0.0.1:8080", token) as api:
        print(api.models().active)
        api.promote("3", reason="better on the dev split")

Answers of /v1/models and /v1/ops/* are parsed into the API's own response models (serving.ops_types, which
import only pydantic); routes without a response model yet (pose, unlabeled, health) return their JSON.
Failures raise a `ClientError`: `Unreachable` when no HTTP answer came (refused, DNS, timeout), an `ApiError`
subclass by status carrying `status`, the API's error `code` and `message` otherwise, and `BadAnswer` when a
200 is not what a PoseLoop API answers (a wrong URL). Auth is `Authorization: Bearer <token>` (serving.auth):
reading needs any valid token, /v1/ops/* the `ops` role, uploads the `upload` role.
No torch, no serving runtime: only httpx and pydantic.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from serving.ops_types import (
    ActiveModel,
    AuditEvent,
    EventList,
    Job,
    JobList,
    JobState,
    ListedVersion,
    ModelList,
    PinState,
    RetrainAccepted,
    SwapResult,
)

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT_S = 120.0  # a promotion loads and warms a model before it answers
CONNECT_TIMEOUT_S = 5.0
T = TypeVar("T", bound=BaseModel)


def client_version() -> str:
    """The installed poseloop package's version ("unknown" when run from a tree that was never installed)."""
    try:
        return metadata.version("poseloop")
    except metadata.PackageNotFoundError:
        return "unknown"


class ClientError(Exception):
    """Anything that kept a call from returning an answer."""


class Unreachable(ClientError):
    """No HTTP answer: connection refused, unknown host, TLS failure or timeout."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the PoseLoop API at {url}: {reason}")
        self.url, self.reason = url, reason


class BadAnswer(ClientError):
    """A 2xx answer that is not what the PoseLoop API sends (another server at that URL, a proxy page)."""


class ApiError(ClientError):
    """The API answered with an error: `status`, its `code` and `message` ({"error": {"code", "message"}})."""

    def __init__(self, status: int, code: str, message: str, body: Any = None) -> None:
        super().__init__(f"{message} (HTTP {status} {code})")
        self.status, self.code, self.message, self.body = status, code, message, body


class AuthenticationError(ApiError):
    """401: missing, malformed or unknown token."""


class PermissionDenied(ApiError):
    """403: the token lacks the role."""


class NotFound(ApiError):
    """404: no such version, job or route."""


class Conflict(ApiError):
    """409: refused in the current state (rejected or pruned version, nothing to roll back to, job finished...)."""


class InvalidRequest(ApiError):
    """400, 413, 422: the request itself is wrong (the message names the field)."""


class Unavailable(ApiError):
    """503: no active model, not ready, or overloaded."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequest,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    413: InvalidRequest,
    422: InvalidRequest,
    503: Unavailable,
}


def api_error(response: httpx.Response) -> ApiError:
    """The typed error of a non-2xx answer; a body without the API's error shape is kept as text."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        code, message = str(error.get("code", f"http_{response.status_code}")), error["message"]
    else:
        code = f"http_{response.status_code}"
        message = " ".join(response.text.split())[:200] or response.reason_phrase or "no details"
    return _BY_STATUS.get(response.status_code, ApiError)(response.status_code, code, message, body)


@dataclass(frozen=True)
class Readiness:
    """GET /readyz: whether an active version answers a tiny inference, and which."""

    ready: bool
    version: str | None
    detail: str


def normalise_url(url: str) -> str:
    """`host:port` → `http://host:port`; ValueError for what cannot be an API base URL."""
    text = url.strip().rstrip("/")
    if "://" not in text:
        text = "http://" + text
    try:
        parsed = httpx.URL(text)
    except httpx.InvalidURL as err:
        raise ValueError(f"invalid API URL {url!r}: {err}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"invalid API URL {url!r}: expected http(s)://host[:port]")
    return text


class PoseLoopClient:
    """One connection pool to one API. `token`: bearer token (None for the open routes only)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = normalise_url(url)
        self.has_token = bool(token)
        headers = {"User-Agent": f"poseloop-client/{client_version()}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S),
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PoseLoopClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ health
    def health(self) -> dict[str, Any]:
        """GET /healthz: the process answers."""
        return self._json("GET", "/healthz")

    def ready(self) -> Readiness:
        """GET /readyz (a 503 is an answer here, not an error)."""
        response = self._send("GET", "/readyz")
        if response.status_code not in (200, 503):
            raise api_error(response)
        body = self._decode(response)
        error = body.get("error") or {}
        return Readiness(response.status_code == 200, body.get("model_version"), error.get("message", "ok"))

    def metrics(self) -> str:
        """GET /metrics: the Prometheus text exposition."""
        return self._ok(self._send("GET", "/metrics")).text

    def openapi(self) -> dict[str, Any]:
        return self._json("GET", "/openapi.json")

    # ------------------------------------------------------------------ inference
    def pose(
        self,
        image: Path | bytes,
        boxes: Sequence[Sequence[float]] | None = None,
        image_id: int | None = None,
        coco: bool = False,
        options: Mapping[str, float | int | bool] | None = None,
    ) -> Any:
        """POST /v1/pose: keypoints of the people in `image` (a file or encoded bytes). Boxes are [x, y, w, h] in
        image pixels; without them the server finds the people (its detector, else the whole image). `coco`: the
        COCO results list instead of PoseLoop JSON. `options`: the route's options (max_persons, flip, ...)."""
        params: dict[str, Any] = {k: _query_value(v) for k, v in (options or {}).items()}
        if coco:
            params["format"] = "coco"
        response = self._send("POST", "/v1/pose", params=params, **_pose_form(image, boxes, image_id))
        return self._decode(self._ok(response))

    def render(self, image: Path | bytes, boxes: Sequence[Sequence[float]] | None = None) -> bytes:
        """POST /v1/pose/render: the skeleton overlay PNG."""
        return self._ok(self._send("POST", "/v1/pose/render", **_pose_form(image, boxes, None))).content

    # ------------------------------------------------------------------ models
    def models(self) -> ModelList:
        return self._typed(ModelList, "GET", "/v1/models")

    def model(self, version: str) -> ListedVersion:
        return self._typed(ListedVersion, "GET", f"/v1/models/{_segment(version)}")

    def active_model(self) -> ActiveModel:
        return self._typed(ActiveModel, "GET", "/v1/models/active")

    def promote(self, version: str, reason: str | None = None) -> SwapResult:
        """Hot swap to `version` (the old one serves until the new one is loaded and warm)."""
        return self._typed(SwapResult, "POST", "/v1/ops/promote", json=_body(version=version, reason=reason))

    def rollback(self, version: str | None = None, reason: str | None = None) -> SwapResult:
        """Back to the previous active version (or to `version`)."""
        return self._typed(SwapResult, "POST", "/v1/ops/rollback", json=_body(version=version, reason=reason))

    def pin(self, version: str | None = None, reason: str | None = None) -> PinState:
        """Freeze automatic promotion; with `version`, promote it first unless it is already active."""
        return self._typed(PinState, "POST", "/v1/ops/pin", json=_body(version=version, reason=reason))

    def unpin(self, reason: str | None = None) -> PinState:
        return self._typed(PinState, "POST", "/v1/ops/unpin", json=_body(reason=reason))

    def events(self, limit: int = 100) -> list[AuditEvent]:
        """The audit log's last `limit` events, oldest first."""
        return self._typed(EventList, "GET", "/v1/ops/events", params={"limit": limit}).events

    # ------------------------------------------------------------------ jobs
    def jobs(self, limit: int = 50, state: JobState | None = None) -> list[Job]:
        params: dict[str, Any] = {"limit": limit, **({"state": state} if state else {})}
        return self._typed(JobList, "GET", "/v1/ops/jobs", params=params).jobs

    def job(self, job_id: str, tail: int = 50) -> Job:
        """One job with the last `tail` lines of its log."""
        return self._typed(Job, "GET", f"/v1/ops/jobs/{_segment(job_id)}", params={"tail": tail})

    def cancel_job(self, job_id: str) -> Job:
        return self._typed(Job, "POST", f"/v1/ops/jobs/{_segment(job_id)}/cancel")

    def retrain(
        self,
        iterations: int | None = None,
        margin: float | None = None,
        nproc: int | None = None,
        overrides: Sequence[str] = (),
        reason: str | None = None,
        idempotency_key: str | None = None,
    ) -> RetrainAccepted:
        """Submit a retrain job (409 Conflict while another one with other parameters runs)."""
        body = _body(iterations=iterations, margin=margin, nproc=nproc, reason=reason)
        if overrides:
            body["overrides"] = list(overrides)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else None
        return self._typed(RetrainAccepted, "POST", "/v1/ops/retrain", json=body, headers=headers)

    # ------------------------------------------------------------------ unlabeled pool
    def upload_unlabeled(
        self,
        images: Sequence[Path],
        boxes: Mapping[str, Any] | None = None,
        source: str | None = None,
    ) -> dict[str, Any]:
        """POST /v1/unlabeled with one `files` part per image; `boxes` maps a file name to its boxes."""
        handles = [open(path, "rb") for path in images]  # noqa: SIM115 - closed below, after the request
        try:
            files = [("files", (Path(path).name, fh)) for path, fh in zip(images, handles)]
            data = _body(boxes=json.dumps(dict(boxes)) if boxes else None, source=source)
            return self._json("POST", "/v1/unlabeled", files=files, data=data)
        finally:
            for fh in handles:
                fh.close()

    def upload_archive(self, archive: Path, source: str | None = None) -> dict[str, Any]:
        """POST /v1/unlabeled with one tar/zip `archive` part (optional boxes.json inside)."""
        with open(archive, "rb") as fh:
            return self._json("POST", "/v1/unlabeled", files={"archive": (archive.name, fh)}, data=_body(source=source))

    def unlabeled_stats(self) -> dict[str, Any]:
        return self._json("GET", "/v1/unlabeled/stats")

    # ------------------------------------------------------------------ plumbing
    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as err:
            raise Unreachable(self.url, f"timed out ({type(err).__name__})") from None
        except httpx.TransportError as err:
            raise Unreachable(self.url, _transport_reason(err)) from None
        except httpx.RequestError as err:  # an answer that could not be read (decoding, redirect loop)
            raise BadAnswer(f"{method} {path}: {type(err).__name__}: {err}") from None

    def _ok(self, response: httpx.Response) -> httpx.Response:
        if response.is_success:
            return response
        raise api_error(response)

    def _decode(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise BadAnswer(
                f"{response.request.method} {response.request.url.path} answered {response.status_code} with "
                f"{response.headers.get('content-type', 'no content type')}, not JSON: is {self.url} a PoseLoop API?"
            ) from None

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._decode(self._ok(self._send(method, path, **kwargs)))

    def _typed(self, model: type[T], method: str, path: str, **kwargs: Any) -> T:
        doc = self._json(method, path, **kwargs)
        try:
            return model.model_validate(doc)
        except ValidationError as err:
            raise BadAnswer(f"unexpected answer from {method} {path}: {err.errors()[0].get('msg')}") from None


def _body(**fields: Any) -> dict[str, Any]:
    """A request body without the fields left unset (the API treats absent and null alike, but 422s extras)."""
    return {k: v for k, v in fields.items() if v is not None}


def _segment(value: str) -> str:
    """One URL path segment: `/`, `?` and the like are escaped, never interpreted."""
    return quote(str(value), safe="")


def _pose_form(image: Path | bytes, boxes: Sequence[Sequence[float]] | None, image_id: int | None) -> dict[str, Any]:
    if isinstance(image, Path):
        name, data = image.name, image.read_bytes()
    else:
        name, data = "image", image
    form = _body(boxes=json.dumps([list(b) for b in boxes]) if boxes else None, image_id=image_id)
    return {"files": {"image": (name, data)}, "data": {k: str(v) for k, v in form.items()}}


def _query_value(value: float | int | bool) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _transport_reason(err: httpx.TransportError) -> str:
    text = str(err) or type(err).__name__
    if isinstance(err, httpx.ConnectError) and "refused" in text.lower():
        return "connection refused (is the server running? `poseloop up` or `poseloop serve`)"
    return text
