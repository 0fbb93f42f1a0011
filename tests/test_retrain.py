"""The retrain job on real data (embedded worker path): plan → baseline → continual training → export with
parity → register → gate; chunked resumption, cancel, and the gate's refusals (margin, pin, rollback meanwhile)."""

import json
import threading
import time
from pathlib import Path

import pytest

from continual.queue import JobQueue
from continual.runner import context, work_once
from continual.uploads import UploadStore
from tests.loop_fixtures import RETRAIN_OVERRIDES, install_active, loop_settings, upload_lspet


@pytest.fixture
def loop(tmp_path, small_model, data_root):
    settings = loop_settings(tmp_path)
    registry = install_active(settings.registry.dir, *small_model)
    upload_lspet(UploadStore(settings.loop.data_dir / "uploads"), data_root, 12)
    return settings, registry, JobQueue(settings), context(settings, "test-worker")


def _submit(queue, iterations=6, **params):
    job, created = queue.submit_retrain({"iterations": iterations, "overrides": RETRAIN_OVERRIDES, **params}, "ops")
    assert created
    return job


def test_retrain_promotes_a_candidate_that_passes_the_gate(loop):
    _settings, registry, queue, ctx = loop
    parent = registry.active().version
    job = _submit(queue, margin=-100.0)  # any non-collapsed candidate passes
    outcome, done = work_once(ctx)
    assert outcome == "finished" and done.state == "succeeded", done.error
    r = done.result
    assert r["plan"]["parent"] == parent and r["plan"]["unlabeled_seq"] == 12
    assert r["training"]["unlabeled_persons"] == 12 and r["training"]["steps"] == 6
    assert 0 <= r["active_metric"]["value"] <= 100 and r["active_metric"]["metric"] == "pck_limbs"
    assert r["candidate"]["parity_max_px"] < 0.5
    assert r["gate"]["decision"] == "promoted"
    active = registry.active()
    assert active.version == r["candidate"]["version"] != parent
    assert active.parent == parent and active.meta["data_summary"]["job_id"] == job.id
    assert active.checkpoint_path.exists()  # the next retrain can start from it
    import torch

    stored = torch.load(active.checkpoint_path, map_location="cpu", weights_only=True)
    assert stored["weights_storage"] == "float16"  # stored like the bundled model
    assert all(v.dtype == torch.float16 for v in stored["model"].values() if v.is_floating_point())
    run_dir = Path(r["training"]["run_dir"])
    assert not (run_dir / "last.pt").exists() and r["candidate"]["freed_bytes"] > 0  # the job dir is not kept fat
    assert (run_dir / "metrics.jsonl").exists()
    assert done.progress["step"] == 6 and "loss_sup" in done.progress
    labels = r["pseudo_labels"]  # the default recipe: the teacher labelled the 12 uploads once
    assert r["plan"]["recipe"] == "distill" and labels["teacher"][0]["kind"] == "movenet"
    assert labels["counts"]["persons"] == 12 and 0 < labels["counts"]["persons_kept"] <= 12
    assert labels["calibration"]["precision"] >= 0.9 and labels["calibration"]["dev_records"] == 32
    assert active.meta["data_summary"]["recipe"] == "distill"
    trained = json.loads((run_dir / "config.json").read_text())["data"]
    assert trained["pseudo_share"] == 0.5 and trained["pseudo_labels"] == labels["path"]  # the 1:1 recipe
    assert any("gate: promoted" in line for line in queue.jobs.logs(job.id))


def test_gate_rejects_a_candidate_below_the_margin(loop):
    _, registry, queue, ctx = loop
    parent = registry.active().version
    _submit(queue, iterations=2, margin=100.0)
    _, done = work_once(ctx)
    gate = done.result["gate"]
    assert done.state == "succeeded" and gate["decision"] == "rejected" and "margin 100.0" in gate["reason"]
    assert registry.get(gate["candidate"]).state == "rejected" and registry.active().version == parent


def test_chunks_resume_from_the_checkpoint_and_pin_blocks_promotion(loop):
    _, registry, queue, ctx = loop
    parent = registry.active().version
    job = _submit(queue, iterations=6, margin=-100.0)
    assert work_once(ctx, chunk_steps=4)[0] == "paused"
    mid = queue.jobs.get(job.id)
    assert mid.state == "running" and mid.progress["step"] == 4 and "candidate" not in mid.result
    registry.set_pinned(True, "ops", "freeze for the demo")
    outcome, done = work_once(ctx, chunk_steps=4)  # another worker could take it: the lease was released
    assert outcome == "finished" and done.attempts == 2 and done.result["training"]["steps"] == 6
    assert done.result["gate"]["decision"] == "kept" and "pinned" in done.result["gate"]["reason"]
    assert registry.active().version == parent
    assert registry.get(done.result["gate"]["candidate"]).state == "candidate"
    assert "pin" in [e["action"] for e in registry.events()]


def test_rollback_while_a_job_runs_is_never_overridden_by_the_gate(loop, small_model):
    _, registry, queue, ctx = loop
    first = registry.active().version
    second = registry.register(small_model[0], checkpoint_path=small_model[1], actor="test").version
    registry.set_active(second, "ops")
    job = _submit(queue, iterations=4, margin=-100.0)
    assert work_once(ctx, chunk_steps=2)[0] == "paused"  # planned against `second`
    registry.set_active(first, "ops", action="rollback")
    _, done = work_once(ctx, chunk_steps=10)
    gate = done.result["gate"]
    assert gate["decision"] == "kept" and "changed" in gate["reason"] and registry.active().version == first
    assert done.result["plan"]["parent"] == second and job.id == done.id


def test_cancel_stops_a_running_job(loop):
    _, registry, queue, ctx = loop
    job = _submit(queue, iterations=400)
    outcome: list = []
    worker = threading.Thread(target=lambda: outcome.append(work_once(ctx)))
    worker.start()
    deadline = time.time() + 120
    while queue.jobs.get(job.id).progress.get("step", 0) < 1 and time.time() < deadline:
        time.sleep(0.2)
    assert queue.jobs.get(job.id).state == "running"
    queue.jobs.request_cancel(job.id, "ops")
    worker.join(60)
    assert not worker.is_alive() and outcome[0][0] == "finished"
    done = queue.jobs.get(job.id)
    assert done.state == "cancelled" and done.progress["step"] < 400
    assert len(registry.list()) == 1  # nothing was registered


def test_cancel_of_a_paused_job_needs_no_worker(loop):
    _, _, queue, ctx = loop
    job = _submit(queue, iterations=6)
    assert work_once(ctx, chunk_steps=2)[0] == "paused"
    queue.jobs.request_cancel(job.id, "ops")
    assert work_once(ctx)[0] == "idle" and queue.jobs.get(job.id).state == "cancelled"


def test_empty_pool_fails_visibly(tmp_path, small_model):
    settings = loop_settings(tmp_path)
    install_active(settings.registry.dir, *small_model)
    _job, _ = JobQueue(settings).submit_retrain({"iterations": 2}, "ops")
    _, done = work_once(context(settings, "w"))
    assert done.state == "failed" and "pool is empty" in done.error


def test_retrain_on_two_ddp_processes_resumes_across_chunks(tmp_path, small_model, data_root):
    """train_nproc=2: each chunk runs under torchrun (gloo here, NCCL on GPUs); heartbeats come from rank 0's
    metrics, the second chunk resumes from the first chunk's checkpoint, and the candidate goes through the gate."""
    settings = loop_settings(tmp_path)
    registry = install_active(settings.registry.dir, *small_model)
    upload_lspet(UploadStore(settings.loop.data_dir / "uploads"), data_root, 8)
    queue, ctx = JobQueue(settings), context(settings, "ddp-worker")
    job = _submit(queue, iterations=4, margin=-100.0, nproc=2)  # per job; POSELOOP_TRAIN_NPROC sets the default
    assert work_once(ctx, chunk_steps=2)[0] == "paused"
    mid = queue.jobs.get(job.id)
    assert mid.progress["step"] == 2 and mid.result["plan"]["nproc"] == 2
    outcome, done = work_once(ctx, chunk_steps=2)
    assert outcome == "finished" and done.state == "succeeded", done.error
    assert done.result["training"]["steps"] == 4 and done.progress["step"] == 4
    assert any("first logged training step of this attempt: 3" in line for line in queue.jobs.logs(job.id))
    assert registry.active().version == done.result["candidate"]["version"]


def _loop_with(tmp_path, small_model, data_root, **settings_overrides):
    settings = loop_settings(tmp_path, **settings_overrides)
    registry = install_active(settings.registry.dir, *small_model)
    upload_lspet(UploadStore(settings.loop.data_dir / "uploads"), data_root, 12)
    return registry, JobQueue(settings), context(settings, "test-worker")


def test_self_distillation_labels_once_per_snapshot(tmp_path, small_model, data_root):
    """retrain.teacher=self: the active version (its checkpoint, with TTA) is the teacher; a second job on the same
    snapshot finds the labels in the cache instead of running the teacher again."""
    cache = tmp_path / "labels"  # not the session's shared cache, so the first job must label
    # the 40-step test model is a weak teacher (how weak depends on the CPU it trained on: under 10 % PCK on an
    # AVX2 AMD box): a 1 % precision target keeps its labels wherever it runs
    _registry, queue, ctx = _loop_with(
        tmp_path,
        small_model,
        data_root,
        retrain_teacher="self",
        retrain_distill_precision=0.01,
        retrain_pseudo_label_dir=cache,
    )
    first = _submit(queue, iterations=2, margin=100.0)
    _, done = work_once(ctx)
    assert done.state == "succeeded", done.error
    labels = done.result["pseudo_labels"]
    assert labels["teacher"][0]["kind"] == "checkpoint" and not labels["reused"]
    assert Path(labels["path"]).is_relative_to(cache)
    second = _submit(queue, iterations=2, margin=100.0)
    assert second.id != first.id
    _, again = work_once(ctx)
    assert again.state == "succeeded", again.error
    assert again.result["pseudo_labels"]["reused"] and again.result["pseudo_labels"]["path"] == labels["path"]
    assert any("pseudo-labels (cached)" in line for line in queue.jobs.logs(second.id))


def test_consistency_recipe_trains_with_its_method(tmp_path, small_model, data_root):
    _, queue, ctx = _loop_with(tmp_path, small_model, data_root, retrain_recipe="consistency")
    _submit(queue, iterations=2, margin=100.0)
    _, done = work_once(ctx)
    assert done.state == "succeeded", done.error
    assert done.result["plan"]["recipe"] == "consistency" and "pseudo_labels" not in done.result
    assert "mean_peak" in done.progress  # the continual method's teacher statistics


def test_a_missing_teacher_fails_the_plan_naming_the_setting(tmp_path, small_model, data_root):
    _, queue, ctx = _loop_with(tmp_path, small_model, data_root, retrain_teacher=str(tmp_path / "gone.onnx"))
    _submit(queue, iterations=2)
    _, done = work_once(ctx)
    assert done.state == "failed" and "'gone.onnx' not found" in done.error
    assert "POSELOOP_RETRAIN_TEACHER" in done.error and str(tmp_path) not in done.error  # no server paths


def test_an_infrastructure_fault_is_retried_then_fails_with_its_cause(tmp_path, small_model, data_root):
    """The label cache directory cannot be created (a file sits where it should be: an OSError, as a full or
    failing volume gives): the job is handed back and resumes from its recorded stages, MAX_TRANSIENT_FAULTS times,
    then fails naming the cause. The baseline score recorded by the first attempt is not recomputed."""
    from continual.retrain import MAX_TRANSIENT_FAULTS

    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the label cache directory should be")
    _, queue, ctx = _loop_with(tmp_path, small_model, data_root, retrain_pseudo_label_dir=blocker / "labels")
    job = _submit(queue, iterations=2)
    outcomes = [work_once(ctx)[0] for _ in range(MAX_TRANSIENT_FAULTS)]
    assert outcomes == ["paused"] * MAX_TRANSIENT_FAULTS
    assert queue.jobs.get(job.id).result["transient_faults"] == MAX_TRANSIENT_FAULTS
    outcome, done = work_once(ctx)
    assert outcome == "finished" and done.state == "failed" and "Error" in done.error
    logs = queue.jobs.logs(job.id, tail=200)
    assert sum("transient fault" in line for line in logs) == MAX_TRANSIENT_FAULTS
    assert sum("active version" in line for line in logs) == 1  # the baseline ran once
