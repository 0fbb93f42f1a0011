"""Which model version serves: promotion is a hot swap, rollback is a promotion of the previous version.

promote(v): load v into the backend while the active version keeps serving → record it as active in the
registry → flip the in-memory active model (version, metadata, pipeline) under a lock, which takes
microseconds → unload versions older than the previous one (kept loaded for an instant rollback). A version
the backend cannot load is marked rejected in the registry with the cause, and nothing else changes.

Requests take a `lease()` on the active model: the version they see stays loaded until the lease ends, even
if two promotions happen meanwhile (its unload is deferred), so a batch always finishes on the version that
started it and reports that version.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from models.metadata import ModelMetadata
from models.registry import ModelRegistry, RegistryError
from serving.backends import BackendLoadError, BackendUnavailable, VersionedBackend, VersionView
from serving.pipeline import PosePipeline

log = logging.getLogger(__name__)
SYNC_RETRY_S = 60.0


class NoActiveModel(RuntimeError):
    """No version is loaded and active (empty registry, or the active version failed to load)."""


class PromotionError(RuntimeError):
    """A promotion or rollback was refused; `status` is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int = 409, code: str = "promotion_refused") -> None:
        super().__init__(message)
        self.status, self.code = status, code


@dataclass(frozen=True)
class ActiveModel:
    """Everything a request needs from one version: its label, its contract and its crop/decode pipeline."""

    version: str
    metadata: ModelMetadata
    pipeline: PosePipeline


@dataclass(frozen=True)
class SwapReport:
    """Timings of one promotion: load (incl. warm-up), the in-memory flip, and the whole call (ms)."""

    version: str
    previous: str | None
    load_ms: float
    flip_ms: float
    total_ms: float
    action: str


class ModelManager:
    """Owns the active version for one API process (see module docstring). Thread-safe."""

    def __init__(self, registry: ModelRegistry, backend: VersionedBackend) -> None:
        self.registry = registry
        self.backend = backend
        self._active: ActiveModel | None = None
        self._previous: str | None = None
        self._models: dict[str, ActiveModel] = {}  # loaded versions
        self._leases: Counter[str] = Counter()
        self._pending_unload: set[str] = set()
        self._state = threading.Lock()  # guards the fields above; held for microseconds
        self._promoting = threading.Lock()  # one promotion at a time
        self._version_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)  # load vs unload
        self._janitor = ThreadPoolExecutor(1, thread_name_prefix="poseloop-unload")  # unloads off request threads
        self.last_error: str | None = None
        self.last_swap: SwapReport | None = None
        self._sync_failure: tuple[str, float] | None = None  # (version, when): don't retry a broken load each poll

    def start(self) -> None:
        """Load the registry's active version, if any (failure → not ready, logged in `last_error`)."""
        self.sync()

    def sync(self, retry_after_s: float = SYNC_RETRY_S) -> bool:
        """Follow the registry: if another process promoted a version, load it and flip. True if it flipped.

        A version that failed to load is retried only after `retry_after_s` (the registry is polled often).
        """
        info = self.registry.active()
        if info is None or (self._active is not None and self._active.version == info.version):
            return False
        failure = self._sync_failure
        if failure and failure[0] == info.version and time.monotonic() - failure[1] < retry_after_s:
            return False
        with self._promoting:
            info = self.registry.active()
            if info is None or (self._active is not None and self._active.version == info.version):
                return False
            try:
                model = self._load(info.version, info.onnx_path)
            except BackendLoadError as err:
                self.last_error = str(err)
                self._sync_failure = (info.version, time.monotonic())
                log.error("active version %s failed to load (retried in %.0f s): %s", info.version, retry_after_s, err)
                return False
            self._flip(model)
            log.info("following the registry: now serving version %s", info.version)
            return True

    @property
    def active_version(self) -> str | None:
        active = self._active
        return active.version if active else None

    def active(self) -> ActiveModel:
        active = self._active
        if active is None:
            raise NoActiveModel(self.last_error or "no model version is active (register and promote one)")
        return active

    @contextlib.contextmanager
    def lease(self) -> Iterator[ActiveModel]:
        """The active model at this moment, kept loaded until the block ends."""
        with self._state:
            active = self._active
            if active is None:
                raise NoActiveModel(self.last_error or "no model version is active (register and promote one)")
            self._leases[active.version] += 1
        try:
            yield active
        finally:
            with self._state:
                self._leases[active.version] -= 1
                release = self._releasable()
            self._unload(release)

    def promote(self, version: str, actor: str, reason: str | None = None, action: str = "promote") -> SwapReport:
        """Hot-swap to `version` (see module docstring). Raises PromotionError; the old version keeps serving."""
        start = time.perf_counter()
        with self._promoting:
            try:
                info = self.registry.get(version)
            except RegistryError as err:
                raise PromotionError(str(err), status=404, code="unknown_version") from err
            if info.state == "rejected":
                raise PromotionError(f"version {version} was rejected: {info.reason}", code="version_rejected")
            if not info.on_disk:
                raise PromotionError(f"version {version} has no files on disk (pruned)", code="version_pruned")
            previous = self.active_version
            if previous == version and info.state == "active":
                return SwapReport(version, previous, 0.0, 0.0, (time.perf_counter() - start) * 1e3, action)
            try:
                model = self._load(version, info.onnx_path)
            except BackendUnavailable as err:  # the serving side's fault: the version stays a candidate
                log.warning("promote %s: backend unavailable, version kept as %s: %s", version, info.state, err)
                raise PromotionError(
                    f"version {version} not loaded, the backend is unavailable (try again): {err}",
                    status=503,
                    code="backend_unavailable",
                ) from err
            except BackendLoadError as err:
                self.registry.mark_rejected(version, str(err), actor)
                raise PromotionError(f"version {version} rejected: {err}", status=422, code="load_failed") from err
            loaded = time.perf_counter()
            try:
                self.registry.set_active(version, actor, reason, action=action)
            except RegistryError as err:
                with self._state:
                    if version not in (self.active_version, self._previous):
                        self._pending_unload.add(version)
                    release = self._releasable()
                self._unload(release)
                raise PromotionError(str(err), code="registry_refused") from err
            flip_start = time.perf_counter()
            self._flip(model)
            end = time.perf_counter()
        report = SwapReport(
            version, previous, (loaded - start) * 1e3, (end - flip_start) * 1e3, (end - start) * 1e3, action
        )
        self.last_swap = report
        log.info("%s %s → %s: load %.1f ms, flip %.3f ms", action, previous, version, report.load_ms, report.flip_ms)
        return report

    def rollback(self, actor: str, version: str | None = None, reason: str | None = None) -> SwapReport:
        """Promote `version`, by default the registry's previous active version."""
        if version is None:
            prev = self.registry.previous_active()
            if prev is None:
                raise PromotionError("no previous active version to roll back to", code="no_previous")
            version = prev.version
        return self.promote(version, actor, reason or "rollback", action="rollback")

    def loaded_versions(self) -> list[str]:
        with self._state:
            return sorted(self._models, key=lambda v: (len(v), v))  # integers as strings: numeric order

    def close(self) -> None:
        self._janitor.shutdown(wait=True)
        with self._state:
            self._active, self._models = None, {}
        self.backend.close()

    # ------------------------------------------------------------------ internals
    def _load(self, version: str, onnx_path) -> ActiveModel:
        with self._version_locks[version]:
            with self._state:
                model = self._models.get(version)
                self._pending_unload.discard(version)
            if model is not None and version in self.backend.loaded_versions():
                return model
            metadata = self.backend.load(version, onnx_path)
            try:
                # the backend's person detector, if it has one (serving.detection), serves every version
                detector = getattr(self.backend, "detector", None)
                pipeline = PosePipeline(VersionView(self.backend, version, metadata), detector=detector)
            except Exception as err:
                self.backend.unload(version)
                raise BackendLoadError(f"version {version}: {type(err).__name__}: {err}") from err
            model = ActiveModel(version, metadata, pipeline)
            with self._state:
                self._models[version] = model
            return model

    def _flip(self, model: ActiveModel) -> None:
        with self._state:
            old = self._active
            self._active = model
            if old is not None and old.version != model.version:
                self._previous = old.version
            keep = {model.version, self._previous}
            self._pending_unload |= {v for v in self._models if v not in keep}
            release = self._releasable()
        self.last_error = None
        self._unload(release)

    def _releasable(self) -> list[str]:
        """Pending unloads no request holds any more (call with `_state` held); removes them from `_models`."""
        ready = [v for v in self._pending_unload if self._leases[v] <= 0]
        for v in ready:
            self._pending_unload.discard(v)
            self._models.pop(v, None)
            self._leases.pop(v, None)
        return ready

    def _unload(self, versions: list[str]) -> None:
        """Unload on the janitor thread, unless the version was wanted again (re-promoted) meanwhile."""
        for v in versions:
            try:
                self._janitor.submit(self._unload_one, v)
            except RuntimeError:  # closing: the backend is closed as a whole
                return

    def _unload_one(self, version: str) -> None:
        with self._version_locks[version]:
            with self._state:
                if version in self._models:
                    return
            try:
                self.backend.unload(version)
            except Exception as err:
                log.warning("unloading version %s failed: %s", version, err)
