"""The files a training run keeps in its run directory (`config.run_dir`), and how they are read back.

`Trainer` (training/engine.py) decides when to write and which rank writes (rank 0 only); this module owns
what is in each file:

- `last.pt`: the resume state — the whole method's state dict (students, EMA teacher, reviewer slots, collapse
  guard), optimiser, AMP scaler, step, the best-so-far metric and step, each data loader's (epoch, batch)
  position, the torch RNG state and the full config. `load_last` refuses a file written by another config, so a
  resumed run always continues the same recipe.
- `best.pt`: the promotable model — the student's weights with its model config, the full config, its validation
  metrics and a description of the records it trained on. training/checkpoints.py loads, exports and evaluates
  it; `promotable` is False (and `UNPROMOTABLE` says why) when the run stopped because predictions collapsed.
- `metrics.jsonl`: one JSON object per logged training step and per validation (`step` in every row).

Checkpoints are written atomically (temporary file, fsync, rename), so a killed run never leaves a torn one.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from core.fileio import atomic_write
from training.config import TrainConfig

LAST_FILE = "last.pt"
BEST_FILE = "best.pt"
METRICS_FILE = "metrics.jsonl"
UNPROMOTABLE_FILE = "UNPROMOTABLE"


def atomic_save(obj: object, path: Path) -> None:
    """torch.save through the one durable write (core.fileio): a crash never leaves half a checkpoint."""
    atomic_write(path, lambda f: torch.save(obj, f))


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ---------------------------------------------------------------------- last.pt (resume)
def save_last(
    path: Path,
    *,
    step: int,
    method: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    best_metric: float,
    best_step: int,
    positions: Mapping[str, tuple[int, int]],
    config: TrainConfig,
) -> None:
    """Everything `Trainer.try_resume` needs to continue exactly where the run is now."""
    atomic_save(
        {
            "step": step,
            "method": method.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "best_metric": best_metric,
            "best_step": best_step,
            "positions": positions,
            "torch_rng": torch.get_rng_state(),
            "config": config.model_dump(mode="json"),
            "git_commit": git_commit(),
        },
        path,
    )


def load_last(path: Path, config: TrainConfig) -> dict[str, Any]:
    """The resume state saved by `save_last`; RuntimeError when a different config wrote it."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    saved = TrainConfig.model_validate(state["config"]).model_dump(mode="json")  # fills fields added since
    if saved != config.model_dump(mode="json"):
        raise RuntimeError(f"{path} was written by a different config; use a new run name or delete it")
    return state


# ---------------------------------------------------------------------- best.pt (the model)
def save_best(
    path: Path,
    *,
    student: torch.nn.Module,
    config: TrainConfig,
    metrics: Mapping[str, float],
    step: int,
    trained_on: str,
) -> None:
    """The validated student with what it is (configs), how good it is (metrics) and what it learnt from."""
    atomic_save(
        {
            "model": student.state_dict(),
            "model_config": config.model.model_dump(mode="json"),
            "config": config.model_dump(mode="json"),
            "metrics": metrics,
            "step": step,
            "trained_on": trained_on,
            "git_commit": git_commit(),
            "promotable": True,
        },
        path,
    )


def mark_unpromotable(run_dir: Path, reason: str) -> None:
    """A collapsed run keeps its files for inspection, but its model must never be promoted: writes
    `UNPROMOTABLE` and clears best.pt's `promotable` flag (when there is a best.pt)."""
    (run_dir / UNPROMOTABLE_FILE).write_text(reason + "\n")
    best = run_dir / BEST_FILE
    if best.exists():
        state = torch.load(best, map_location="cpu", weights_only=True)
        state["promotable"] = False
        state["unpromotable_reason"] = reason
        atomic_save(state, best)


def load_init(model: torch.nn.Module, checkpoint: str | Path) -> None:
    """Warm start from a best.pt; only auxiliary heads the checkpoint lacks may stay at their fresh init."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    bad = [k for k in missing if not k.startswith("aux_heads.")] + list(unexpected)
    if bad:
        raise RuntimeError(f"{checkpoint} does not fit this model: {bad[:5]}")


# ---------------------------------------------------------------------- metrics.jsonl
def append_metrics(path: Path, row: Mapping[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every row of a metrics file, in order (blank lines skipped)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace a metrics file by `rows` (a resumed run drops rows logged after its checkpoint)."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
