"""Inference backends: one protocol, `infer(batch) -> heatmaps`; cropping and decoding live in the pipeline."""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from serving.metadata import ModelMetadata


@runtime_checkable
class InferenceBackend(Protocol):
    """Runs the pose network: (N, 3, H, W) float32 normalised crops → (N, K, H/stride, W/stride) heatmaps."""

    @property
    def metadata(self) -> ModelMetadata: ...

    def infer(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...
