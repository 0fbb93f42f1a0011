"""`poseloop serve --backend triton` (no --triton-url) starts and owns a real tritonserver; pose goes through it."""

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from serving.triton.server import find_tritonserver
from tests.serving_fixtures import encode, free_port, sample_image, tiny_pose_onnx, wait_http

pytestmark = pytest.mark.integration  # real server processes: `make test`, not `make test-fast`


@pytest.mark.skipif(find_tritonserver() is None, reason="tritonserver binary not installed (pip install .[triton])")
def test_serve_with_managed_triton(tmp_path):
    model = tiny_pose_onnx(tmp_path / "m.onnx")
    port = free_port()
    env = {**os.environ, "POSELOOP_TOKENS": '{"infer-token-0123456789": ["infer"]}', "POSELOOP_ORT_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "poseloop.cli",
            "serve",
            "--backend",
            "triton",
            "--model",
            str(model),
            "--port",
            str(port),
            "--registry",
            str(tmp_path / "reg"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/healthz", timeout=90, proc=proc)
        deadline = time.monotonic() + 90
        while httpx.get(base + "/readyz").status_code != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.5)
        image = encode(sample_image(), ".png")  # 160×120, no person in it
        r = httpx.post(
            base + "/v1/pose",
            headers={"Authorization": "Bearer infer-token-0123456789"},
            files={"image": ("a.png", image, "image/png"), "boxes": (None, "[[0, 0, 160, 120]]")},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert r.headers["X-Model-Version"] == "1" and len(r.json()["persons"]) == 1
        assert r.json()["boxes_from"] == "request"
        repo = tmp_path / "reg" / "triton_repository"
        assert (repo / "poseloop" / "1" / "model.onnx").exists()
        # without boxes the person detector runs as the second Triton model, and finds nobody in this image
        r = httpx.post(
            base + "/v1/pose",
            headers={"Authorization": "Bearer infer-token-0123456789"},
            files={"image": ("a.png", image, "image/png")},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert r.json()["boxes_from"] == "detector" and r.json()["persons"] == []
        assert (repo / "poseloop_detector" / "1" / "model.onnx").exists()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert b"tritonserver (managed)" in out
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path / "reg" / "triton_repository")], capture_output=True)
    assert leftover.stdout.strip() == b"", ("tritonserver left running", out.decode()[-2000:])
