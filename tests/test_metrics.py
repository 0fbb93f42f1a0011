"""/metrics: the loop's state (jobs, gate decisions with their figures, pool, queue) read at scrape time, the
keypoint-confidence histogram per version, route templates for the docs pages, and no `_created` series."""

import re

import pytest
from fastapi.testclient import TestClient

from continual.queue import JobQueue
from continual.settings import Settings
from continual.uploads import UploadStore
from models.registry import ModelRegistry
from serving.app import create_app
from tests.serving_fixtures import auth, encode, sample_image, tiny_pose_onnx

INFER, OPS = "metrics-test-infer-token", "metrics-test-ops-token"
GATE = {
    "decision": "promoted",
    "gain": 1.5,
    "ci_low": 0.7,
    "ci_high": 2.3,
    "candidate_value": 68.0,
    "active_value": 66.5,
    "metric": "pck_limbs",
    "persons": 200,
    "margin": 0.5,
}


def value(text: str, series: str) -> float:
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    assert match, f"{series} not in /metrics"
    return float(match.group(1))


@pytest.fixture
def app_and_settings(tmp_path):
    registry = ModelRegistry(tmp_path / "registry")
    registry.set_active(registry.register(tiny_pose_onnx(tmp_path / "a.onnx"), actor="test").version, "test")
    settings = Settings(
        registry_dir=registry.root,
        data_dir=tmp_path / "data",
        registry_poll_s=0,
        ort_threads=1,
        detector_path="",
        tokens={INFER: ["infer"], OPS: ["ops"]},
    )
    return create_app(settings), settings


def test_the_loop_state_is_scraped_from_its_stores(app_and_settings) -> None:
    app, settings = app_and_settings
    with TestClient(app) as client:
        before = client.get("/metrics").text
        assert value(before, "poseloop_loop_metrics_up") == 1
        assert value(before, 'poseloop_jobs{state="queued"}') == 0
        assert "poseloop_last_gate{" not in before  # no gate has decided yet

        queue = JobQueue(settings)
        done, _ = queue.submit_retrain({"iterations": 2}, "ops")
        queue.jobs.claim("w", 30, done.id)
        queue.jobs.finish(done.id, "w", "succeeded", result={"gate": GATE})
        assert queue.submit_retrain({"iterations": 3}, "ops")[1]  # a new job, waiting for a worker
        UploadStore(settings.loop.data_dir / "uploads").add(encode(sample_image()), "a.png", None, "test", "test")

        text = client.get("/metrics").text
        assert value(text, 'poseloop_jobs{state="succeeded"}') == 1
        assert value(text, 'poseloop_jobs{state="queued"}') == 1 == value(text, "poseloop_queue_depth")
        assert value(text, 'poseloop_gate_decisions{decision="promoted"}') == 1
        assert value(text, 'poseloop_gate_decisions{decision="rejected"}') == 0
        assert value(text, 'poseloop_last_gate{figure="gain"}') == 1.5
        assert value(text, 'poseloop_last_gate{figure="ci_low"}') == 0.7
        assert value(text, "poseloop_unlabeled_images") == 1 and value(text, "poseloop_unlabeled_bytes") > 0
        assert "_created" not in text


def test_confidence_histogram_and_route_templates(app_and_settings) -> None:
    app, _ = app_and_settings
    with TestClient(app) as client:
        image = encode(sample_image())
        assert client.post("/v1/pose", files={"image": ("x.png", image)}, headers=auth(INFER)).status_code == 200
        assert client.get("/docs").status_code == 200 and client.get("/openapi.json").status_code == 200
        text = client.get("/metrics").text
    count = value(text, 'poseloop_keypoint_confidence_count{model_version="1"}')
    assert count == 14  # one person (the whole image: the detector is off), 14 LSP keypoints
    assert 'route="/docs"' in text and 'route="/openapi.json"' in text
    assert 'route="unmatched"' not in text
