"""GET /v1/models/{version}/render over a live server: an upload drawn with the poses of any version on disk
(before/after previews for the console), without touching what serves or what the serving backend holds."""

from __future__ import annotations

import json
import secrets

import cv2
import httpx
import numpy as np
import pytest

from models.registry import ModelRegistry
from serving.app import create_app
from serving.previews import PREVIEW_SIDE
from tests.serving_fixtures import api_settings, auth, encode, sample_image, thread_server, tiny_pose_onnx

OPS, UPLOAD = secrets.token_urlsafe(16), secrets.token_urlsafe(16)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("previews")
    settings = api_settings(root, {OPS: ["ops"], UPLOAD: ["upload"]})
    registry = ModelRegistry(settings.registry.dir)
    versions = [registry.register(tiny_pose_onnx(root / f"m{s}.onnx", seed=s), actor="t").version for s in (0, 1)]
    registry.set_active(versions[0], "t")
    with thread_server(create_app(settings)) as base, httpx.Client(base_url=base, timeout=60) as client:
        files = [
            ("files", ("big.png", encode(sample_image(1, (1280, 960)), ".png"))),
            ("files", ("small.png", encode(sample_image(2, (200, 150)), ".png"))),
        ]
        boxes = json.dumps({"small.png": [[20, 10, 80, 120]]})
        r = client.post("/v1/unlabeled", files=files, data={"boxes": boxes}, headers=auth(UPLOAD))
        assert r.status_code == 200, r.text
        shas = [item["id"] for item in r.json()["accepted"]]
        yield client, registry, versions, shas


def _render(client, version: str, sha: str, token: str = OPS) -> httpx.Response:
    return client.get(f"/v1/models/{version}/render", params={"upload": sha}, headers=auth(token))


def test_each_version_draws_its_own_poses_on_the_upload(live) -> None:
    client, _registry, (first, second), (big, small) = live
    before, after = _render(client, first, big), _render(client, second, big)
    assert before.status_code == after.status_code == 200, before.text + after.text
    assert before.headers["content-type"] == "image/jpeg" and after.headers["x-model-version"] == second
    a = cv2.imdecode(np.frombuffer(before.content, np.uint8), cv2.IMREAD_COLOR)
    b = cv2.imdecode(np.frombuffer(after.content, np.uint8), cv2.IMREAD_COLOR)
    assert a.shape == b.shape == (PREVIEW_SIDE * 3 // 4, PREVIEW_SIDE, 3)  # 1280×960 downscaled for the page
    assert np.abs(a.astype(int) - b.astype(int)).max() > 100  # different models, different skeletons
    small_render = _render(client, second, small)
    assert small_render.status_code == 200
    assert cv2.imdecode(np.frombuffer(small_render.content, np.uint8), cv2.IMREAD_COLOR).shape == (150, 200, 3)
    listing = client.get("/v1/models", headers=auth(OPS)).json()
    assert listing["serving"] == first and listing["active"] == first  # a preview changes nothing that serves
    assert [v["version"] for v in listing["versions"] if v["loaded"]] == [first]


def test_preview_errors_name_the_problem(live) -> None:
    client, registry, (first, _second), (big, _small) = live
    assert _render(client, first, big, UPLOAD).status_code == 403  # the image is an upload: role ops
    r = _render(client, "99", big)
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_version"
    r = _render(client, first, "0" * 64)
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_upload"
    r = client.get(f"/v1/models/{first}/render", params={"upload": "not-a-sha"}, headers=auth(OPS))
    assert r.status_code == 422 and "upload" in r.json()["error"]["message"]
    assert client.get(f"/v1/models/{first}/render", headers=auth(OPS)).status_code == 422  # no upload named
    broken = registry.register(tiny_pose_onnx(registry.root.parent / "broken.onnx"), actor="t").version
    registry.get(broken).onnx_path.write_bytes(b"not an onnx file")
    r = _render(client, broken, big)
    assert r.status_code == 422 and r.json()["error"]["code"] == "load_failed"
