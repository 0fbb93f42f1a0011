"""Offline data distillation rounds (Radosavovic et al., CVPR 2018), as plain functions for the CLI to wrap.

Round r: the current teacher labels the unlabeled pool (`build_splits(config.data).unlabeled`) with TTA, the
labels are filtered with thresholds calibrated on labeled dev records for `precision` and cached
(training/distill/cache.py), the student trains on labeled + pseudo-labelled crops through the ordinary `Trainer`
(`data.pseudo_labels` = the cache, `supervised` method, the config's own augmentation, e.g. occlusion noise), and
its best.pt is the next round's teacher. A finished round (its `distill_round.json`, best.pt and cache all exist)
is skipped, so a rerun resumes; an interrupted round resumes its training from last.pt and its labels from the
cache.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.fileio import atomic_write_bytes
from training.config import TrainConfig, config_with
from training.data import build_splits
from training.datasets.records import PersonRecord
from training.distill import FilterSpec, Teacher, TTAConfig, build_teacher, cache_path, label_pool
from training.engine import Trainer
from training.run_files import BEST_FILE

ROUND_FILE = "distill_round.json"
PSEUDO_DIR = "pseudo_labels"


@dataclass(frozen=True)
class RoundResult:
    """One round: the teacher that labelled (its provenance), the cache, the dev calibration and label counts,
    the student's run directory, best.pt and best validation metric."""

    round: int
    teacher: dict[str, Any]
    cache: Path
    reused_cache: bool
    calibration: dict[str, Any] | None
    counts: dict[str, int]
    run_dir: Path
    best_checkpoint: Path
    val_metric: float

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "cache": str(self.cache),
            "run_dir": str(self.run_dir),
            "best_checkpoint": str(self.best_checkpoint),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoundResult:
        paths = {k: Path(data[k]) for k in ("cache", "run_dir", "best_checkpoint")}
        return cls(**{**data, **paths})


def round_config(config: TrainConfig, round_index: int, out_dir: Path, cache: Path | None) -> TrainConfig:
    """The student's config for a round: its own run directory under `out_dir`, the round's pseudo-labels."""
    changes = {
        "name": f"{config.name}_distill_r{round_index}",
        "output_dir": str(out_dir),
        "data": {"pseudo_labels": None if cache is None else str(cache)},
    }
    return config_with(config.model_dump(mode="json"), changes)


def finished_round(config: TrainConfig, round_index: int, out_dir: Path, cache: Path) -> RoundResult | None:
    """The recorded result of a round whose record, best.pt and cache all still exist; else None. `cache` is where
    this round's labels belong (`cache_path`): a record made with other inputs is an error, not a result."""
    record = round_config(config, round_index, out_dir, None).run_dir / ROUND_FILE
    if not record.exists():
        return None
    result = RoundResult.from_json(json.loads(record.read_text()))
    if result.cache.parent.name != cache.parent.name:  # the cache key
        raise ValueError(
            f"{record} was made with other inputs (teacher, filter, pool or dev records); use a new out_dir"
        )
    return result if result.best_checkpoint.exists() and result.cache.exists() else None


def run_distillation(
    config: TrainConfig,
    teacher: Teacher | str | Path | Sequence[str | Path],
    rounds: int,
    out_dir: str | Path,
    *,
    dev_records: Sequence[PersonRecord] | None = None,
    precision: float = 0.8,
    min_joints: int = 6,
    spread_grid: Sequence[float] | None = None,
    tta: TTAConfig | None = None,
    device: str | None = None,
    threads: int = 0,
    progress: bool = False,
    cache_root: str | Path | None = None,
) -> list[RoundResult]:
    """Run (or resume) `rounds` rounds; returns one RoundResult per round, in order.

    teacher: a Teacher, or model file(s) for `build_teacher` (best.pt, PoseLoop ONNX, MoveNet ONNX; several =
        an ensemble), predicting in the config's schema.
    dev_records: labeled records the thresholds are calibrated on; default: the config's validation split (the dev
        split under LSP protocol v2). Never pass records the final figures are reported on.
    precision, min_joints, spread_grid: the filter (training/distill/filter.py, FilterSpec).
    cache_root: where the pseudo-label caches live (default out_dir/pseudo_labels). A cache is keyed by teacher,
        filter, pool and dev records, so runs that share those (e.g. students at several label budgets taught by
        one external model) can share one root and label the pool once.
    """
    if config.method.name != "supervised":
        raise ValueError(f"the student trains with the supervised method, not {config.method.name!r}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    out_dir = Path(out_dir)
    splits = build_splits(config.data.model_copy(update={"pseudo_labels": None}))
    if not splits.unlabeled:
        raise ValueError("config.data.unlabeled is not set: there is no pool to label")
    dev = list(splits.val if dev_records is None else dev_records)
    spec = FilterSpec(precision, min_joints, FilterSpec().spread_grid if spread_grid is None else tuple(spread_grid))
    tta = tta or TTAConfig()
    if isinstance(teacher, (str, Path, Sequence)):
        current: Teacher = build_teacher(teacher, splits.schema, tta, threads)
    else:
        current = teacher
    if current.schema.name != splits.schema:
        raise ValueError(f"the teacher predicts {current.schema.name}, the student trains on {splits.schema}")
    caches = out_dir / PSEUDO_DIR if cache_root is None else Path(cache_root)
    results = []
    for r in range(rounds):
        cache = cache_path(current, splits.unlabeled, caches, spec, dev)
        result = finished_round(config, r, out_dir, cache) or _run_round(
            config, r, out_dir, current, splits.unlabeled, dev, spec, caches, device, progress
        )
        results.append(result)
        current = build_teacher(result.best_checkpoint, splits.schema, tta, threads)
    return results


def _run_round(
    config: TrainConfig,
    round_index: int,
    out_dir: Path,
    teacher: Teacher,
    pool: list[PersonRecord],
    dev: list[PersonRecord],
    spec: FilterSpec,
    caches: Path,
    device: str | None,
    progress: bool,
) -> RoundResult:
    labels = label_pool(teacher, pool, caches, spec, dev)
    counts = labels.provenance["counts"]
    if counts["persons_kept"] == 0:
        raise ValueError(
            f"round {round_index}: no pool person kept (calibration {labels.provenance['calibration']}); "
            "lower the precision or min_joints, or use a better teacher"
        )
    train = Trainer(round_config(config, round_index, out_dir, labels.path), device=device).fit(progress=progress)
    best = train.run_dir / BEST_FILE
    if train.stopped_reason or not best.exists():
        raise RuntimeError(f"round {round_index}: the student run stopped ({train.stopped_reason}) without best.pt")
    result = RoundResult(
        round=round_index,
        teacher=teacher.provenance(),
        cache=labels.path,
        reused_cache=labels.reused,
        calibration=labels.provenance["calibration"],
        counts=counts,
        run_dir=train.run_dir,
        best_checkpoint=best,
        val_metric=train.best_metric,
    )
    atomic_write_bytes(train.run_dir / ROUND_FILE, json.dumps(result.to_json(), indent=2).encode())
    return result
