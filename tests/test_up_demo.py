"""`poseloop up` (embedded defaults) as one process group, driven by `poseloop demo` end to end."""

import json
import os
import signal
import subprocess
import sys

import httpx
import pytest

from poseloop.demo import run_demo
from tests.loop_fixtures import RETRAIN_OVERRIDES
from tests.redis_fixtures import REPO
from tests.serving_fixtures import free_port, wait_for

pytestmark = pytest.mark.slow


def test_up_runs_the_loop_and_demo_walks_it(tmp_path, data_root, small_model):
    onnx_path, _ = small_model
    port = free_port()
    env = {
        **os.environ,
        "POSELOOP_REGISTRY_DIR": str(tmp_path / "registry"),
        "POSELOOP_DATA_DIR": str(tmp_path / "data"),
        "POSELOOP_REGISTRY_POLL_S": "0.5",
        "POSELOOP_RETRAIN_CHECK_S": "3600",
    }
    env.pop("POSELOOP_TOKENS", None)
    log = open(tmp_path / "up.log", "w")  # noqa: SIM115 - the child writes to it until the test ends
    proc = subprocess.Popen(
        [sys.executable, "-m", "poseloop.cli", "up", "--model", str(onnx_path), "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(base), 90, "the API of `poseloop up`")
        tokens = json.loads((tmp_path / "data" / "dev-tokens.json").read_text())
        assert set(tokens) == {"infer", "upload", "ops"}
        # the demo's retrain runs on the embedded worker of the group (no broker configured)
        result = run_demo(
            base,
            tokens,
            data_root,
            tmp_path / "demo",
            iterations=4,
            frame_limit=3,
            lspet_limit=5,
            margin=-100.0,
            say=lambda line: None,
            overrides=RETRAIN_OVERRIDES,
            job_timeout_s=300,
        )
        assert result["gate"]["decision"] == "promoted" and result["after_rollback"] == result["start_version"]
        assert result["pose_persons"] >= 2  # the sample's two players, found by the person detector
        assert (tmp_path / "demo" / "demo_pose.png").read_bytes()[:4] == b"\x89PNG"
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(40)
        log.close()
    text = (tmp_path / "up.log").read_text()
    assert "[worker]" in text and "[   api]" in text and "stopped" in text and code == 0

    def leftover() -> list[str]:
        return subprocess.run(["pgrep", "-f", f"--port {port}"], capture_output=True, text=True).stdout.split()

    wait_for(lambda: leftover() == [], 30, f"no process left on port {port}", every=0.2)


def _ready(base: str) -> bool:
    try:
        return httpx.get(base + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
