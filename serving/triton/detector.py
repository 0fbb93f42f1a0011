"""The person detector as a second model in the Triton repository (beside the versioned pose model).

`TritonDetectorRunner` is the DetectorRunner (serving.detection) of a TritonBackend: its first `run` makes the
detector model READY — with repository control it writes `<repo>/<name>/1/` + config.pbtxt (or, without a local
repository, asks the server to load what it has) and loads it; without control (API replicas behind
`poseloop triton-sync`) it only waits for it — then every run is one HTTP inference with binary tensors.
A failure is a DetectionError naming the cause (the request fails, the pose versions are untouched), and the
next request tries again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from models.detection import NANODET_G_416, DetectorSpec
from serving.detection import DetectionError
from serving.triton.control import Control
from serving.triton.repository import (
    DETECTOR_VERSION,
    ModelIO,
    RepositoryError,
    Runtime,
    config_json,
    detector_config_dict,
    write_detector,
)


class TritonDetectorRunner:
    """DetectorRunner over tritonserver (thread-safe: the client factory gives each thread its own client)."""

    def __init__(
        self,
        client: Callable[[], httpclient.InferenceServerClient],
        control: Control,
        model_name: str,
        onnx_path: Path,
        *,
        repo: Path | None,
        manage: bool,
        runtime: Runtime = "python",
        kind: str = "KIND_CPU",
        intra_op_threads: int = 1,
        sys_path: list[str] | None = None,
        ready_timeout_s: float = 120.0,
        spec: DetectorSpec = NANODET_G_416,
    ) -> None:
        self._client, self._control = client, control
        self.model_name, self.onnx_path, self.repo, self.manage = model_name, Path(onnx_path), repo, manage
        self.spec, self.ready_timeout_s = spec, ready_timeout_s
        self._config_kwargs = dict(runtime=runtime, kind=kind, intra_op_threads=intra_op_threads, sys_path=sys_path)
        self._ready = False
        self._lock = threading.Lock()

    def ensure_ready(self, fresh: bool = False) -> bool:
        """Load (or wait for) the detector model once; DetectionError naming the cause (also for a detector file
        that cannot be read: it fails detection, never a pose version's load). fresh: ask the server even when it
        was READY before (a server restarted empty has forgotten it), as `poseloop triton-sync` does on every pass.
        True when this call loaded it."""
        if self._ready and not fresh:
            return False
        with self._lock:
            if self._ready and not fresh:
                return False
            self._ready, loaded = False, False
            try:
                if self.manage and not self._control.ready(self.model_name, DETECTOR_VERSION):
                    self._load()
                    loaded = True
                self._wait_ready()
            except InferenceServerException as err:
                raise DetectionError(f"Triton detector model {self.model_name}: {err.message()}") from err
            except (RepositoryError, OSError) as err:
                raise DetectionError(f"Triton detector model {self.model_name}: {err}") from err
            self._ready = True
            return loaded

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.ensure_ready()
        x = np.ascontiguousarray(batch, np.float32)
        tensor = httpclient.InferInput(self.spec.input_name, list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        outputs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in self.spec.output_names]
        try:
            result = self._client().infer(self.model_name, [tensor], model_version=DETECTOR_VERSION, outputs=outputs)
        except InferenceServerException as err:
            self._ready = False  # e.g. the server restarted empty: load again on the next request
            raise DetectionError(f"Triton detector model {self.model_name}: {err.message()}") from err
        return {name: result.as_numpy(name) for name in self.spec.output_names}

    def close(self) -> None:
        """The clients belong to the TritonBackend, which closes them."""

    def _load(self) -> None:
        config = None
        if self.repo is not None:
            io = ModelIO.for_detector(self.spec)  # the ONNX itself is checked by onnxruntime when it loads
            config_dict = detector_config_dict(self.model_name, io, **self._config_kwargs)  # type: ignore[arg-type]
            write_detector(self.repo, self.model_name, self.onnx_path, config_dict)
            config = config_json(config_dict)
        self._control.load(self.model_name, config)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while not self._control.ready(self.model_name, DETECTOR_VERSION):
            if time.monotonic() > deadline:
                raise DetectionError(
                    f"Triton detector model {self.model_name} not ready after {self.ready_timeout_s} s"
                )
            time.sleep(0.05)
