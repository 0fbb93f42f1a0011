"""Reliability of the loop with a real Redis (AOF) and real Celery worker processes, on real LSP/LSPET data."""

import json

import httpx
import pytest

from continual.jobs import JobStore
from continual.queue import JobQueue
from continual.schedule import tick
from continual.settings import load_settings
from continual.uploads import UploadStore
from tests.loop_fixtures import RETRAIN_OVERRIDES, install_active, lspet_images, upload_lspet
from tests.redis_fixtures import CeleryWorker, loop_env
from tests.serving_fixtures import auth, free_port, process_server, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def stack(tmp_path, small_model, redis_server, data_root, monkeypatch):
    env = loop_env(tmp_path, redis_server.url)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    registry = install_active(settings.registry.dir, *small_model)
    uploads = UploadStore(settings.loop.data_dir / "uploads")
    upload_lspet(uploads, data_root, 12)
    workers: list[CeleryWorker] = []

    def start_worker(**extra_env: str) -> CeleryWorker:
        workers.append(CeleryWorker({**env, **extra_env}, tmp_path / "worker.log").start())
        return workers[-1]

    yield settings, registry, uploads, JobQueue(settings), start_worker, env
    for w in workers:
        w.stop()


def _final(jobs: JobStore, job_id: str, timeout: float = 400):
    return wait_for(
        lambda: (j := jobs.get(job_id)).state in ("succeeded", "failed", "cancelled") and j,
        timeout,
        f"job {job_id} to finish",
    )


def test_kill_9_of_the_training_worker_mid_job_resumes(stack):
    settings, registry, _, queue, start_worker, _ = stack
    parent = registry.active()
    job, _ = queue.submit_retrain({"iterations": 8, "overrides": RETRAIN_OVERRIDES, "margin": -100.0}, "ops")
    first = start_worker()
    wait_for(lambda: queue.jobs.get(job.id).progress.get("step", 0) >= 2, 300, "training to pass step 2")
    first.kill9()
    # nothing half-written became visible, and the active version is untouched
    assert [v.version for v in registry.list()] == [parent.version] and registry.active().version == parent.version
    visible = sorted(p.name for p in registry.versions_dir.iterdir())
    assert visible == [parent.version]
    start_worker()
    # Redis redelivers the unacked message by itself, but only when kombu next restores unacked messages (~100 s
    # observed); the scheduler's sweep (celery beat, every retrain_check_s) re-sends it once the lease expired
    wait_for(lambda: job.id in [j.id for j in queue.jobs.orphans(3600)], 60, "the dead worker's lease to expire")
    assert job.id in tick(queue, registry, UploadStore(settings.loop.data_dir / "uploads"))["resent"]
    done = _final(queue.jobs, job.id)
    assert done.state == "succeeded", done.error
    assert done.attempts >= 2 and any("resuming" in line for line in queue.jobs.logs(job.id, 200))
    assert done.result["training"]["steps"] == 8
    assert done.result["gate"]["decision"] == "promoted" and registry.active().version != parent.version
    # the second attempt continued from a checkpoint (≥ step 2) instead of starting again at step 1
    firsts = [int(line.rsplit(":", 1)[1]) for line in queue.jobs.logs(job.id, 200) if "first logged" in line]
    assert len(firsts) >= 2 and firsts[0] == 1 and min(firsts[1:]) > 2


def test_redis_restart_loses_no_job_and_no_upload(stack, redis_server, data_root):
    _settings, registry, uploads, queue, start_worker, _ = stack
    # 1. a job queued in Redis survives a restart (AOF) and runs once a worker comes
    job, _ = queue.submit_retrain({"iterations": 3, "overrides": RETRAIN_OVERRIDES, "margin": 100.0}, "ops")
    redis_server.stop()
    redis_server.start()
    worker = start_worker()
    assert _final(queue.jobs, job.id).state == "succeeded"
    worker.stop()
    # 2. with Redis down, a retrain request is still accepted (row first) and uploads still land on disk
    redis_server.stop()
    before = uploads.max_seq()
    later = lspet_images(data_root, 20)[12:]
    for path in later:
        uploads.add(path.read_bytes(), path.name, None, "test", "uploader")
    second, created = queue.submit_retrain({"iterations": 3, "overrides": RETRAIN_OVERRIDES}, "ops")
    assert created and queue.jobs.get(second.id).state == "queued" and len(queue.outbox) == 1
    redis_server.start()
    assert uploads.max_seq() == before + len(later)
    start_worker()
    # 3. the job whose message never reached Redis is sent from the outbox as soon as Redis is back (no sweep)
    wait_for(lambda: len(queue.outbox) == 0, 60, "the outbox to send the job")
    assert _final(queue.jobs, second.id).state == "succeeded"
    assert tick(queue, registry, uploads)["resent"] == []  # nothing left for the orphan sweep


def test_end_to_end_upload_retrain_gate_hot_swap_over_http(stack, data_root, tmp_path):
    _settings, _registry, _, _, start_worker, env = stack
    tokens = {
        "u" * 20: {"roles": ["upload"], "name": "uploader"},
        "o" * 20: {"roles": ["ops"], "name": "ops"},
        "i" * 20: {"roles": ["infer"], "name": "client"},
    }
    metrics_port = free_port()
    start_worker(POSELOOP_WORKER_METRICS_PORT=str(metrics_port))
    with process_server({**env, "POSELOOP_TOKENS": json.dumps(tokens), "POSELOOP_REGISTRY_POLL_S": "0.5"}) as (base, _):
        files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in lspet_images(data_root, 16)[12:]]
        up = httpx.post(f"{base}/v1/unlabeled", files=files, headers=auth("u" * 20), timeout=60)
        assert up.status_code == 200 and len(up.json()["accepted"]) == 4
        body = {"iterations": 4, "overrides": RETRAIN_OVERRIDES, "margin": -100.0}
        first = httpx.post(f"{base}/v1/ops/retrain", json=body, headers={**auth("o" * 20), "Idempotency-Key": "a"})
        again = httpx.post(f"{base}/v1/ops/retrain", json=body, headers=auth("o" * 20))
        assert first.status_code == 202 and again.status_code == 200
        job_id = first.json()["job"]["id"]
        assert again.json()["job"]["id"] == job_id and first.json()["queue"] == "celery"

        def finished():
            j = httpx.get(f"{base}/v1/ops/jobs/{job_id}", headers=auth("o" * 20)).json()
            return j if j["state"] in ("succeeded", "failed", "cancelled") else None

        job = wait_for(finished, 400, "the retrain job", every=1.0)
        assert job["state"] == "succeeded" and job["result"]["gate"]["decision"] == "promoted", job
        assert job["result"]["plan"]["unlabeled_seq"] == 16 and job["logs_tail"]
        new = job["result"]["candidate"]["version"]
        image = lspet_images(data_root, 1)[0].read_bytes()

        def served_version():
            r = httpx.post(f"{base}/v1/pose", files={"image": ("a.jpg", image, "image/jpeg")}, headers=auth("i" * 20))
            return r.headers.get("X-Model-Version") == new and r

        wait_for(served_version, 30, "the API to serve the promoted version")
        back = httpx.post(f"{base}/v1/ops/rollback", json={}, headers=auth("o" * 20))
        assert back.status_code == 200 and back.json()["active"] != new
        events = httpx.get(f"{base}/v1/ops/events", headers=auth("o" * 20)).json()["events"]
        assert [e["actor"] for e in events if e["action"] == "promote"][-1] == f"job:{job_id}"
        assert events[-2]["action"] == "rollback" and events[-2]["actor"] == "ops"
        # the upload also queued ingest checks on the `ingest` queue: every image got a thumbnail and a confidence
        stats = wait_for(
            lambda: (
                (st := httpx.get(f"{base}/v1/unlabeled/stats", headers=auth("u" * 20)).json())["checked"] == 16 and st
            ),
            60,
            "ingest checks",
        )
        assert 0 < stats["mean_teacher_confidence"] <= 1.5
    # the worker's own /metrics: two chunks (3 + 1 of the 4 steps), the job it finished, the 16 ingest checks
    series = worker_series(metrics_port)
    assert series[("poseloop_worker_job_chunks_total", (("outcome", "paused"),))] >= 1
    assert series[("poseloop_worker_job_chunks_total", (("outcome", "finished"),))] == 1
    assert series[("poseloop_worker_jobs_finished_total", (("state", "succeeded"),))] == 1
    assert series[("poseloop_worker_train_steps_total", ())] == 4
    assert series[("poseloop_worker_ingest_checked_total", ())] == 16
    assert series[("poseloop_worker_busy", ())] == 0 and series[("process_cpu_seconds_total", ())] > 0
    assert not any(name.endswith("_created") for name, _ in series)


def worker_series(port: int) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a worker's /metrics (the info series keyed without labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = () if sample.name.endswith("_info") else tuple(sorted(sample.labels.items()))
            series[(sample.name, labels)] = sample.value
    return series
