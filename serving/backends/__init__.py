"""Inference backends: one protocol, `infer(batch) -> heatmaps`; cropping and decoding live in the pipeline.

`InferenceBackend` is one model; `VersionedBackend` holds several registry versions at once so serving can
load a new one while the old one keeps answering, then switch (hot swap) and keep the previous one loaded
for an instant rollback. Implementations: serving.backends.embedded (in-process ONNX Runtime) and
serving.triton.backend (Triton Inference Server).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from models.metadata import ModelMetadata


@runtime_checkable
class InferenceBackend(Protocol):
    """Runs the pose network: (N, 3, H, W) float32 normalised crops → (N, K, H/stride, W/stride) heatmaps."""

    @property
    def metadata(self) -> ModelMetadata: ...

    def infer(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


class BackendLoadError(RuntimeError):
    """A model version could not be made ready (the message names the cause); loaded versions are unaffected."""


class BackendUnavailable(BackendLoadError):
    """The backend could not be reached, or a version did not become ready in time: a fault of the serving side,
    not of the version, which therefore stays a candidate and is tried again (with backoff)."""


@runtime_checkable
class VersionedBackend(Protocol):
    """Holds one or more model versions; serving switches between them without downtime."""

    def load(self, version: str, onnx_path: Path) -> ModelMetadata:
        """Make `version` ready; loaded versions keep serving; raise BackendLoadError naming the cause if broken."""
        ...

    def infer(self, version: str, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 → (N, K, h, w) computed by exactly that version."""
        ...

    def unload(self, version: str) -> None: ...

    def loaded_versions(self) -> list[str]: ...

    def close(self) -> None: ...


class VersionView:
    """One version of a VersionedBackend seen as an InferenceBackend (what PosePipeline takes)."""

    def __init__(self, backend: VersionedBackend, version: str, metadata: ModelMetadata) -> None:
        self.backend, self.version, self._metadata = backend, version, metadata

    @property
    def metadata(self) -> ModelMetadata:
        return self._metadata

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.backend.infer(self.version, batch)

    def close(self) -> None:
        """The view owns nothing; the versioned backend unloads versions."""
