"""Resumable benchmark tables: each row is a training config; finished rows are cached by config hash."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from training.config import TrainConfig


@dataclass
class BenchRow:
    label: str
    config: TrainConfig
    info: dict = field(default_factory=dict)  # extra columns (N, init, method…)


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


@contextmanager
def _locked(path: Path):
    """Exclusive lock so several bench processes (one row each) can share one results file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _write(path: Path, results: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, path)


def save_result(path: Path, key: str, value: dict) -> dict:
    with _locked(path):
        results = load_results(path)
        results[key] = value
        _write(path, results)
    return results


def update_results(path: Path, update: Callable[[dict], None]) -> dict:
    """Apply `update` (it edits the dict in place) to the whole results file under the lock; the file is rewritten
    only when something changed, so a refresh that finds nothing new leaves it as it was."""
    with _locked(path):
        results = load_results(path)
        before = json.dumps(results, sort_keys=True)
        update(results)
        if json.dumps(results, sort_keys=True) != before:
            _write(path, results)
    return results


class RowNotRun(Exception):
    """A row that cannot run in this checkout (e.g. the code it calls is not there yet): `run_cached` records it
    as not run, with this message as the reason, and tries it again on the next call."""


def run_cached(
    rows: list[BenchRow],
    results_path: Path,
    run: Callable[[BenchRow], dict],
    after_row: Callable[[], None] | None = None,
) -> dict:
    """For every row not yet cached as done (key: its config hash), `run(row)` trains or resumes it and returns its
    record, which is saved at once with `done: True` — so a killed bench loses at most the row in progress, whose
    run resumes from its last.pt. A `RowNotRun` is saved as `status: "not run"` with its reason and `done: False`.
    `after_row` runs after each saved row (e.g. to refresh comparisons between rows)."""
    results = load_results(results_path)
    for row in rows:
        key = row.config.config_hash()
        if results.get(key, {}).get("done"):
            continue
        try:
            record = {**run(row), "done": True}
        except RowNotRun as exc:
            record = {"label": row.label, **row.info, "run": row.config.name, "status": "not run"}
            record.update(reason=str(exc), done=False)
        results = save_result(results_path, key, record)
        if after_row is not None:
            after_row()
    return load_results(results_path)


def run_rows(
    rows: list[BenchRow],
    results_path: Path,
    evaluate: Callable[[Path, TrainConfig], dict],
    trainer_kwargs: Callable[[BenchRow], dict] | None = None,
) -> dict:
    """Train (or resume) every row not yet cached, evaluate its best checkpoint, and cache the result.

    The cache key is the config hash, so changing a row's config reruns it; a killed run resumes from last.pt.
    """
    from training.engine import Trainer

    def train(row: BenchRow) -> dict:
        print(f"[bench] {row.label}: training {row.config.name} ({row.config.optim.iterations} steps)", flush=True)
        t0 = time.time()
        extra = trainer_kwargs(row) if trainer_kwargs else {}
        result = Trainer(row.config, **extra).fit(resume=True)
        metrics = evaluate(result.run_dir / "best.pt", row.config)
        return {
            "label": row.label,
            **row.info,
            "run": row.config.name,
            "iterations": row.config.optim.iterations,
            "best_step": result.best_step,
            "wall_time_min": round((time.time() - t0) / 60, 1),
            "train_time_min": round(train_time_s(result.run_dir) / 60, 1),
            "stopped": result.stopped_reason,
            "metrics": metrics,
        }

    return run_cached(rows, results_path, train)


def train_time_s(run_dir: Path) -> float:
    """Total training time from metrics.jsonl (sums across resumed segments)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    total, last = 0.0, 0.0
    for row in rows:
        if "time_s" in row:
            if row["time_s"] < last:
                total += last
            last = row["time_s"]
    return total + last


_train_time_s = train_time_s  # the name tests/test_bench_ssl.py imports
