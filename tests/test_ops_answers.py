"""Early, explicit answers from the ops API over real HTTP (uvicorn): a retrain request is validated when it is
submitted — 422 naming the field, 409 naming the conflict — instead of a 200/202 that fails or misleads later."""

from __future__ import annotations

import httpx
import pytest

from continual.settings import Settings
from serving.app import create_app
from tests.serving_fixtures import api_settings, auth, encode, sample_image, thread_server

OPS = "o" * 24
UPLOAD = "u" * 24


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("ops_answers")
    settings = api_settings(root, {OPS: ["ops"], UPLOAD: ["upload"]})
    with thread_server(create_app(settings)) as base, httpx.Client(base_url=base, timeout=30) as c:
        yield c


def _retrain(client, body, key=None):
    headers = {**auth(OPS), **({"Idempotency-Key": key} if key is not None else {})}
    return client.post("/v1/ops/retrain", json=body, headers=headers)


def test_retrain_on_an_empty_pool_is_409(client) -> None:
    r = _retrain(client, {"iterations": 3})
    assert r.status_code == 409 and r.json()["error"]["code"] == "empty_pool"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"iterations": True}, "iterations"),
        ({"iterations": 2_000_000}, "iterations"),
        ({"margin": False}, "margin"),
        ({"overrides": ["optim.iterations=1000000000000"]}, "optim.iterations"),
        ({"overrides": ["output_dir=../../escape"]}, "output_dir"),
        ({"overrides": ["name=../x"]}, "name"),
        ({"overrides": ["optim.nosuch=1"]}, "optim.nosuch"),
        ({"overrides": ["optim.lr=5"]}, "optim.lr"),
        ({"overrides": ["optim.batch_size=abc"]}, "optim.batch_size"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_retrain_bodies_are_422_naming_the_field(client, body, field) -> None:
    r = _retrain(client, body)
    assert r.status_code == 422, r.text
    assert field in r.json()["error"]["message"]


def test_conflicts_and_reuse(client) -> None:
    up = client.post("/v1/unlabeled", files=[("files", ("a.png", encode(sample_image(1))))], headers=auth(UPLOAD))
    assert up.status_code == 200, up.text
    first = _retrain(client, {"iterations": 3, "overrides": ["optim.lr=0.0001"]}, key="nightly-1")
    assert first.status_code == 202, first.text
    job_id = first.json()["job"]["id"]
    again = _retrain(client, {"iterations": 3, "overrides": ["optim.lr=0.0001"]}, key="nightly-1")
    assert again.status_code == 200 and again.json()["job"]["id"] == job_id  # the same request: the same job
    reused = _retrain(client, {"iterations": 7}, key="nightly-1")
    assert reused.status_code == 422 and reused.json()["error"]["code"] == "idempotency_key_reused"
    other = _retrain(client, {"iterations": 9})
    assert other.status_code == 409 and job_id in other.json()["error"]["message"]
    assert _retrain(client, {"iterations": 3}, key="").status_code == 422  # an empty key is no key
    cancelled = client.post(f"/v1/ops/jobs/{job_id}/cancel", headers=auth(OPS))
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    twice = client.post(f"/v1/ops/jobs/{job_id}/cancel", headers=auth(OPS))
    assert twice.status_code == 409 and twice.json()["error"]["code"] == "job_finished"


def test_bad_job_filter_is_422(client) -> None:
    r = client.get("/v1/ops/jobs", params={"state": "bogus"}, headers=auth(OPS))
    assert r.status_code == 422 and "state" in r.json()["error"]["message"]
    assert client.get("/v1/ops/jobs", params={"state": "cancelled"}, headers=auth(OPS)).status_code == 200


INFER = "i" * 24


@pytest.fixture(scope="module")
def pose_client(tmp_path_factory):
    from models.registry import ModelRegistry
    from tests.serving_fixtures import tiny_pose_onnx

    root = tmp_path_factory.mktemp("pose_answers")
    registry = ModelRegistry(root / "registry")
    registry.set_active(registry.register(tiny_pose_onnx(root / "m.onnx"), actor="t").version, "t")
    settings = Settings(registry_dir=root / "registry", ort_threads=1, registry_poll_s=0, tokens={INFER: ["infer"]})
    with thread_server(create_app(settings)) as base, httpx.Client(base_url=base, timeout=30) as c:
        yield c


def test_pose_refuses_unknown_fields_and_a_second_image(pose_client) -> None:
    image = encode(sample_image(2))
    ok = pose_client.post("/v1/pose", files={"image": ("a.png", image)}, headers=auth(INFER))
    assert ok.status_code == 200, ok.text
    typo = pose_client.post(
        "/v1/pose", files={"image": ("a.png", image)}, data={"bbox": "[[1, 2, 3, 4]]"}, headers=auth(INFER)
    )
    assert typo.status_code == 422 and typo.json()["error"]["code"] == "unknown_field" and "bbox" in typo.text
    two = pose_client.post(
        "/v1/pose", files=[("image", ("a.png", image)), ("image", ("b.png", image))], headers=auth(INFER)
    )
    assert two.status_code == 422 and two.json()["error"]["code"] == "too_many_images"
    body = pose_client.post("/v1/pose", json={"image": "aGk=", "boxs": []}, headers=auth(INFER))
    assert body.status_code == 422 and "boxs" in body.json()["error"]["message"]
    tiny = pose_client.post(
        "/v1/pose", files={"image": ("a.png", image)}, data={"boxes": "[[0, 0, 1e-300, 1e-300]]"}, headers=auth(INFER)
    )
    assert tiny.status_code == 422 and tiny.json()["error"]["code"] == "box_too_small"
