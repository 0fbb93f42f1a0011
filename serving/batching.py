"""Cross-request micro-batching of person crops: one backend call serves several requests.

Requests are queued whole. A worker thread takes the first waiting request, waits up to `max_wait_ms` for
more — but only while other requests are on their way (announced with `expecting()` before their image is
decoded), so a lone request never waits — while the batch has room for the next *whole* request (at most
`max_batch` crops; a single request with more crops forms its own batch, run in `max_batch` chunks), then takes
ONE lease on the active model version, runs the crops through it and decodes each request with that same version.
Every request learns the version that computed it, so the label in the response is truthful even while a
promotion flips the active version between batches. A request's crops are never split across versions.

Crops are prepared in the caller's thread with the version active at submit time; if a promotion changed the
preprocessing (input size, mean/std, padding) before the batch runs, the worker re-crops that request.
A failing batch fails only its own requests (BatchError with the cause); the worker keeps running.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from models.metadata import ModelMetadata
from serving.detection import DetectionError
from serving.manager import ActiveModel, ModelManager, NoActiveModel
from serving.pipeline import BoxSource, PersonPose, PoseOptions, PreparedCrops

log = logging.getLogger(__name__)


class BatchError(RuntimeError):
    """The backend call for a batch failed; the message names the version and the cause."""


class Overloaded(RuntimeError):
    """The queue is full (`max_queue` requests waiting)."""


@dataclass(frozen=True)
class PoseResult:
    """What one request gets back: the poses, the version that computed them, and where the time went (ms)."""

    version: str
    metadata: ModelMetadata
    poses: list[PersonPose]
    queue_ms: float  # from submit until its batch started
    infer_ms: float  # the backend call(s) of its batch
    batch_crops: int  # crops in its batch (all requests)
    source: BoxSource = "request"  # where the persons' boxes came from
    detect_ms: float = 0.0  # the person detector on this image (in the caller's thread, before queueing)


@dataclass
class _Job:
    image: np.ndarray
    boxes: np.ndarray | None
    options: PoseOptions | None
    model: ActiveModel
    prepared: PreparedCrops
    future: Future = field(default_factory=Future)
    submitted: float = field(default_factory=time.perf_counter)

    @property
    def crops(self) -> int:
        return len(self.prepared.crops)


BatchObserver = Callable[[str, int, int, float], None]  # (version, requests, crops, seconds)
ErrorObserver = Callable[[str, BaseException], None]  # (version, error)


class MicroBatcher:
    """Thread-safe: `submit` from any thread; one worker thread runs the batches (`start` / `close`)."""

    def __init__(
        self,
        manager: ModelManager,
        max_batch: int = 16,
        max_wait_ms: float = 5.0,
        max_queue: int = 512,
        on_batch: BatchObserver | None = None,
        on_error: ErrorObserver | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.manager = manager
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_ms / 1e3, max_queue
        self.on_batch, self.on_error = on_batch, on_error
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._incoming = 0  # requests announced by expecting() and not yet submitted
        self._thread = threading.Thread(target=self._run, name="poseloop-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker; requests still queued fail with BatchError."""
        with self._cond:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for job in pending:
            _fail(job, BatchError("the server is shutting down"))
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closed

    @contextlib.contextmanager
    def expecting(self) -> Iterator[None]:
        """Announce a request that will `submit` soon (wrap its decoding and submit): batches wait for it."""
        with self._cond:
            self._incoming += 1
        try:
            yield
        finally:
            with self._cond:
                self._incoming -= 1
                self._cond.notify_all()

    def submit(self, image: np.ndarray, boxes: np.ndarray | None = None, options: PoseOptions | None = None) -> Future:
        """Queue one image (H×W×3 RGB uint8) with its boxes → Future[PoseResult]. Without boxes: the detected
        persons if `options.detect`, else the whole image (serving.pipeline.PosePipeline.prepare).

        Raises NoActiveModel, Overloaded or BatchError (the detector failed) right away; detection and the crops
        run here, in the caller's thread, so images are detected in parallel and only pose crops are batched.
        """
        model = self.manager.active()
        try:
            prepared = model.pipeline.prepare(image, boxes, options)
        except DetectionError as err:
            raise BatchError(str(err)) from err
        job = _Job(image, boxes, options, model, prepared)
        if job.crops == 0:
            job.future.set_result(
                PoseResult(model.version, model.metadata, [], 0.0, 0.0, 0, prepared.source, prepared.detect_ms)
            )
            return job.future
        with self._cond:
            if self._closed:
                raise BatchError("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                raise Overloaded(f"{len(self._queue)} requests are queued (limit {self.max_queue}); retry later")
            self._queue.append(job)
            self._cond.notify()
        return job.future

    # ------------------------------------------------------------------ worker
    def _run(self) -> None:
        while True:
            jobs = self._next_batch()
            if jobs is None:
                return
            try:
                self._run_batch(jobs)
            except Exception as err:
                log.exception("batch of %d requests failed", len(jobs))
                if not isinstance(err, (BatchError, NoActiveModel)):
                    err = BatchError(f"{type(err).__name__}: {err}")
                for job in jobs:
                    _fail(job, err)

    def _next_batch(self) -> list[_Job] | None:
        """Whole requests totalling ≤ max_batch crops (or one bigger request); None once closed."""
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            jobs = [self._queue.popleft()]
            crops = jobs[0].crops
            deadline = time.perf_counter() + self.max_wait_s
            while crops < self.max_batch and not self._closed:
                if self._queue:
                    if crops + self._queue[0].crops > self.max_batch:
                        break
                    job = self._queue.popleft()
                    jobs.append(job)
                    crops += job.crops
                    continue
                remaining = deadline - time.perf_counter()
                if remaining <= 0 or self._incoming == 0:  # nobody else on the way: run now
                    break
                self._cond.wait(remaining)
        return [job for job in jobs if job.future.set_running_or_notify_cancel()]  # drop timed-out requests

    def _run_batch(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        started = time.perf_counter()
        with self.manager.lease() as model:
            for job in jobs:
                if _preprocess_key(job.model.metadata) != _preprocess_key(model.metadata):
                    job.prepared = model.pipeline.recrop(job.image, job.prepared)  # same persons, new crops
            crops = np.concatenate([job.prepared.crops for job in jobs])
            try:
                heatmaps = np.concatenate(
                    [
                        np.asarray(model.pipeline.backend.infer(crops[i : i + self.max_batch]), np.float32)
                        for i in range(0, len(crops), self.max_batch)
                    ]
                )
            except Exception as err:
                if self.on_error:
                    self.on_error(model.version, err)
                raise BatchError(
                    f"inference on model version {model.version} failed: {type(err).__name__}: {err}"
                ) from err
            infer_s = time.perf_counter() - started
            if self.on_batch:
                self.on_batch(model.version, len(jobs), len(crops), infer_s)
            offset = 0
            for job in jobs:
                n = job.crops
                try:
                    poses = model.pipeline.decode(heatmaps[offset : offset + n], job.prepared)
                except Exception as err:
                    _fail(job, BatchError(f"decoding with model version {model.version} failed: {err}"))
                else:
                    job.future.set_result(
                        PoseResult(
                            model.version,
                            model.metadata,
                            poses,
                            (started - job.submitted) * 1e3,
                            infer_s * 1e3,
                            len(crops),
                            job.prepared.source,
                            job.prepared.detect_ms,
                        )
                    )
                offset += n


def _preprocess_key(meta: ModelMetadata) -> tuple:
    return meta.input_size, meta.mean, meta.std, meta.padding


def _fail(job: _Job, err: BaseException) -> None:
    if not job.future.done():
        with contextlib.suppress(Exception):
            job.future.set_exception(err)
