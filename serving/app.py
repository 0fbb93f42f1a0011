"""The PoseLoop HTTP API: `create_app(settings, manager=None)` builds the FastAPI app.

Request path of POST /v1/pose: read the body (size-limited) → decode and validate in a worker thread
(core.inputs) → crops into the micro-batcher (serving.batching) → the version that ran the batch is
returned in the body and in `X-Model-Version`. Promotions and rollbacks go through serving.manager (hot swap).
Every error is `{"error": {"code", "message"}}`; bad input is always a 4xx.
This module, like all of serving/, never imports torch.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import cv2
import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from continual.queue import JobQueue
from continual.settings import Settings
from continual.uploads import UploadStore
from core.inputs import InputError, PixelBudget, PoseInput, check_image
from core.logs import log_context
from models.registry import ModelRegistry, RegistryError, VersionNotFound
from serving.api_docs import install_offline_docs
from serving.auth import AuthError, TokenAuth
from serving.backends import VersionedBackend
from serving.batching import BatchError, MicroBatcher, Overloaded, PoseResult
from serving.manager import ModelManager, NoActiveModel, PromotionError
from serving.metrics import Metrics, MetricsMiddleware
from serving.pipeline import full_resolution
from serving.previews import VersionPreviews
from serving.render import render_poses
from serving.request_ids import RequestIdMiddleware, request_id_of
from serving.routes import health, labeled, models, ops, pose, unlabeled
from serving.ui import install_ui

if TYPE_CHECKING:
    from serving.pipeline import PoseOptions
    from serving.triton.backend import TritonBackend

log = logging.getLogger("poseloop.serving")
READY_CACHE_S = 1.0


@dataclass(frozen=True)
class PoseOutcome:
    """One request's result; poses in full-resolution pixels of the displayed image, whatever `reduction` the
    image was decoded at (1 = full; large JPEGs: 2, 4 or 8, see core.inputs.reduction_for)."""

    result: PoseResult
    image: np.ndarray  # the decoded RGB image (1/reduction of width × height)
    timing_ms: dict[str, float]
    width: int
    height: int
    reduction: int = 1


class Service:
    """What the routes delegate to: settings, auth, metrics, the model manager, the micro-batcher and the
    unlabeled upload store."""

    def __init__(self, settings: Settings, manager: ModelManager, auth: TokenAuth, metrics: Metrics) -> None:
        self.settings, self.manager, self.auth, self.metrics = settings, manager, auth, metrics
        self.batcher = MicroBatcher(
            manager,
            settings.inference.max_batch,
            settings.inference.max_wait_ms,
            settings.inference.max_queue,
            on_batch=metrics.observe_batch,
            on_error=metrics.observe_backend_error,
        )
        self.pixel_budget = PixelBudget(settings.limits.pixel_budget)
        self.uploads = UploadStore(
            settings.loop.data_dir / "uploads", settings.limits.max_pixels, settings.limits.max_boxes
        )
        self.queue = JobQueue(settings)
        self.previews = VersionPreviews(manager.registry, getattr(manager.backend, "detector", None))
        metrics.watch_loop(self.loop_summary)
        self._ready_at = 0.0
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def start(self) -> None:
        self.batcher.start()
        self.metrics.set_active(self.manager.active_version)
        if self.settings.registry.poll_s > 0:
            self._poller = threading.Thread(target=self._poll, name="poseloop-registry-poll", daemon=True)
            self._poller.start()

    def loop_summary(self) -> dict:
        """The loop's state for /metrics (serving.metrics.LoopCollector), from the stores this process holds."""
        return {
            "jobs": self.queue.jobs.summary(),
            "pool": {"images": self.uploads.count_since(0), "bytes": self.uploads.stored_bytes()},
            "outbox": len(self.queue.outbox) if self.queue.outbox is not None else 0,
        }

    def close(self) -> None:
        self._stop.set()
        if self._poller:
            self._poller.join(5)
        self.batcher.close()

    async def predict(
        self, pose_input: PoseInput, options: PoseOptions | None = None, *, reduce: bool = True
    ) -> PoseOutcome:
        """Decode, validate, batch and infer one request (image memory is held against the pixel budget).

        reduce: decode a large JPEG only at the resolution the detector and the crops need
        (`inference.decode_min_side`); False = always the full image (renders)."""
        start = time.perf_counter()
        settings = self.settings
        min_side = settings.inference.decode_min_side if reduce else 0

        def prepare():  # in a worker thread: header checks, decoding and cropping are CPU work
            with self.batcher.expecting():
                header = check_image(pose_input.data, settings.limits.max_pixels)
                pixels = header.width * header.height
                try:
                    self.pixel_budget.acquire(pixels, settings.api.request_timeout_s)
                except TimeoutError as err:
                    raise Overloaded(f"too many large images in flight: {err}") from None
                try:
                    # the active version's crop bounds the reduction; a swap before the batch runs changes only
                    # how much decode detail the next version gets, never the mapping back (decoded.scale)
                    decoded = self.manager.active().pipeline.decode_request(
                        pose_input, settings.limits.max_pixels, settings.limits.max_boxes, header, min_side
                    )
                    decoded_at = time.perf_counter()
                    future = self.batcher.submit(decoded.image, decoded.boxes, options)
                except BaseException:
                    self.pixel_budget.release(pixels)
                    raise
                # released when the batch is done with the image, whatever happens to this request
                future.add_done_callback(lambda _f: self.pixel_budget.release(pixels))
                return decoded, future, decoded_at

        decoded, future, decoded_at = await run_in_threadpool(prepare)
        try:
            result: PoseResult = await asyncio.wait_for(asyncio.wrap_future(future), settings.api.request_timeout_s)
        except TimeoutError:
            raise Overloaded(f"no result within {settings.api.request_timeout_s} s; retry later") from None
        self.metrics.observe_confidence(result.version, [p.keypoint_scores for p in result.poses])
        total = (time.perf_counter() - start) * 1e3
        timing = {
            "total": total,
            "decode": (decoded_at - start) * 1e3,
            "queue": result.queue_ms,
            "inference": result.infer_ms,
            "batch_crops": result.batch_crops,
        }
        result = replace(result, poses=full_resolution(result.poses, decoded))
        timing = {k: round(v, 3) for k, v in timing.items()}
        width, height = decoded.size
        return PoseOutcome(result, decoded.image, timing, width, height, decoded.reduction)

    async def render(
        self, pose_input: PoseInput, options: PoseOptions | None = None, kpt_threshold: float = 0.0
    ) -> tuple[bytes, str]:
        """PNG overlay of the request's poses; only `valid` keypoints (score ≥ kpt_threshold, in the image)."""
        outcome = await self.predict(pose_input, options, reduce=False)

        def draw() -> bytes:
            skeleton = outcome.result.metadata.schema.skeleton
            overlay = render_poses(outcome.image, outcome.result.poses, skeleton, kpt_threshold)
            ok, png = cv2.imencode(".png", cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
            if not ok:
                raise BatchError("PNG encoding failed")
            return png.tobytes()

        return await run_in_threadpool(draw), outcome.result.version

    def promote(self, version: str | None, actor: str, reason: str | None, rollback: bool) -> dict:
        """Promote (or roll back); blocking (call from a worker thread)."""
        action = "rollback" if rollback else "promote"
        try:
            if rollback:
                report = self.manager.rollback(actor, version, reason)
            else:
                if version is None:
                    raise PromotionError("promote needs a version (only a rollback defaults to the previous one)")
                report = self.manager.promote(version, actor, reason)
        except PromotionError as err:
            self.metrics.promotions.labels(action, err.code).inc()
            raise
        self.metrics.promotions.labels(action, "ok").inc()
        self.metrics.hot_swap.observe(report.total_ms / 1e3)
        self.metrics.set_active(report.version)
        return {
            "active": report.version,
            "previous": report.previous,
            "action": action,
            "timing_ms": {
                "load": round(report.load_ms, 3),
                "flip": round(report.flip_ms, 4),
                "total": round(report.total_ms, 3),
            },
        }

    async def ready(self) -> tuple[bool, str | None, str]:
        """(ready, version, detail): a 16×16 image through the whole batching path within 5 s."""
        version = self.manager.active_version
        if version is None:
            return False, None, str(self.manager.last_error or "no active model version")
        if not self.batcher.alive:
            return False, version, "the batching worker is not running"
        if time.monotonic() - self._ready_at < READY_CACHE_S:
            return True, version, "ok"
        try:
            future = self.batcher.submit(np.zeros((16, 16, 3), np.uint8), None)
            result = await asyncio.wait_for(asyncio.wrap_future(future), 5.0)
        except Exception as err:
            return False, version, f"probe inference failed: {type(err).__name__}: {err}"
        self._ready_at = time.monotonic()
        return True, result.version, "ok"

    def json_response(self, content, headers: dict[str, str] | None = None) -> JSONResponse:
        return SafeJSONResponse(content, headers=headers)

    def _poll(self) -> None:
        while not self._stop.wait(self.settings.registry.poll_s):
            try:
                if self.manager.sync():
                    self.metrics.set_active(self.manager.active_version)
            except Exception:
                log.exception("registry poll failed")


class SafeJSONResponse(JSONResponse):
    """JSONResponse that writes non-finite floats as null instead of failing (a model may emit NaN)."""

    def render(self, content) -> bytes:
        try:
            return super().render(content)
        except ValueError:
            return super().render(_finite(content))


def triton_backend(settings: Settings) -> TritonBackend:
    """The TritonBackend the POSELOOP_TRITON_* settings describe (API replicas and `poseloop triton-sync`)."""
    from serving.triton.backend import TritonBackend  # imported only when asked for

    return TritonBackend(
        settings.triton.url,
        settings.triton.repository,
        settings.triton.model,
        settings.triton.repository_secret,
        keep_versions=settings.registry.keep_versions,
        max_batch_size=settings.inference.max_batch,
        intra_op_threads=settings.inference.ort_threads,
        grpc_url=settings.triton.grpc_url,
        runtime=settings.triton.runtime,
        kind=settings.triton.kind,
        control=settings.triton.control,
        detector_path=settings.inference.detector_path,
        detector_iou=settings.inference.detector_iou,
    )


def build_backend(settings: Settings) -> VersionedBackend:
    if settings.inference.backend == "triton":
        return triton_backend(settings)
    from serving.backends.embedded import EmbeddedBackend

    return EmbeddedBackend(
        intra_op_threads=settings.inference.ort_threads,
        inter_op_threads=settings.inference.ort_inter_threads,
        detector_path=settings.inference.detector_path,
        detector_iou=settings.inference.detector_iou,
    )


def build_manager(settings: Settings) -> ModelManager:
    registry = ModelRegistry(settings.registry.dir, keep_last=settings.registry.keep_versions)
    return ModelManager(registry, build_backend(settings))


def bootstrap(manager: ModelManager, settings: Settings) -> None:
    """With no active version, register `settings.registry.bootstrap_model` (unless already registered) and promote it.

    A training checkpoint next to it (best.pt, checkpoint.pt or <stem>.pt) is registered too: retrain jobs start
    from the active version's checkpoint.
    """
    if settings.registry.bootstrap_model is None or manager.registry.active() is not None:
        return
    import hashlib

    model = settings.registry.bootstrap_model
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    known = [
        v
        for v in manager.registry.list()
        if v.meta.get("files", {}).get("model.onnx", {}).get("sha256") == digest and v.state != "rejected"
    ]
    checkpoint = next(
        (
            p
            for p in (model.with_name("best.pt"), model.with_name("checkpoint.pt"), model.with_suffix(".pt"))
            if p.exists()
        ),
        None,
    )
    info = known[-1] if known else manager.registry.register(model, checkpoint_path=checkpoint, actor="bootstrap")
    manager.promote(info.version, "bootstrap", "bootstrap model at start")


def create_app(settings: Settings, manager: ModelManager | None = None) -> FastAPI:
    """The API. `manager` injects a ModelManager (tests); by default one is built from `settings` and owned."""
    auth, dev_tokens = TokenAuth.from_settings(settings)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        mgr = manager or build_manager(settings)
        mgr.start()
        bootstrap(mgr, settings)
        service = Service(settings, mgr, auth, metrics)
        service.start()
        app.state.service = service
        try:
            yield
        finally:
            service.close()
            if manager is None:
                mgr.close()

    app = FastAPI(
        title="PoseLoop",
        version="1",
        lifespan=lifespan,
        description="2D human pose estimation: keypoints JSON, COCO results, overlays; versioned models.",
        docs_url=None,  # served from local assets by install_offline_docs (the defaults load a CDN)
        redoc_url=None,
    )
    install_offline_docs(app)
    install_ui(app)  # the ops console at /ui (static files, a client of the routes below)
    app.state.dev_tokens = dev_tokens
    for router in (pose.router, models.router, ops.router, health.router, unlabeled.router, labeled.router):
        app.include_router(router)
    _install_error_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestIdMiddleware)  # outermost: every log line of the request carries its id
    return app


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    simple = {
        InputError: lambda e: (e.status, e.code, e.message, None),
        AuthError: lambda e: (e.status, e.code, e.message, {"WWW-Authenticate": "Bearer"} if e.status == 401 else None),
        PromotionError: lambda e: (e.status, e.code, str(e), {"Retry-After": "10"} if e.status == 503 else None),
        VersionNotFound: lambda e: (404, "unknown_version", str(e), None),
        RegistryError: lambda e: (409, "registry_refused", str(e), None),
        NoActiveModel: lambda e: (503, "no_active_model", str(e), {"Retry-After": "5"}),
        Overloaded: lambda e: (503, "overloaded", str(e), {"Retry-After": "1"}),
        BatchError: lambda e: (500, "inference_failed", str(e), None),
    }
    for exc_type, convert in simple.items():

        async def handler(_request: Request, exc: Exception, convert=convert) -> JSONResponse:
            status, code, message, headers = convert(exc)
            return error_response(status, code, message, headers)

        app.add_exception_handler(exc_type, handler)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()[:5]]
        return error_response(422, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "request_too_large"}
        return error_response(
            exc.status_code,
            codes.get(exc.status_code, f"http_{exc.status_code}"),
            str(exc.detail),
            getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The client gets the request id, never the exception: details (paths, internals) stay in the log.
        # This handler runs outside the middleware stack, so it binds and echoes the id itself.
        request_id = request_id_of(request.scope) or "-"
        with log_context(request_id=request_id):
            log.error("unhandled error", exc_info=exc)
        message = f"internal error (request id {request_id}); the details are in the server log"
        return error_response(500, "internal_error", message, {"X-Request-ID": request_id})


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
