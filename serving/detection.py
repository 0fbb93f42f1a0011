"""Person detection stage of the serving path: image → person boxes, before the pose crops.

`PersonDetector` = letterbox (models.detection) → a `DetectorRunner` (the network, wherever it runs) → GFL
decode + person NMS (models.detection). Runners: serving.backends.detector.OnnxDetectorRunner (in-process ONNX
Runtime, the embedded backend) and serving.triton.detector.TritonDetectorRunner (a second model in the Triton
repository). The detector is not versioned with the pose model: one detector serves every pose version.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from models.detection import NANODET_G_416, Detections, DetectorSpec, decode_detections, detector_input
from models.geometry import Size


class DetectionError(RuntimeError):
    """The detector could not run (not loaded, server refused, bad outputs); the message names the cause."""


@runtime_checkable
class DetectorRunner(Protocol):
    """Runs the detector network: (1, 3, S, S) float32 → {output name: array} (see models.detection)."""

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


def check_outputs(outputs: dict[str, np.ndarray], spec: DetectorSpec, where: str) -> None:
    """The runner's outputs have the spec's names and shapes and are finite; DetectionError otherwise."""
    for name, shape in spec.output_shapes().items():
        if name not in outputs:
            raise DetectionError(f"{where}: no output {name!r} (got {sorted(outputs)})")
        if tuple(outputs[name].shape) != shape:
            raise DetectionError(f"{where}: output {name!r} has shape {outputs[name].shape}, expected {shape}")
        if not np.all(np.isfinite(outputs[name])):
            raise DetectionError(f"{where}: output {name!r} is not finite")


class PersonDetector:
    """image (H×W×3 RGB uint8) → Detections (boxes [x, y, w, h] image pixels, best first). Thread-safe if the
    runner is (ONNX Runtime sessions and the per-thread Triton clients are).

    iou_threshold: NMS IoU above which the lower-scored of two person boxes is dropped (NanoDet's 0.6).
    """

    def __init__(self, runner: DetectorRunner, spec: DetectorSpec = NANODET_G_416, iou_threshold: float = 0.6) -> None:
        self.runner, self.spec, self.iou_threshold = runner, spec, iou_threshold

    def detect(self, image: np.ndarray, score_threshold: float, max_persons: int) -> Detections:
        h, w = image.shape[:2]
        x, box = detector_input(image, self.spec)
        try:
            outputs = {k: np.asarray(v) for k, v in self.runner.run(x).items()}
        except DetectionError:
            raise
        except Exception as err:
            raise DetectionError(f"person detector failed: {type(err).__name__}: {err}") from err
        check_outputs(outputs, self.spec, "person detector")
        return decode_detections(
            outputs,
            box,
            Size(w, h),
            score_threshold=score_threshold,
            iou_threshold=self.iou_threshold,
            max_detections=max_persons,
            spec=self.spec,
        )

    def close(self) -> None:
        self.runner.close()
