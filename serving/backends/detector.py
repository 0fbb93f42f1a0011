"""The person detector in-process: one ONNX Runtime session over the detector ONNX (embedded backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from models.detection import NANODET_G_416, DetectorSpec
from serving.backends import BackendLoadError
from serving.detection import DetectionError, PersonDetector, check_outputs


class OnnxDetectorRunner:
    """DetectorRunner over an InferenceSession; the graph's I/O is checked against `spec` and warmed up once,
    so a wrong or broken file fails at start-up (BackendLoadError naming the cause), not on a request."""

    def __init__(
        self,
        model_path: str | Path,
        spec: DetectorSpec = NANODET_G_416,
        intra_op_threads: int = 2,
        inter_op_threads: int = 1,
        providers: Sequence[str] | None = None,
    ) -> None:
        from serving.backends.onnxruntime import default_providers

        self.model_path, self.spec = Path(model_path), spec
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session: ort.InferenceSession | None = ort.InferenceSession(
                str(model_path), sess_options=options, providers=list(providers or default_providers())
            )
        except Exception as err:
            raise BackendLoadError(f"person detector {model_path}: {type(err).__name__}: {err}") from err
        self._check_signature()
        try:
            check_outputs(self.run(np.zeros(spec.input_shape, np.float32)), spec, f"person detector {model_path}")
        except DetectionError as err:
            raise BackendLoadError(f"warm-up failed: {err}") from err

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self._session is None:
            raise DetectionError(f"person detector {self.model_path} is closed")
        names = list(self.spec.output_names)
        x = np.ascontiguousarray(batch, np.float32)
        return dict(zip(names, self._session.run(names, {self.spec.input_name: x})))

    def close(self) -> None:
        self._session = None

    def _check_signature(self) -> None:
        assert self._session is not None
        inputs = {i.name: tuple(i.shape) for i in self._session.get_inputs()}
        outputs = {o.name: tuple(o.shape) for o in self._session.get_outputs()}
        expected_out = self.spec.output_shapes()
        if inputs != {self.spec.input_name: self.spec.input_shape} or outputs != expected_out:
            raise BackendLoadError(
                f"person detector {self.model_path}: I/O {inputs} → {outputs}, expected "
                f"{ {self.spec.input_name: self.spec.input_shape} } → {expected_out}"
            )


def embedded_detector(
    model_path: str | Path,
    intra_op_threads: int = 2,
    iou_threshold: float = 0.6,
    providers: Sequence[str] | None = None,
) -> PersonDetector:
    """A PersonDetector running `model_path` (NanoDet-g 416 contract) in this process."""
    runner = OnnxDetectorRunner(model_path, NANODET_G_416, intra_op_threads=intra_op_threads, providers=providers)
    return PersonDetector(runner, NANODET_G_416, iou_threshold)
