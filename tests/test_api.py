"""HTTP API over a real uvicorn server (thread) with the embedded ONNX Runtime backend and tiny real models:
auth, readiness, pose JSON / COCO / render, model listing, promotion and rollback, metrics."""

from __future__ import annotations

import base64
import json
import secrets

import cv2
import httpx
import numpy as np
import pytest

from continual.settings import Settings
from models.registry import ModelRegistry
from serving.app import create_app
from serving.backends.onnxruntime import OnnxRuntimeBackend
from serving.pipeline import PosePipeline
from tests.data_paths import data_path
from tests.serving_fixtures import auth, encode, sample_image, thread_server, tiny_pose_onnx

INFER, OPS, UPLOAD = (secrets.token_urlsafe(16) for _ in range(3))
IMAGE = sample_image(0, (160, 120))
BOXES = [[10.0, 5.0, 60.0, 100.0], [80.0, 10.0, 70.0, 105.0]]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("api_models")
    return {
        "a": tiny_pose_onnx(root / "a.onnx", seed=1),
        "b": tiny_pose_onnx(root / "b.onnx", seed=2),
        "nan": tiny_pose_onnx(root / "nan.onnx", seed=3, broken="nan"),
    }


@pytest.fixture(scope="module")
def live(tmp_path_factory, models_dir):
    """(base URL, registry) of a server whose registry starts empty."""
    registry_dir = tmp_path_factory.mktemp("api_registry")
    settings = Settings(
        registry_dir=registry_dir,
        ort_threads=1,
        registry_poll_s=0,
        max_wait_ms=2,
        tokens={INFER: ["infer"], OPS: {"roles": ["ops"], "name": "ops-bot"}, UPLOAD: ["upload"]},
    )
    app = create_app(settings)
    with thread_server(app) as base:
        yield base, ModelRegistry(registry_dir), app


@pytest.fixture(scope="module")
def client(live):
    with httpx.Client(base_url=live[0], timeout=30) as c:
        yield c


def local_poses(onnx_path, image, boxes):
    with OnnxRuntimeBackend(onnx_path, intra_op_threads=1) as backend:
        return PosePipeline(backend).predict(image, boxes)


def test_empty_registry_not_ready_then_ready_after_promote(live, client, models_dir) -> None:
    _base, registry, _app = live
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
    r = client.post("/v1/pose", files={"image": ("x.png", encode(IMAGE))}, headers=auth(INFER))
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_active_model"

    registry.register(models_dir["a"], metrics={"pck": 0.5}, actor="test")  # version 1
    registry.register(models_dir["b"], metrics={"pck": 0.6}, parent="1", actor="test")  # version 2
    r = client.post("/v1/ops/promote", json={"version": "1"}, headers=auth(OPS))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["active"] == "1" and body["previous"] is None and body["timing_ms"]["load"] > 0
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ready", "model_version": "1"}


def test_auth_401_and_403(live, client) -> None:
    files = {"image": ("x.png", encode(IMAGE))}
    for headers in (
        {},
        {"Authorization": "Bearer nope-" + "x" * 20},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer"},
    ):
        r = client.post("/v1/pose", files=files, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
        assert r.headers["www-authenticate"] == "Bearer"
    r = client.post("/v1/pose", files=files, headers=auth(UPLOAD))
    assert r.status_code == 403 and "infer" in r.json()["error"]["message"]
    r = client.post("/v1/ops/promote", json={"version": "1"}, headers=auth(INFER))
    assert r.status_code == 403
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers=auth(UPLOAD)).status_code == 200  # any role may read
    for open_path in ("/healthz", "/metrics", "/docs", "/openapi.json"):
        assert client.get(open_path).status_code == 200


def test_pose_json_matches_local_pipeline(live, client, models_dir) -> None:
    r = client.post(
        "/v1/pose", files={"image": ("x.png", encode(IMAGE)), "boxes": (None, json.dumps(BOXES))}, headers=auth(INFER)
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    assert r.headers["x-model-version"] == doc["model_version"] == "1"
    assert doc["image"] == {"width": 160, "height": 120, "id": None, "decoded_scale": 1.0}
    assert set(doc["timing_ms"]) >= {"total", "decode", "queue", "inference"}
    expected = local_poses(models_dir["a"], IMAGE, BOXES)
    assert len(doc["persons"]) == 2
    for person, pose, box in zip(doc["persons"], expected, BOXES):
        assert person["box"] == box and len(person["keypoints"]) == 14 and person["det_score"] is None
        assert set(person["keypoints"][0]) == {"name", "x", "y", "score", "in_image", "valid"}
        got = np.array([[k["x"], k["y"]] for k in person["keypoints"]])
        assert np.abs(got - pose.keypoints).max() < 1e-3
        assert person["score"] == person["pose_score"] == pytest.approx(pose.score, abs=1e-5)
    assert doc["boxes_from"] == "request"
    assert doc["options"] == {"max_persons": 20, "det_threshold": 0.35, "kpt_threshold": 0.3, "flip": False}

    # JSON body with base64, no boxes = the detector; a smooth synthetic image has nobody: no guessed skeleton
    b64 = base64.b64encode(encode(IMAGE, ".jpg")).decode()
    r = client.post("/v1/pose", json={"image": b64, "image_id": 7}, headers=auth(INFER))
    assert r.status_code == 200, r.text
    assert r.json()["persons"] == [] and r.json()["boxes_from"] == "detector" and r.json()["image"]["id"] == 7
    assert r.json()["timing_ms"]["detect"] > 0
    # raw image body with boxes in the query; empty box list = no persons
    r = client.post(
        "/v1/pose", params={"boxes": "[]"}, content=encode(IMAGE), headers={**auth(INFER), "Content-Type": "image/png"}
    )
    assert r.status_code == 200 and r.json()["persons"] == [] and r.headers["x-model-version"] == "1"


def test_pose_coco_format(live, client) -> None:
    r = client.post(
        "/v1/pose",
        params={"format": "coco", "image_id": 42},
        files={"image": ("x.png", encode(IMAGE)), "boxes": (None, json.dumps(BOXES))},
        headers=auth(INFER),
    )
    assert r.status_code == 200, r.text
    results = r.json()
    assert isinstance(results, list) and len(results) == 2 and r.headers["x-model-version"] == "1"
    for entry, box in zip(results, BOXES):
        assert entry["image_id"] == 42 and entry["category_id"] == 1 and entry["bbox"] == box
        assert len(entry["keypoints"]) == 3 * 14
        scores = entry["keypoints"][2::3]
        assert entry["score"] == pytest.approx(np.mean(scores), abs=1e-5)


def test_pose_without_boxes_detects_every_person(live, client) -> None:
    """basketball1.png (two players): no boxes → the detector's persons, each posed, one batched pose call."""
    data = data_path("wild", "basketball1.png").read_bytes()
    r = client.post("/v1/pose", files={"image": ("b.png", data)}, headers=auth(INFER))
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["boxes_from"] == "detector"
    persons = doc["persons"]
    assert len(persons) >= 2 and doc["timing_ms"]["batch_crops"] == len(persons)  # all crops in one call
    scores = [p["det_score"] for p in persons]
    assert all(0.35 <= s <= 1 for s in scores) and scores == sorted(scores, reverse=True)
    lefts = sorted(p["box"][0] for p in persons[:2])
    assert lefts[0] < 200 and lefts[1] > 350  # the two players: one on the left, one on the right
    # the options reach the detector: max_persons caps, a high det_threshold drops everyone
    one = client.post("/v1/pose", params={"max_persons": 1}, files={"image": ("b.png", data)}, headers=auth(INFER))
    assert [p["box"] for p in one.json()["persons"]] == [persons[0]["box"]]
    none = client.post(
        "/v1/pose", data={"det_threshold": "0.99"}, files={"image": ("b.png", data)}, headers=auth(INFER)
    )
    assert none.status_code == 200 and none.json()["persons"] == []
    flipped = client.post("/v1/pose", params={"flip": "true"}, files={"image": ("b.png", data)}, headers=auth(INFER))
    assert flipped.json()["timing_ms"]["batch_crops"] == 2 * len(persons)  # mirrored crops in the same call
    assert flipped.json()["options"]["flip"] is True
    threshold = min(1.0, float(np.median([k["score"] for p in persons for k in p["keypoints"]])))
    strict = client.post(
        "/v1/pose", params={"kpt_threshold": threshold}, files={"image": ("b.png", data)}, headers=auth(INFER)
    )
    flags = [
        (k["valid"], k["score"] >= threshold and k["in_image"])
        for p in strict.json()["persons"]
        for k in p["keypoints"]
    ]
    assert all(valid == expected for valid, expected in flags) and {v for v, _ in flags} == {True, False}
    coco = client.post("/v1/pose", params={"format": "coco"}, files={"image": ("b.png", data)}, headers=auth(INFER))
    assert [e["bbox"] for e in coco.json()] == [p["box"] for p in persons]


@pytest.mark.parametrize(
    ("where", "field", "value"),
    [
        ("query", "max_persons", "0"),
        ("query", "det_threshold", "1.5"),
        ("query", "kpt_threshold", "-0.1"),
        ("query", "flip", "maybe"),
        ("query", "max_persons", "65"),  # above limits.max_boxes (64)
        ("form", "det_threshold", "high"),
        ("form", "max_persons", "2.5"),
        ("json", "flip", "yes"),
        ("json", "kpt_threshold", 2),
    ],
)
def test_bad_options_are_422_naming_the_field(live, client, where, field, value) -> None:
    if where == "query":
        r = client.post(
            "/v1/pose", params={field: value}, files={"image": ("x.png", encode(IMAGE))}, headers=auth(INFER)
        )
    elif where == "form":
        r = client.post("/v1/pose", data={field: value}, files={"image": ("x.png", encode(IMAGE))}, headers=auth(INFER))
    else:
        b64 = base64.b64encode(encode(IMAGE)).decode()
        r = client.post("/v1/pose", json={"image": b64, field: value}, headers=auth(INFER))
    assert r.status_code == 422, r.text
    assert field in r.json()["error"]["message"]


def test_conflicting_options_and_openapi_schema(live, client) -> None:
    r = client.post(
        "/v1/pose",
        params={"max_persons": 2},
        data={"max_persons": "3"},
        files={"image": ("x.png", encode(IMAGE))},
        headers=auth(INFER),
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "conflicting_option"
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert {"PoseResponse", "Person", "Keypoint", "CocoResult"} <= set(schemas)
    assert set(schemas["Keypoint"]["properties"]) == {"name", "x", "y", "score", "in_image", "valid"}
    assert "never clipped" in schemas["Keypoint"]["properties"]["x"]["description"]
    params = {p["name"] for p in spec["paths"]["/v1/pose"]["post"]["parameters"]}
    assert {"max_persons", "det_threshold", "kpt_threshold", "flip"} <= params


def test_render_returns_png(live, client) -> None:
    r = client.post("/v1/pose/render", files={"image": ("x.jpg", encode(IMAGE, ".jpg"))}, headers=auth(INFER))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.headers["x-model-version"] == "1"
    png = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
    assert png.shape == (120, 160, 3)


def test_render_draws_only_valid_keypoints(live, client) -> None:
    """The request's kpt_threshold reaches the overlay: above every keypoint score nothing is drawn (the PNG is
    the input, pixel for pixel), at 0 the confident keypoints are. A flat image at the model's mean colour makes
    the test model's scores its biases (below 1, some above 0)."""
    flat = np.empty((120, 160, 3), np.uint8)
    flat[:] = (124, 116, 104)  # RGB ≈ the metadata mean: normalised input ≈ 0
    form = {"image": ("flat.png", encode(flat, ".png")), "boxes": (None, json.dumps([[50.0, 30.0, 60.0, 60.0]]))}
    pose = client.post("/v1/pose", files=form, params={"kpt_threshold": 0}, headers=auth(INFER)).json()
    keypoints = pose["persons"][0]["keypoints"]
    assert all(k["in_image"] for k in keypoints) and 0 < max(k["score"] for k in keypoints) < 1

    def render(threshold: float) -> np.ndarray:
        r = client.post("/v1/pose/render", files=form, params={"kpt_threshold": threshold}, headers=auth(INFER))
        assert r.status_code == 200, r.text
        return cv2.cvtColor(cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    assert np.array_equal(render(1.0), flat)  # no keypoint is valid at 1.0: none drawn
    assert not np.array_equal(render(0.0), flat)


def test_models_endpoints_promote_reject_and_rollback(live, client, models_dir) -> None:
    _base, registry, _app = live
    r = client.get("/v1/models", headers=auth(INFER))
    doc = r.json()
    assert doc["active"] == doc["serving"] == "1"
    v2 = next(v for v in doc["versions"] if v["version"] == "2")
    assert v2["status"] == "candidate" and v2["parent"] == "1" and v2["metrics"] == {"pck": 0.6}
    assert v2["size_bytes"] > 0 and v2["created"] and v2["loaded"] is False

    r = client.post("/v1/ops/promote", json={"version": "2", "reason": "better"}, headers=auth(OPS))
    assert r.status_code == 200 and r.json()["previous"] == "1"
    r = client.post("/v1/pose", files={"image": ("x.png", encode(IMAGE))}, headers=auth(INFER))
    assert r.headers["x-model-version"] == "2"
    active = client.get("/v1/models/active", headers=auth(INFER)).json()
    assert active["version"] == "2" and active["keypoints"][0] == "right_ankle"
    assert active["input_size"] == {"width": 48, "height": 64}

    bad = registry.register(models_dir["nan"], actor="test")  # version 3: NaN heatmaps
    r = client.post("/v1/ops/promote", json={"version": bad.version}, headers=auth(OPS))
    assert r.status_code == 422 and r.json()["error"]["code"] == "load_failed"
    assert "non-finite" in r.json()["error"]["message"]
    assert registry.get(bad.version).state == "rejected" and "non-finite" in registry.get(bad.version).reason
    assert client.get("/v1/models/active", headers=auth(INFER)).json()["version"] == "2"  # old keeps serving
    r = client.post("/v1/ops/promote", json={"version": bad.version}, headers=auth(OPS))
    assert r.status_code == 409 and r.json()["error"]["code"] == "version_rejected"
    assert client.post("/v1/ops/promote", json={"version": "99"}, headers=auth(OPS)).status_code == 404
    assert client.post("/v1/ops/promote", json={"version": "x y"}, headers=auth(OPS)).status_code == 422

    r = client.post("/v1/ops/rollback", headers=auth(OPS))  # no body: back to the previous active
    assert r.status_code == 200 and r.json()["active"] == "1" and r.json()["action"] == "rollback"
    r = client.post("/v1/pose", files={"image": ("x.png", encode(IMAGE))}, headers=auth(INFER))
    assert r.headers["x-model-version"] == "1"
    events = client.get("/v1/ops/events", headers=auth(OPS)).json()["events"]
    assert [e["action"] for e in events][-3:] == ["reject", "rollback", "retire"]
    assert events[-2]["actor"] == "ops-bot" and events[-2]["version"] == "1"
    r = client.post("/v1/ops/rollback", json={"version": "2"}, headers=auth(OPS))
    assert r.status_code == 200 and r.json()["active"] == "2"


def test_metrics_per_version(live, client) -> None:
    client.post("/v1/pose", files={"image": ("x.png", encode(IMAGE))}, headers=auth(INFER))
    text = client.get("/metrics").text
    lines = [line for line in text.splitlines() if line.startswith("poseloop_http_requests_total{")]
    served = {
        line.split('model_version="')[1].split('"')[0]
        for line in lines
        if 'route="/v1/pose"' in line and 'status="200"' in line
    }
    assert {"1", "2"} <= served
    assert 'poseloop_http_request_duration_seconds_bucket{le="0.002",model_version="1",route="/v1/pose"}' in text
    assert "poseloop_batch_crops_count" in text and "poseloop_hot_swap_seconds_count" in text
    assert 'poseloop_promotions_total{action="promote",outcome="load_failed"} 1.0' in text
    assert 'poseloop_active_model{version="2"} 1.0' in text


def test_request_memory_is_released(live) -> None:
    assert live[2].state.service.pixel_budget.used == 0  # every request above gave its pixels back


def test_unknown_route_and_method_use_error_format(client) -> None:
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.get("/v1/pose", headers=auth(INFER))
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_dev_mode_generates_tokens(tmp_path) -> None:
    app = create_app(Settings(registry_dir=tmp_path, dev=True))
    assert set(app.state.dev_tokens) == {"infer", "upload", "ops"}
    with pytest.raises(ValueError, match="no API tokens"):
        create_app(Settings(registry_dir=tmp_path))
    with pytest.raises(ValueError, match="shorter"):
        Settings(tokens={"short": ["infer"]})


def test_settings_from_env_and_env_file(tmp_path, monkeypatch) -> None:
    from continual.settings import load_settings

    env_file = tmp_path / "poseloop.env"
    env_file.write_text(f"POSELOOP_MAX_BOXES=3\nPOSELOOP_PORT=9001\nPOSELOOP_TOKENS={json.dumps({INFER: ['infer']})}\n")
    monkeypatch.setenv("POSELOOP_PORT", "9002")  # the environment beats the file
    settings = load_settings(env_file, max_batch=4)  # keyword overrides beat both
    assert (settings.limits.max_boxes, settings.api.port, settings.inference.max_batch) == (3, 9002, 4)
    assert settings.api.tokens[INFER].roles == ("infer",)


def test_broken_active_version_at_start_is_not_ready_and_recoverable(tmp_path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    good = registry.register(tiny_pose_onnx(tmp_path / "good.onnx", seed=1), actor="t")
    bad = registry.register(tiny_pose_onnx(tmp_path / "bad.onnx", seed=2), actor="t")
    registry.set_active(bad.version, actor="t")
    bad.onnx_path.write_bytes(b"corrupted on disk")  # e.g. a bad copy on the shared volume
    settings = Settings(registry_dir=registry.root, ort_threads=1, registry_poll_s=0, tokens={OPS: ["ops", "infer"]})
    with thread_server(create_app(settings)) as base, httpx.Client(base_url=base, timeout=30) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and f"version {bad.version}" in r.json()["error"]["message"]
        r = client.post("/v1/ops/promote", json={"version": good.version}, headers=auth(OPS))
        assert r.status_code == 200 and client.get("/readyz").status_code == 200


def test_api_process_never_imports_torch(tmp_path) -> None:
    """The whole service path (app, lifespan, a pose request, promotion) runs without importing torch."""
    import subprocess
    import sys

    from tests.serving_fixtures import REPO

    model = tiny_pose_onnx(tmp_path / "m.onnx", seed=1)
    code = f"""
import sys
from starlette.testclient import TestClient
from serving.app import create_app
from continual.settings import Settings
import poseloop.serve, poseloop.bench.serve, serving.triton.backend
settings = Settings(registry_dir={str(tmp_path / "reg")!r}, bootstrap_model={str(model)!r}, dev=True,
                    registry_poll_s=0)
app = create_app(settings)
with TestClient(app) as client:
    token = app.state.dev_tokens["infer"]
    r = client.post("/v1/pose", content={encode(IMAGE)!r}, headers={{"Authorization": "Bearer " + token,
                                                                   "Content-Type": "image/png"}})
    assert r.status_code == 200 and r.headers["x-model-version"] == "1", r.text
bad = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print(bad)
sys.exit(1 if bad else 0)
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_pixel_budget_admits_within_limit_and_times_out() -> None:
    from core.inputs import PixelBudget

    budget = PixelBudget(100)
    budget.acquire(60, 1)
    budget.acquire(40, 1)
    with pytest.raises(TimeoutError):
        budget.acquire(1, 0.05)
    budget.release(60)
    budget.acquire(50, 1)
    budget.release(40)
    budget.release(50)
    budget.acquire(500, 0.05)  # larger than the budget: admitted alone
    assert budget.used == 500
