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


def save_result(path: Path, key: str, value: dict) -> dict:
    with _locked(path):
        results = load_results(path)
        results[key] = value
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2))
        os.replace(tmp, path)
    return results


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

    results = load_results(results_path)
    for row in rows:
        key = row.config.config_hash()
        if results.get(key, {}).get("done"):
            continue
        print(f"[bench] {row.label}: training {row.config.name} ({row.config.optim.iterations} steps)", flush=True)
        t0 = time.time()
        extra = trainer_kwargs(row) if trainer_kwargs else {}
        result = Trainer(row.config, **extra).fit(resume=True)
        metrics = evaluate(result.run_dir / "best.pt", row.config)
        results = save_result(
            results_path,
            key,
            {
                "label": row.label,
                **row.info,
                "run": row.config.name,
                "iterations": row.config.optim.iterations,
                "best_step": result.best_step,
                "wall_time_min": round((time.time() - t0) / 60, 1),
                "train_time_min": round(_train_time_s(result.run_dir) / 60, 1),
                "stopped": result.stopped_reason,
                "metrics": metrics,
                "done": True,
            },
        )
    return load_results(results_path)


def _train_time_s(run_dir: Path) -> float:
    """Total training time from metrics.jsonl (sums across resumed segments)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    total, last = 0.0, 0.0
    for row in rows:
        if "time_s" in row:
            if row["time_s"] < last:
                total += last
            last = row["time_s"]
    return total + last
