"""poseloop.client and the `poseloop` ops commands against a real API (uvicorn in a thread, embedded ONNX
Runtime, tiny real models): typed answers, tables and --json, a promote/rollback/pin round trip, a retrain job
submitted, listed and cancelled, and every kind of failure as one line with its exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest
from typer.testing import CliRunner

from continual.settings import Settings
from models.registry import ModelRegistry
from poseloop.cli import app
from poseloop.client import (
    AuthenticationError,
    Conflict,
    NotFound,
    PermissionDenied,
    PoseLoopClient,
    Unreachable,
    client_version,
)
from poseloop.ops_cli import ExitCode
from serving.app import create_app
from serving.ops_types import ModelList
from tests.serving_fixtures import REPO, encode, free_port, sample_image, thread_server, tiny_pose_onnx

OPS, INFER, UPLOAD = "ops-" + "o" * 20, "infer-" + "i" * 20, "upload-" + "u" * 20
IMAGE = encode(sample_image(0, (160, 120)))


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """(base URL, registry): versions 1 (active) and 2 (candidate) of tiny real models."""
    root = tmp_path_factory.mktemp("client_cli")
    registry = ModelRegistry(root / "registry")
    first = registry.register(tiny_pose_onnx(root / "a.onnx", seed=1), metrics={"pck": 0.5}, actor="test")
    registry.register(tiny_pose_onnx(root / "b.onnx", seed=2), metrics={"pck": 0.6}, parent=first.version)
    registry.set_active(first.version, "test")
    settings = Settings(
        registry_dir=root / "registry",
        data_dir=root / "data",
        ort_threads=1,
        registry_poll_s=0,
        max_wait_ms=2,
        tokens={OPS: {"roles": ["ops"], "name": "ops-bot"}, INFER: ["infer"], UPLOAD: ["upload"]},
    )
    with thread_server(create_app(settings)) as base:
        yield base, registry


@pytest.fixture
def cli(live, tmp_path):
    """Run `poseloop ARGS` in-process against the live API: (exit code, stdout, stderr)."""
    runner = CliRunner()
    env = {"POSELOOP_URL": live[0], "POSELOOP_TOKEN": OPS, "POSELOOP_DATA_DIR": str(tmp_path / "no-dev-tokens")}

    def run(*args: str, **overrides: str | None) -> tuple[int, str, str]:
        result = runner.invoke(app, list(args), env={**env, **overrides})
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception  # a traceback is a bug, never an answer
        return result.exit_code, result.stdout, result.stderr

    return run


@pytest.fixture
def api(live):
    with PoseLoopClient(live[0], OPS) as client:
        yield client


def _restore(api: PoseLoopClient) -> None:
    api.unpin()
    if api.models().active != "1":
        api.promote("1")


def test_client_typed_answers(api, live) -> None:
    listing = api.models()
    assert isinstance(listing, ModelList)
    assert listing.active == listing.serving == "1" and listing.pinned is None
    by_version = {v.version: v for v in listing.versions}
    assert by_version["1"].status == "active" and by_version["1"].loaded is True
    assert by_version["2"].status in ("candidate", "retired")  # retired once a test promoted it and went back
    assert by_version["2"].parent == "1" and by_version["2"].metrics == {"pck": 0.6}
    assert api.model("2") == by_version["2"]
    active = api.active_model()
    assert active.version == "1" and (active.input_size.width, active.input_size.height) == (48, 64)
    assert len(active.keypoints) == 14
    assert api.health() == {"status": "ok"}
    ready = api.ready()
    assert ready.ready and ready.version == "1"


def test_client_pose_render_metrics(live) -> None:
    with PoseLoopClient(live[0], INFER) as infer:
        doc = infer.pose(IMAGE, boxes=[[10, 5, 60, 100]])
        assert doc["model_version"] == "1" and len(doc["persons"]) == 1
        assert doc["persons"][0]["box"] == [10, 5, 60, 100] and len(doc["persons"][0]["keypoints"]) == 14
        coco = infer.pose(IMAGE, boxes=[[10, 5, 60, 100]], image_id=7, coco=True)
        assert coco[0]["image_id"] == 7 and len(coco[0]["keypoints"]) == 14 * 3
        assert infer.render(IMAGE, boxes=[[10, 5, 60, 100]]).startswith(b"\x89PNG")
        assert "poseloop_http_requests_total" in infer.metrics()


def test_client_uploads_and_pool_stats(live, tmp_path) -> None:
    paths = []
    for seed in (11, 12):
        path = tmp_path / f"frame{seed}.png"
        path.write_bytes(encode(sample_image(seed, (96, 80))))
        paths.append(path)
    with PoseLoopClient(live[0], UPLOAD) as upload:
        report = upload.upload_unlabeled(paths, boxes={"frame11.png": [[0, 0, 50, 60]]}, source="test")
        assert [a["name"] for a in report["accepted"]] == ["frame11.png", "frame12.png"]
        assert upload.unlabeled_stats()["total"] >= 2


def test_client_errors_are_typed(live, api) -> None:
    with pytest.raises(NotFound) as err:
        api.model("99")
    assert err.value.status == 404 and err.value.code == "unknown_version"
    with pytest.raises(NotFound):
        api.promote("99")
    with pytest.raises(NotFound):
        api.job("no-such-job")
    with PoseLoopClient(live[0], "wrong-token-" + "x" * 20) as wrong, pytest.raises(AuthenticationError) as auth:
        wrong.models()
    assert auth.value.status == 401 and auth.value.code == "unauthenticated"
    with PoseLoopClient(live[0], INFER) as infer, pytest.raises(PermissionDenied) as denied:
        infer.rollback()
    assert denied.value.status == 403 and "ops" in denied.value.message
    with PoseLoopClient(f"http://127.0.0.1:{free_port()}", OPS) as nowhere, pytest.raises(Unreachable):
        nowhere.models()
    with pytest.raises(ValueError, match="invalid API URL"):
        PoseLoopClient("ftp://example")


def test_cli_models_table_and_json(cli, api) -> None:
    code, out, err = cli("models")
    assert code == 0, err
    lines = out.splitlines()
    assert "active 1" in lines[0] and "automatic promotion on" in lines[0]
    assert any(line.split()[1:3] == ["1", "*"] for line in lines if "active" in line and "│" in line)
    assert any("candidate" in line and "pck=0.6" in line for line in lines)
    code, out, _ = cli("models", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc == api.models().model_dump(mode="json", by_alias=True)
    assert {v["version"] for v in doc["versions"]} >= {"1", "2"}


def test_cli_status(cli) -> None:
    code, out, err = cli("status", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["ready"] == {"ready": True, "version": doc["models"]["serving"], "detail": "ok"}
    assert doc["jobs"] == {"running": 0, "queued": 0} and doc["pool"]["total"] >= 0 and doc["health"] == "ok"
    code, out, _ = cli("status")
    assert code == 0 and "serving" in out and "0 running, 0 queued" in out
    code, out, _ = cli("status", POSELOOP_TOKEN=None)  # no token: health and readiness only
    assert code == 0 and "yes, serving" in out and "no token" in out
    assert not any(line.startswith(("models", "jobs", "pool")) for line in out.splitlines())
    code, out, _ = cli("status", "--json", POSELOOP_TOKEN=INFER)  # reads models, not jobs or the pool
    doc = json.loads(out)
    assert code == 0 and doc["models"] is not None and doc["jobs"] is None and doc["pool"] is None
    assert any("ops role" in note for note in doc["notes"])


def test_cli_promote_rollback_round_trip(cli, api) -> None:
    try:
        code, out, err = cli("promote", "2", "--reason", "better on dev")
        assert code == 0, err
        assert out.startswith("promoted: serving 2 (was 1)")
        assert api.models().active == "2"
        with PoseLoopClient(api.url, INFER) as infer:
            assert infer.pose(IMAGE, boxes=[[0, 0, 80, 100]])["model_version"] == "2"
        code, out, err = cli("rollback", "--json")
        assert code == 0, err
        assert json.loads(out)["active"] == "1" and json.loads(out)["action"] == "rollback"
        assert api.models().active == "1"
        code, out, _ = cli("events", "--json", "--limit", "5")
        events = json.loads(out)
        mine = [e for e in events if e["actor"] == "ops-bot" and e["action"] in ("promote", "rollback")]
        assert [e["action"] for e in mine][-2:] == ["promote", "rollback"]
        assert mine[-2]["reason"] == "better on dev" and mine[-2]["version"] == "2" and "from" in mine[-2]
        code, out, _ = cli("events")
        assert code == 0 and "rollback" in out and "ops-bot" in out
    finally:
        _restore(api)


def test_cli_pin_and_unpin(cli, api) -> None:
    try:
        code, out, err = cli("pin", "2", "--reason", "freeze for the demo", "--json")
        assert code == 0, err
        state = json.loads(out)
        assert state["active"] == "2" and state["pinned"]["actor"] == "ops-bot"
        listing = api.models()
        assert listing.active == "2" and listing.pinned is not None
        assert listing.pinned.reason == "freeze for the demo"
        code, out, _ = cli("models")
        assert "pinned by ops-bot" in out.splitlines()[0]
        code, out, _ = cli("unpin")
        assert code == 0 and "automatic promotion on" in out
        assert api.models().pinned is None
        code, _, err = cli("pin", "99")  # the promotion fails: nothing is pinned
        assert code == ExitCode.NOT_FOUND and "unknown_version" in err
        assert api.models().pinned is None and api.models().active == "2"
        code, out, _ = cli("pin")  # no version: the active one
        assert code == 0 and out.startswith("active 2: pinned by ops-bot")
        last = api.events(1)[0]
        assert (last.action, last.version, last.actor) == ("pin", "2", "ops-bot")
    finally:
        _restore(api)


def test_cli_retrain_job_cancel(cli, live, tmp_path) -> None:
    with PoseLoopClient(live[0], UPLOAD) as upload:  # a retrain needs a non-empty pool
        image = tmp_path / "pool.png"
        image.write_bytes(encode(sample_image(21, (96, 80))))
        upload.upload_unlabeled([image])
    code, out, err = cli("retrain", "--iterations", "3", "--reason", "test", "--json")
    assert code == 0, err
    job_id = json.loads(out)["job"]["id"]
    assert json.loads(out)["created"] is True and json.loads(out)["job"]["state"] == "queued"
    code, out, err = cli("retrain", "--iterations", "5")  # another retrain with other parameters: 409
    assert code == ExitCode.CONFLICT and "retrain_running" in err and out == ""
    code, out, _ = cli("jobs", "--json", "--state", "queued")
    assert job_id in [j["id"] for j in json.loads(out)]
    code, out, _ = cli("job", job_id)
    assert code == 0 and job_id in out and "queued" in out and "iterations" in out
    code, out, _ = cli("cancel", job_id)
    assert code == 0 and out.strip() == f"job {job_id}: cancelled, cancel requested"
    code, _, err = cli("cancel", job_id)
    assert code == ExitCode.CONFLICT and "job_finished" in err
    code, out, _ = cli("jobs")
    assert code == 0 and job_id in out and "cancelled" in out


def test_cli_errors_and_exit_codes(cli, live, tmp_path) -> None:
    cases = [
        (("models",), {"POSELOOP_TOKEN": "wrong-token-" + "x" * 20}, ExitCode.AUTH, "unknown token"),
        (("models",), {"POSELOOP_TOKEN": None}, ExitCode.AUTH, "no API token"),
        (("rollback",), {"POSELOOP_TOKEN": INFER}, ExitCode.AUTH, "lacks the 'ops' role"),
        (("models",), {"POSELOOP_URL": f"http://127.0.0.1:{free_port()}"}, ExitCode.UNREACHABLE, "cannot reach"),
        (("models", "--url", "ftp://example"), {}, ExitCode.USAGE, "invalid API URL"),
        (("promote", "99"), {}, ExitCode.NOT_FOUND, "unknown_version"),
        (("job", "no-such-job"), {}, ExitCode.NOT_FOUND, "no job"),
        (("promote", "x y"), {}, ExitCode.USAGE, "invalid_request"),
        (("jobs", "--state", "nope"), {}, ExitCode.USAGE, "nope"),
        (("promote",), {}, ExitCode.USAGE, "Missing argument"),
    ]
    for args, env, expected, text in cases:
        code, out, err = cli(*args, **env)
        assert (code, out) == (expected, ""), (args, code, out, err)
        assert text in err, (args, err)
        assert "Traceback" not in err
    # a version that fails to load is rejected (422); promoting it again is a conflict (409)
    bad = live[1].register(tiny_pose_onnx(tmp_path / "nan.onnx", seed=3, broken="nan"), actor="test")
    code, _, err = cli("promote", bad.version)
    assert code == ExitCode.USAGE and "load_failed" in err
    code, _, err = cli("promote", bad.version)
    assert code == ExitCode.CONFLICT and "version_rejected" in err
    with PoseLoopClient(live[0], OPS) as api, pytest.raises(Conflict):
        api.promote(bad.version)


def test_dev_token_fallback_for_a_local_api(cli, tmp_path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "dev-tokens.json").write_text(json.dumps({"ops": OPS, "infer": INFER}))
    code, out, err = cli("models", "--json", POSELOOP_TOKEN=None, POSELOOP_DATA_DIR=str(data_dir))
    assert code == 0, err
    assert json.loads(out)["active"] == "1"


def test_versions(cli) -> None:
    code, out, _ = cli("--version")
    assert code == 0 and out.strip() == f"poseloop {client_version()}"
    code, out, _ = cli("version", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["client"] == client_version()
    assert doc["server"]["api"] == "1" and doc["server"]["serving"] == "1"
    code, out, err = cli("version", POSELOOP_URL=f"http://127.0.0.1:{free_port()}")
    assert code == ExitCode.UNREACHABLE and out.startswith("client  poseloop") and "cannot reach" in err
    code, out, _ = cli("version", "--client", POSELOOP_URL="http://127.0.0.1:1")
    assert code == 0 and out.strip() == f"client  poseloop {client_version()}"


def test_console_entry_prints_one_line_errors(live) -> None:
    """The real `poseloop` process: exit codes and a single stderr line, no traceback."""
    env = {**os.environ, "POSELOOP_URL": live[0], "POSELOOP_TOKEN": "wrong-token-" + "x" * 20}
    env.pop("POSELOOP_DATA_DIR", None)
    wrong = subprocess.run(
        [sys.executable, "-m", "poseloop.cli", "models"], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert wrong.returncode == ExitCode.AUTH and wrong.stdout == ""
    assert len(wrong.stderr.strip().splitlines()) == 1 and wrong.stderr.startswith("error: unknown token")
    env["POSELOOP_TOKEN"] = OPS
    ok = subprocess.run(
        [sys.executable, "-m", "poseloop.cli", "status", "--json"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["ready"]["ready"] is True


def test_client_and_ops_commands_never_import_torch(live) -> None:
    code = f"""
import sys
from poseloop.cli import app
from poseloop.client import PoseLoopClient
assert PoseLoopClient({live[0]!r}, {OPS!r}).models().active == "1"
try:
    app(["status", "--url", {live[0]!r}, "--token", {OPS!r}, "--json"])
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
bad = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
sys.exit(f"torch imported: {{bad[:3]}}" if bad else 0)
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["ready"]["ready"] is True


def test_answers_that_are_not_the_apis_and_exit_code_mapping() -> None:
    """Unit level (a fake transport): what a wrong URL answers, and the exit code of every kind of failure."""
    from poseloop.client import ApiError, BadAnswer, InvalidRequest, Unavailable, api_error
    from poseloop.ops_cli import exit_code

    html = httpx.MockTransport(lambda request: httpx.Response(200, text="<html>hello</html>"))
    with (
        PoseLoopClient("http://example.test", OPS, transport=html) as other,
        pytest.raises(BadAnswer, match="not JSON"),
    ):
        other.models()
    wrong_shape = httpx.MockTransport(lambda request: httpx.Response(200, json={"versions": "no"}))
    with PoseLoopClient("example.test:9", OPS, transport=wrong_shape) as other, pytest.raises(BadAnswer):
        other.models()
    proxy = api_error(httpx.Response(502, text="<h1>Bad gateway</h1>"))
    assert (proxy.status, proxy.code, proxy.message) == (502, "http_502", "<h1>Bad gateway</h1>")
    busy = api_error(httpx.Response(503, json={"error": {"code": "overloaded", "message": "retry"}}))
    assert isinstance(busy, Unavailable) and busy.code == "overloaded"
    assert isinstance(api_error(httpx.Response(413, json={})), InvalidRequest)
    expected = {500: ExitCode.ERROR, 502: ExitCode.ERROR, 503: ExitCode.UNAVAILABLE, 413: ExitCode.USAGE}
    expected |= {400: ExitCode.USAGE, 401: ExitCode.AUTH, 403: ExitCode.AUTH, 404: ExitCode.NOT_FOUND}
    expected |= {409: ExitCode.CONFLICT, 422: ExitCode.USAGE}
    for status, code in expected.items():
        assert exit_code(api_error(httpx.Response(status, json={}))) == code, status
    assert exit_code(Unreachable("http://x", "refused")) == ExitCode.UNREACHABLE
    assert exit_code(BadAnswer("html")) == ExitCode.ERROR
    assert exit_code(ApiError(418, "teapot", "no")) == ExitCode.ERROR
