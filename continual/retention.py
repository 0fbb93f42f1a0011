"""Job directories are pruned by a policy, so disk use stays bounded however many retrains run.

Each retrain writes `<data dir>/jobs/retrain-<job id>/` (checkpoints, metrics, curve, logs). A job that succeeded
already dropped its checkpoints when its candidate was registered (the registry keeps the model). After every
finished job, among the finished jobs' directories:
- the newest `keep` stay as they are (a failed job's last.pt lets ops inspect or resume by hand);
- older ones lose every large file (checkpoints, exported models, chunk inputs); those whose candidate was
  promoted keep their small record (metrics.jsonl, curve.png, config.json, ...), the others are deleted.
Directories of queued or running jobs are never touched.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from continual.jobs import FINAL_STATES, JobStore

log = logging.getLogger("poseloop.retention")
LARGE_SUFFIXES = (".pt", ".onnx")
LARGE_NAMES = ("chunk_records.json",)
JOB_DIR_PREFIX = "retrain-"


@dataclass(frozen=True)
class Pruned:
    kept: int
    slimmed: int
    deleted: int
    freed_bytes: int


def _large_files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file() and (p.suffix in LARGE_SUFFIXES or p.name in LARGE_NAMES)]


def prune_job_dirs(jobs_root: Path, jobs: JobStore, keep: int) -> Pruned:
    """Apply the policy above under `jobs_root`; returns what it did (also logged)."""
    finished = [j for j in jobs.list(limit=100_000) if j.state in FINAL_STATES]  # newest first
    kept = slimmed = deleted = freed = 0
    for rank, job in enumerate(finished):
        directory = jobs_root / f"{JOB_DIR_PREFIX}{job.id}"
        if not directory.is_dir():
            continue
        if rank < keep:
            kept += 1
            continue
        promoted = (job.result.get("gate") or {}).get("decision") == "promoted"
        if promoted:
            for path in _large_files(directory):
                freed += path.stat().st_size
                path.unlink()
            slimmed += 1
        else:
            freed += sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
            shutil.rmtree(directory)
            deleted += 1
    result = Pruned(kept, slimmed, deleted, freed)
    if slimmed or deleted:
        log.info("job dirs: kept %d, slimmed %d, deleted %d, freed %d bytes", kept, slimmed, deleted, freed)
    return result
