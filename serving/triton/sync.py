"""`poseloop triton-sync`: keeps one Triton server's repository in step with the shared model registry.

With several Triton replicas (compose, Kubernetes), each server gets its own sync process (a sidecar next to it)
that owns its repository: every registered version that is on disk and not rejected is loaded (at most
`keep_versions`, newest first, always including the active and previous-active ones), the others are unloaded.
API replicas run TritonBackend with control=False: they never touch the repository, they only wait for a version
to be READY, so a promotion made anywhere (ops API, retrain gate) reaches every replica, and so does a rollback.
Candidates are loaded before they are promoted, so an API replica's hot swap never waits for a cold load.
A server that restarts with an empty repository is refilled on the next pass (the sync compares with what the
server reports, not with what it loaded before).
The person detector (`<model>_detector`, serving.triton.detector) is part of that repository: with a detector
configured, every pass asks the server whether it is READY and loads it if not, so API replicas (which only wait
for it) can detect; a detector that fails to load is reported under its model name and never blocks the versions.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from models.registry import ModelRegistry
from serving.backends import BackendLoadError
from serving.detection import DetectionError
from serving.triton.backend import TritonBackend
from serving.triton.detector import TritonDetectorRunner

log = logging.getLogger("poseloop.triton_sync")


@dataclass
class SyncReport:
    loaded: list[str] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # version (or the detector's model name) → error
    detector: str | None = None  # the detector model: "loaded" (by this pass), "ready", "failed"; None = none


def wanted_versions(registry: ModelRegistry, keep: int) -> dict[str, Path]:
    """version → ONNX path: servable versions, newest `keep`, plus the active and previous-active ones."""
    servable = sorted((v for v in registry.list() if v.on_disk and v.state != "rejected"), key=lambda v: int(v.version))
    pinned = {info.version for info in (registry.active(), registry.previous_active()) if info is not None}
    newest = len(servable) - keep
    return {v.version: v.onnx_path for i, v in enumerate(servable) if i >= newest or v.version in pinned}


class TritonSync:
    def __init__(self, registry: ModelRegistry, backend: TritonBackend, keep: int = 5) -> None:
        self.registry, self.backend, self.keep = registry, backend, keep

    def once(self) -> SyncReport:
        """One reconciliation pass; a version that fails to load is reported and retried on the next pass."""
        report = SyncReport()
        wanted = wanted_versions(self.registry, self.keep)
        loaded = set(self.backend.loaded_versions())
        for version in sorted(set(wanted) - loaded, key=int, reverse=True):  # newest (likely active) first
            try:
                self.backend.load(version, wanted[version])
                report.loaded.append(version)
            except BackendLoadError as err:
                report.failed[version] = str(err)
                log.error("version %s failed to load: %s", version, err)
        for version in sorted(loaded - set(wanted), key=int):
            self.backend.unload(version)
            report.unloaded.append(version)
        self._sync_detector(report)
        return report

    def _sync_detector(self, report: SyncReport) -> None:
        """Load the detector model unless the server says it is READY (asked on every pass, not cached)."""
        detector = self.backend.detector
        runner = detector.runner if detector is not None else None
        if not isinstance(runner, TritonDetectorRunner):
            return
        try:
            report.detector = "loaded" if runner.ensure_ready(fresh=True) else "ready"
        except DetectionError as err:
            report.detector = "failed"
            report.failed[runner.model_name] = str(err)
            log.error("person detector %s failed to load: %s", runner.model_name, err)

    def run(self, poll_s: float, stop: threading.Event) -> None:
        """Reconcile every `poll_s` until `stop` is set; an unreachable server is logged and retried."""
        while not stop.is_set():
            try:
                report = self.once()
                if report.loaded or report.unloaded or report.detector == "loaded":
                    log.info("loaded %s, unloaded %s, detector %s", report.loaded, report.unloaded, report.detector)
            except Exception as err:
                log.warning("sync pass failed (%s); retrying in %.1f s", err, poll_s)
            stop.wait(poll_s)
