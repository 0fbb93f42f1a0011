"""Active learning over a real uvicorn server: GET /v1/unlabeled/export picks the uploads the served model was
least confident on (ingest checks), pre-annotates them, and `poseloop export-labeling` writes them as a COCO +
Label Studio task; the corrected COCO JSON goes back through POST /v1/labeled and the next export leaves them out."""

from __future__ import annotations

import hashlib
import json
import secrets

import httpx
import pytest
from typer.testing import CliRunner

from continual.uploads import UploadStore
from models.registry import ModelRegistry
from poseloop.cli import app as cli_app
from poseloop.worker.checks import check_pending
from serving.app import create_app
from tests.serving_fixtures import api_settings, auth, encode, sample_image, thread_server, tiny_pose_onnx

OPS, UPLOAD = secrets.token_urlsafe(16), secrets.token_urlsafe(16)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("active_learning")
    settings = api_settings(root, {OPS: ["ops"], UPLOAD: ["upload"]})
    registry = ModelRegistry(settings.registry.dir)
    info = registry.register(tiny_pose_onnx(root / "m.onnx"), actor="test")
    registry.set_active(info.version, "test")
    with thread_server(create_app(settings)) as base, httpx.Client(base_url=base, timeout=60) as client:
        yield base, client, settings, registry


def upload(client, count: int, seed0: int) -> list[str]:
    files = [("files", (f"u{seed0 + i}.png", encode(sample_image(seed0 + i, (96, 72)), ".png"))) for i in range(count)]
    boxes = json.dumps({f"u{seed0}.png": [[-10, 5, 60, 60]]})  # partly outside: the task clips it to the image
    r = client.post("/v1/unlabeled", files=files, data={"boxes": boxes}, headers=auth(UPLOAD))
    assert r.status_code == 200, r.text
    return [item["id"] for item in r.json()["accepted"]]


def test_export_needs_checked_uploads_and_the_ops_role(live) -> None:
    _base, client, _settings, _registry = live
    r = client.get("/v1/unlabeled/export", params={"n": 2}, headers=auth(OPS))
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_candidates"  # nothing checked yet
    assert client.get("/v1/unlabeled/export", headers=auth(UPLOAD)).status_code == 403
    r = client.get("/v1/unlabeled/export", params={"strategy": "disagreement"}, headers=auth(OPS))
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_candidates"
    assert "disagreement" in r.json()["error"]["message"]
    r = client.get("/v1/unlabeled/export", params={"strategy": "random"}, headers=auth(OPS))
    assert r.status_code == 422 and "strategy" in r.json()["error"]["message"]


def test_export_labeling_round_trip_through_post_labeled(live, tmp_path) -> None:
    base, client, settings, registry = live
    ids = upload(client, 5, seed0=10)
    store = UploadStore(settings.loop.data_dir / "uploads")
    assert check_pending(store, registry) >= 5  # the ingest checks: thumbnails and the model's confidence
    confidence = {item["sha256"]: item["teacher_confidence"] for item in store.items()}

    out = tmp_path / "task"
    result = CliRunner().invoke(
        cli_app, ["export-labeling", "--url", base, "--token", OPS, "--n", "3", "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["count"] == 3
    coco = json.loads((out / "annotations.json").read_text())
    chosen = [image["file_name"].split(".")[0] for image in coco["images"]]
    least_sure = sorted(ids, key=lambda sha: (confidence[sha], ids.index(sha)))[:3]
    assert chosen == least_sure  # lowest confidence first
    for name in chosen:  # the images came along, byte for byte
        assert hashlib.sha256((out / "images" / f"{name}.png").read_bytes()).hexdigest() == name
    assert coco["categories"][0]["keypoints"][0] == "right_ankle" and coco["annotations"]
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and x + w <= 96 and y + h <= 72  # inside its image, as POST /v1/labeled needs
    tasks = json.loads((out / "label_studio_tasks.json").read_text())
    assert len(tasks) == 3 and tasks[0]["data"]["image"].startswith("/data/local-files/?d=images/")
    points = [r for r in tasks[0]["predictions"][0]["result"] if r["type"] == "keypointlabels"]
    assert all(0 <= p["value"]["x"] <= 100 and 0 <= p["value"]["y"] <= 100 for p in points)
    assert all(
        p["parentID"] == "p0" and p["value"]["keypointlabels"][0] in coco["categories"][0]["keypoints"]
        for p in points
        if p["id"].startswith("p0_")
    )
    assert '<KeyPointLabels name="keypoints"' in (out / "label_config.xml").read_text()

    for ann in coco["annotations"]:  # the annotator labels every joint (here: at the box centre)
        x, y, w, h = ann["bbox"]
        ann["keypoints"] = [round(x + w / 2, 1), round(y + h / 2, 1), 2] * 14
    files = [("files", (p.name, p.read_bytes())) for p in sorted((out / "images").iterdir())]
    files.append(("annotations", ("annotations.json", json.dumps(coco).encode())))
    r = client.post("/v1/labeled", files=files, headers=auth(OPS))
    assert r.status_code == 200, r.text
    assert {item["id"] for item in r.json()["accepted"]} == set(chosen)
    again = client.get("/v1/unlabeled/export", params={"n": 5}, headers=auth(OPS)).json()
    assert {item["sha256"] for item in again["items"]} == set(ids) - set(chosen)  # labeled ones are left out


def test_disagreement_export_ranks_by_the_recorded_flip_gap(live) -> None:
    """strategy=disagreement: the uploads whose keypoints moved most between the image and its mirror (recorded
    by the ingest check) come first; an upload checked before the column existed (NULL) is no candidate."""
    _base, client, settings, registry = live
    ids = upload(client, 4, seed0=40)
    store = UploadStore(settings.loop.data_dir / "uploads")
    check_pending(store, registry)
    gaps = {item["sha256"]: item["disagreement"] for item in store.items() if item["sha256"] in ids}
    assert all(gap is not None and gap >= 0 for gap in gaps.values()) and len(set(gaps.values())) > 1
    legacy = ids[0]  # as an index from before the column: the check stays, its disagreement is unknown
    item = next(i for i in store.items() if i["sha256"] == legacy)
    store.record_check(legacy, store.thumbnail_path(legacy), "1", item["teacher_confidence"], 1, None)
    r = client.get("/v1/unlabeled/export", params={"n": 50, "strategy": "disagreement"}, headers=auth(OPS))
    assert r.status_code == 200, r.text
    body = r.json()
    order = [i["sha256"] for i in body["items"] if i["sha256"] in ids]
    assert order == sorted(ids[1:], key=lambda sha: -gaps[sha]) and body["strategy"] == "disagreement"
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)
