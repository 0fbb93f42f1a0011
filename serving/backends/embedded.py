"""In-process ONNX Runtime, several versions at once: a dict of OnnxRuntimeBackend sessions keyed by version.

`load` builds the new session and warms it with one dummy inference before the version becomes visible, so
the first real request never pays session initialisation; versions already loaded keep serving throughout.
Thread counts are explicit (serving settings `ort_threads`): every loaded session runs with them, so the
CPU budget of N loaded versions is only spent by the ones that receive traffic.
With `detector_path`, the person detector (serving.detection) is one more session, built and warmed up at
construction (a missing or wrong file fails start-up), shared by every version: `backend.detector`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.metadata import ModelMetadata
from serving.backends import BackendLoadError
from serving.backends.onnxruntime import OnnxRuntimeBackend
from serving.detection import PersonDetector


class EmbeddedBackend:
    """VersionedBackend over in-process ONNX Runtime sessions (thread-safe; `infer` runs outside the lock).

    detector_path: the person detector ONNX (None = no detector: requests without boxes use the whole image);
    detector_iou: its NMS IoU threshold.
    """

    def __init__(
        self,
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
        providers: Sequence[str] | None = None,
        detector_path: Path | None = None,
        detector_iou: float = 0.6,
    ) -> None:
        self.intra_op_threads = intra_op_threads
        self.inter_op_threads = inter_op_threads
        self.providers = list(providers) if providers else None
        self._sessions: dict[str, OnnxRuntimeBackend] = {}
        self._lock = threading.Lock()
        self.detector: PersonDetector | None = None
        if detector_path is not None:
            from serving.backends.detector import embedded_detector

            self.detector = embedded_detector(detector_path, intra_op_threads, detector_iou, self.providers)

    def load(self, version: str, onnx_path: Path) -> ModelMetadata:
        """Build and warm a session for `version` (no-op if loaded). Raises BackendLoadError naming the cause."""
        with self._lock:
            if version in self._sessions:
                return self._sessions[version].metadata
        try:
            session = OnnxRuntimeBackend(
                onnx_path,
                intra_op_threads=self.intra_op_threads,
                inter_op_threads=self.inter_op_threads,
                providers=self.providers,
            )
        except Exception as err:
            raise BackendLoadError(f"version {version}: cannot load {onnx_path}: {type(err).__name__}: {err}") from err
        try:
            warm_up(session.metadata, session.infer, version)
        except BackendLoadError:
            session.close()
            raise
        with self._lock:
            self._sessions.setdefault(version, session)
            return self._sessions[version].metadata

    def infer(self, version: str, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 → (N, K, h, w) heatmaps computed by `version`; KeyError if it is not loaded."""
        with self._lock:
            session = self._sessions.get(version)
        if session is None:
            raise KeyError(f"model version {version!r} is not loaded (loaded: {self.loaded_versions()})")
        return session.infer(batch)

    def unload(self, version: str) -> None:
        """Forget `version`. A call already running on it finishes (it holds its own session reference)."""
        with self._lock:
            self._sessions.pop(version, None)

    def loaded_versions(self) -> list[str]:
        with self._lock:
            return sorted(self._sessions, key=_version_key)

    def close(self) -> None:
        with self._lock:
            self._sessions.clear()
        if self.detector is not None:
            self.detector.close()


def warm_up(metadata: ModelMetadata, infer, version: str) -> None:
    """One batch-1 inference on zeros; the heatmaps must have the contract's shape and be finite."""
    size, heat = metadata.input_size, metadata.heatmap_size
    try:
        out = np.asarray(infer(np.zeros((1, 3, size.h, size.w), np.float32)))
    except Exception as err:
        raise BackendLoadError(f"version {version}: warm-up inference failed: {type(err).__name__}: {err}") from err
    expected = (1, metadata.schema.num_keypoints, heat.h, heat.w)
    if out.shape != expected:
        raise BackendLoadError(f"version {version}: warm-up output shape {out.shape}, expected {expected}")
    if not np.all(np.isfinite(out)):
        raise BackendLoadError(f"version {version}: warm-up inference produced non-finite heatmaps (NaN/inf)")


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)
