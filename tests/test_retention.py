"""Job-directory retention (continual.retention): the newest K finished jobs stay whole, older promoted ones keep
their small record, older others go; queued and running jobs are never touched."""

from continual.jobs import JobStore
from continual.retention import prune_job_dirs


def _job_dir(root, job_id: str, checkpoint_bytes: int = 1000):
    d = root / f"retrain-{job_id}"
    d.mkdir(parents=True)
    (d / "last.pt").write_bytes(b"x" * checkpoint_bytes)
    (d / "model.onnx").write_bytes(b"y" * 10)
    (d / "metrics.jsonl").write_text('{"step": 1}\n')
    return d


def test_old_job_dirs_are_slimmed_or_deleted_and_live_ones_kept(tmp_path):
    clock = iter(range(1_000, 2_000))
    jobs = JobStore(tmp_path / "jobs.db", clock=lambda: float(next(clock)))
    root = tmp_path / "jobs"
    made = []
    for i, (state, decision) in enumerate(
        [("succeeded", "promoted"), ("succeeded", "rejected"), ("failed", None), ("succeeded", "promoted")]
    ):
        job, _ = jobs.submit("retrain", "poseloop", {"i": i}, "ops", f"key-{i}")
        jobs.claim("w", 30, job.id)
        jobs.finish(job.id, "w", state, result={"gate": {"decision": decision}} if decision else None)
        made.append(_job_dir(root, job.id))
    running, _ = jobs.submit("retrain", "poseloop", {"i": "live"}, "ops", "key-live")
    jobs.claim("w", 30, running.id)
    live = _job_dir(root, running.id)

    result = prune_job_dirs(root, jobs, keep=1)

    oldest_promoted, rejected, failed, newest = made
    assert (newest / "last.pt").exists()  # the newest finished job stays whole
    assert (oldest_promoted / "metrics.jsonl").exists() and not (oldest_promoted / "last.pt").exists()
    assert not (oldest_promoted / "model.onnx").exists()
    assert not rejected.exists() and not failed.exists()
    assert (live / "last.pt").exists()  # running: untouched
    assert (result.kept, result.slimmed, result.deleted) == (1, 1, 2) and result.freed_bytes > 3000
    assert prune_job_dirs(root, jobs, keep=1).freed_bytes == 0  # idempotent
