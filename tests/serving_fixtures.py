"""Helpers for the serving tests: small real ONNX models, live uvicorn servers (thread or subprocess), HTTP utils.

Two kinds of model:
  * `tiny_pose_onnx`: a one-Conv graph (3→14 channels, 4×4 stride 4) carrying the full PoseLoop metadata
    contract, built with onnx.helper in milliseconds; different seeds give different keypoints. Used where
    the network does not matter (registry, API shape, malformed input). `broken="nan"` makes a model whose
    heatmaps are NaN (a diverged training run), which the backend's warm-up must reject.
  * `export_posenet`: a real MobileNetV2 PoseNet (light head, random init rescaled to O(1) outputs, so
    different seeds decode to different keypoints) through models.export.export_onnx (parity-checked).
    Used by the hot-swap test. Exports are cached per seed for the whole session.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from continual.settings import Settings
from models.codec import HeatmapCodec
from models.geometry import Size
from models.schemas import LSP14
from poseloop.serve import serve_in_subprocess

REPO = Path(__file__).resolve().parent.parent
INPUT = Size(48, 64)  # (w, h): non-square, small = fast on a shared 2-core CPU
_EXPORT_CACHE: dict[int, Path] = {}


def contract_metadata(version: str, input_size: Size = INPUT, decode: str = "quarter") -> dict[str, str]:
    codec = HeatmapCodec.for_input(input_size, 4, 2.0, decode)
    return {
        **LSP14.to_metadata(),
        **codec.to_metadata(),
        "poseloop.mean": "[123.675, 116.28, 103.53]",
        "poseloop.std": "[58.395, 57.12, 57.375]",
        "poseloop.padding": "1.25",
        "poseloop.decode": decode,
        "poseloop.version": version,
        "poseloop.trained_on": "synthetic",
        "poseloop.backbone": "tiny-conv",
        "poseloop.head": "none",
        "poseloop.input_name": "input",
        "poseloop.output_name": "heatmaps",
    }


def tiny_pose_onnx(path: Path, seed: int = 0, input_size: Size = INPUT, broken: str | None = None) -> Path:
    """A valid PoseLoop ONNX (one Conv); broken="nan" → NaN heatmaps, "shape" → graph disagrees with metadata."""
    rng = np.random.default_rng(seed)
    k = LSP14.num_keypoints
    weight = rng.normal(0, 0.2, (k, 3, 4, 4)).astype(np.float32)
    bias = rng.normal(0, 0.1, k).astype(np.float32)
    if broken == "nan":
        bias[:] = np.nan
    h, w = input_size.h, input_size.w
    graph_h = h * 2 if broken == "shape" else h
    node = helper.make_node("Conv", ["input", "W", "B"], ["heatmaps"], kernel_shape=[4, 4], strides=[4, 4])
    graph = helper.make_graph(
        [node],
        "tiny_pose",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, graph_h, w])],
        [helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT, ["batch", k, graph_h // 4, w // 4])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in contract_metadata(f"tiny-{seed}", input_size).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    path = Path(path)
    onnx.save(model, str(path))
    return path


def export_posenet(out_dir: Path, seed: int) -> Path:
    """Exported (parity-checked) realistic PoseNet for `seed`, cached for the test session."""
    if seed not in _EXPORT_CACHE:
        import torch

        from models.export import export_onnx
        from tests.model_fixtures import realistic_posenet

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            codec = HeatmapCodec.for_input(INPUT, 4, 2.0, "quarter")
            model = realistic_posenet(seed, INPUT, head="light", head_channels=32)
            report = export_onnx(
                model,
                codec,
                LSP14,
                Path(out_dir) / f"posenet_{seed}.onnx",
                version=f"seed-{seed}",
                trained_on="synthetic",
                exporter="torchscript",
            )
        finally:
            torch.set_num_threads(threads)
        _EXPORT_CACHE[seed] = report.path
    return _EXPORT_CACHE[seed]


def sample_image(seed: int = 0, size: tuple[int, int] = (160, 120)) -> np.ndarray:
    """Smooth deterministic RGB image, size = (w, h)."""
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 255, (5, 6, 3)).astype(np.float32)
    img = cv2.resize(low, size, interpolation=cv2.INTER_CUBIC) + rng.normal(0, 8, (size[1], size[0], 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(image_rgb: np.ndarray, ext: str = ".png") -> bytes:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def wait_for(predicate, timeout: float, what: str, every: float = 0.25):
    """Poll `predicate()` until it returns something true (returned); TimeoutError naming `what` after `timeout`
    s. Tests wait for the state they need (answers served, a process gone), never for a fixed time that a loaded
    box may not honour."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def api_settings(root: Path, tokens: dict, **extra) -> Settings:
    """Settings of a test API under `root` (registry/ and data/ there), one ONNX Runtime thread, no registry
    polling; `extra` adds or overrides fields (limits, timeouts)."""
    fields = {"registry_dir": root / "registry", "data_dir": root / "data", "ort_threads": 1, "registry_poll_s": 0}
    return Settings(**{**fields, "tokens": tokens, **extra})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@contextlib.contextmanager
def thread_server(app, port: int | None = None) -> Iterator[str]:
    """Run `app` under a real uvicorn server in a thread on 127.0.0.1; yields the base URL."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/healthz")
        yield base
    finally:
        server.should_exit = True
        thread.join(15)


@contextlib.contextmanager
def process_server(env: dict[str, str], port: int | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """The real `poseloop serve` entry (run_server) in a child process, configured by POSELOOP_* env."""
    with serve_in_subprocess({"OMP_NUM_THREADS": "1", **env}, port) as running:
        yield running


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def tokens_env(tokens: dict[str, list[str]]) -> str:
    return json.dumps(tokens)
