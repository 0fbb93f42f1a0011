"""ONNX Runtime backend: CUDA execution provider when available, CPU otherwise; explicit thread counts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from models.metadata import ModelMetadata

INPUT_NAME = "input"
OUTPUT_NAME = "heatmaps"


def default_providers() -> list[str]:
    available = ort.get_available_providers()
    preferred = ["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []
    return [*preferred, "CPUExecutionProvider"]


class OnnxRuntimeBackend:
    """One InferenceSession over a PoseLoop .onnx file (see models.metadata for the contract).

    intra_op_threads: threads inside one operator (the knob that matters on CPU); inter_op_threads: threads
    across independent operators (1 = sequential execution, best for these chain-shaped networks).
    providers: ORT execution providers in priority order; None = CUDA if this onnxruntime has it, then CPU.
    """

    def __init__(
        self,
        model_path: str | Path,
        intra_op_threads: int = 2,
        inter_op_threads: int = 1,
        providers: Sequence[str] | None = None,
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.model_path = Path(model_path)
        self._session: ort.InferenceSession | None = ort.InferenceSession(
            str(model_path), sess_options=options, providers=list(providers or default_providers())
        )
        self._metadata = ModelMetadata.from_props(
            self._session.get_modelmeta().custom_metadata_map, source=str(model_path)
        )
        self._check_signature()

    @property
    def metadata(self) -> ModelMetadata:
        return self._metadata

    @property
    def providers(self) -> list[str]:
        """Execution providers the session actually uses."""
        return self._require_session().get_providers()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 normalised crops → (N, K, h, w) float32 heatmaps (a new array)."""
        batch = np.asarray(batch)
        size = self._metadata.input_size
        if batch.ndim != 4 or batch.shape[1:] != (3, size.h, size.w):
            raise ValueError(f"batch shape {batch.shape}, expected (N, 3, {size.h}, {size.w})")
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return self._require_session().run([OUTPUT_NAME], {INPUT_NAME: batch})[0]

    def close(self) -> None:
        self._session = None

    def __enter__(self) -> OnnxRuntimeBackend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _require_session(self) -> ort.InferenceSession:
        if self._session is None:
            raise RuntimeError(f"backend for {self.model_path} is closed")
        return self._session

    def _check_signature(self) -> None:
        """The graph's I/O names and static dims agree with the metadata contract."""
        meta = self._metadata
        session = self._require_session()
        inputs = {i.name: i.shape for i in session.get_inputs()}
        outputs = {o.name: o.shape for o in session.get_outputs()}
        expected_in = [3, meta.input_size.h, meta.input_size.w]
        expected_out = [meta.schema.num_keypoints, meta.heatmap_size.h, meta.heatmap_size.w]
        if INPUT_NAME not in inputs or list(inputs[INPUT_NAME][1:]) != expected_in:
            raise ValueError(f"{self.model_path}: inputs {inputs}, expected {INPUT_NAME!r} (N, {expected_in})")
        if OUTPUT_NAME not in outputs or list(outputs[OUTPUT_NAME][1:]) != expected_out:
            raise ValueError(f"{self.model_path}: outputs {outputs}, expected {OUTPUT_NAME!r} (N, {expected_out})")
