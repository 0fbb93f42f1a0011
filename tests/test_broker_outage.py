"""Broker outages with a real redis-server stopped (or hung with SIGSTOP) and restarted, against the real API
process: uploads never wait on the broker, /readyz reports it, and the messages that could not be sent (retrain
jobs, ingest checks) reach Redis as soon as it is back — no scheduler sweep, no restart of anything."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import httpx
import pytest
import redis

from continual.jobs import JobStore
from continual.queue import JobQueue
from continual.settings import load_settings
from continual.uploads import UploadStore
from poseloop.serve import serve_in_subprocess
from tests.redis_fixtures import loop_env
from tests.serving_fixtures import auth, encode, sample_image, tiny_pose_onnx, wait_for

UPLOAD, OPS = "u" * 24, "o" * 24
FAST_BROKER = {"POSELOOP_BROKER_TIMEOUT_S": "2", "POSELOOP_BROKER_RETRY_S": "0.5"}


@pytest.fixture
def api(tmp_path, redis_server):
    env = loop_env(tmp_path, redis_server.url, **FAST_BROKER)
    env["POSELOOP_BOOTSTRAP_MODEL"] = str(tiny_pose_onnx(tmp_path / "m.onnx"))  # registered, promoted at start
    env["POSELOOP_TOKENS"] = json.dumps({UPLOAD: ["upload"], OPS: ["ops"]})
    log = tmp_path / "api.log"
    with (
        serve_in_subprocess({**env, "OMP_NUM_THREADS": "1"}, log_path=log) as (base, _proc),
        httpx.Client(base_url=base, timeout=20) as client,  # the deadline: an upload used to take 19 s
    ):
        yield client, redis.Redis.from_url(redis_server.url), env, log


def upload(client: httpx.Client, seed: int) -> httpx.Response:
    return client.post(
        "/v1/unlabeled", files=[("files", (f"{seed}.png", encode(sample_image(seed))))], headers=auth(UPLOAD)
    )


def readiness(client: httpx.Client) -> dict:
    r = client.get("/readyz")
    assert r.status_code == 200, r.text  # inference works without the broker: never taken out of the LB
    return r.json()


def test_redis_down_uploads_and_retrains_answer_then_are_dispatched_when_it_returns(api, redis_server) -> None:
    client, broker, env, log = api
    assert upload(client, 1).status_code == 200 and broker.llen("ingest") == 1
    wait_for(lambda: readiness(client)["broker"]["reachable"] is True, 30, "/readyz to see the broker")
    broker.delete("ingest")

    redis_server.stop()
    down = wait_for(lambda: (r := readiness(client))["broker"]["reachable"] is False and r, 30, "the outage")
    assert down["status"] == "degraded" and down["broker"]["error"]
    for seed in (2, 3):  # stored at once; their ingest checks wait in the outbox
        r = upload(client, seed)
        assert r.status_code == 200 and r.json()["counts"]["accepted"] == 1
    r = client.post("/v1/ops/retrain", json={"iterations": 3}, headers=auth(OPS))
    assert r.status_code == 202, r.text
    job_id = r.json()["job"]["id"]
    assert UploadStore(env_path(env, "uploads")).max_seq() == 3
    assert readiness(client)["broker"]["undelivered"] == 2  # the job's message and one ingest check

    redis_server.start()  # same port and AOF dir; nobody restarts the API and no scheduler runs
    wait_for(lambda: broker.llen("train") == 1 and broker.llen("ingest") == 1, 30, "the waiting messages")
    assert job_id.encode() in broker.lindex("train", 0)
    back = wait_for(lambda: (r := readiness(client))["status"] == "ready" and r, 30, "/readyz to recover")
    assert back["broker"] == {**back["broker"], "reachable": True, "undelivered": 0}
    assert upload(client, 4).status_code == 200 and broker.llen("ingest") == 2  # the same process sends again
    assert "must be restarted" not in log.read_text()
    assert JobStore(env_path(env, "jobs.db")).get(job_id).state == "queued"  # waiting for a worker, not lost


def test_hung_redis_does_not_hang_uploads(api, redis_server) -> None:
    client, broker, _env, _log = api
    assert upload(client, 10).status_code == 200
    broker.delete("ingest")
    os.kill(redis_server.proc.pid, signal.SIGSTOP)  # accepts connections, never answers
    try:
        for seed in (11, 12):
            r = upload(client, seed)  # bounded by broker_timeout_s (2 s), not forever
            assert r.status_code == 200 and r.json()["counts"]["accepted"] == 1
        assert readiness(client)["status"] in ("ready", "degraded")  # answers, whatever the last ping found
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    wait_for(lambda: readiness(client)["broker"]["undelivered"] == 0, 30, "the outbox to drain")
    assert broker.llen("ingest") >= 1


def test_a_job_cancelled_during_the_outage_is_not_sent(tmp_path, redis_server, monkeypatch) -> None:
    for key, value in loop_env(tmp_path, redis_server.url, **FAST_BROKER).items():
        monkeypatch.setenv(key, value)
    queue = JobQueue(load_settings())
    redis_server.stop()
    cancelled, created = queue.submit_retrain({"iterations": 3}, "ops")
    kept, _ = queue.jobs.submit("retrain", "other-model", {}, "ops")
    assert created and not queue.dispatch(kept.id) and len(queue.outbox) == 2
    queue.jobs.request_cancel(cancelled.id, "ops")
    redis_server.start()
    wait_for(lambda: len(queue.outbox) == 0, 30, "the outbox to drain")
    messages = redis.Redis.from_url(redis_server.url).lrange("train", 0, -1)
    assert len(messages) == 1 and kept.id.encode() in messages[0]


def env_path(env: dict[str, str], name: str) -> Path:
    return Path(env["POSELOOP_DATA_DIR"]) / name
