"""The one training loop: data, optimisation, AMP, logging, validation, checkpoints and resume.

Methods (training/methods) only say what one step computes; everything else lives here. The loop counts
optimizer steps (`optim.iterations`), not epochs; a step sees one global batch of labeled crops (plus one of
unlabeled crops for semi-supervised methods), split over ranks under torchrun (training/distributed.py).
What the run writes and how resume reads it back is in training/run_files.py; the endless, resumable batches
come from training/loader.py (`InfiniteLoader`, re-exported here).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from models.codec import HeatmapCodec
from models.network import build_model
from training import run_files
from training.config import TrainConfig
from training.data import Splits, build_splits
from training.datasets.records import PersonRecord
from training.datasets.topdown import TopDownDataset
from training.distributed import DistContext, context_from_env, init_process_group
from training.evaluator import evaluate_model, metric_name
from training.inference import HeatmapEnsemble
from training.loader import InfiniteLoader
from training.methods import LabeledBatch, Method, RunContext, UnlabeledBatch, build_method
from training.plots import plot_curves

__all__ = ["InfiniteLoader", "TrainResult", "Trainer", "codec_for", "lr_factor", "pick_device", "seed_everything"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def codec_for(config: TrainConfig) -> HeatmapCodec:
    return HeatmapCodec.for_input(
        config.data.input_size, config.codec.stride, config.codec.sigma, config.codec.refinement
    )


def lr_factor(step: int, config: TrainConfig) -> float:
    o = config.optim
    factor = o.gamma ** sum(step >= int(m * o.iterations) for m in o.milestones)
    if o.warmup_iterations and step < o.warmup_iterations:
        factor *= (step + 1) / o.warmup_iterations
    return factor


@dataclass
class TrainResult:
    run_dir: Path
    best_metric: float
    best_step: int
    final_metrics: dict[str, float]
    steps: int
    wall_time_s: float
    stopped_reason: str | None = None

    def summary(self) -> dict:
        """JSON-ready outcome: what `poseloop train` prints and what a retrain job records of its chunk."""
        return {
            "run_dir": str(self.run_dir),
            "best_metric": self.best_metric,
            "best_step": self.best_step,
            "steps": self.steps,
            "wall_time_s": round(self.wall_time_s, 1),
            "stopped": self.stopped_reason,
        }


class Trainer:
    """Builds everything a config describes and runs (or resumes) it."""

    def __init__(
        self,
        config: TrainConfig,
        device: str | None = None,
        splits: Splits | None = None,
        unlabeled: list[PersonRecord] | None = None,
        init_checkpoint: str | None = None,
        dist: DistContext | None = None,
    ):
        self.config = config
        self.dist = dist or context_from_env()
        self.device = self.dist.device(pick_device(device))
        init_process_group(self.dist, self.device)
        self.dist.shard(config.optim.batch_size)  # fail early when the global batch does not split
        seed_everything(config.seed)
        self.splits = splits or build_splits(config.data)
        self.codec = codec_for(config)
        student = build_model(config.model)
        init_checkpoint = init_checkpoint or config.init_checkpoint
        if init_checkpoint:
            run_files.load_init(student, init_checkpoint)
        context = RunContext(total_steps=config.optim.iterations, heatmap_sigma=config.codec.sigma)
        self.method: Method = build_method(config.method.name, student, context, **config.method.params)
        if self.dist.enabled and self.device.type == "cuda":  # gloo has no SyncBatchNorm: CPU ranks keep local BN
            self.method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.method)
        self.method.to(self.device)
        self.memory_format = torch.channels_last if config.optim.channels_last else torch.contiguous_format
        self.method.to(memory_format=self.memory_format)  # type: ignore[call-overload]  # Module.to's stubs omit it
        self.step_module = self._data_parallel()
        self.mean, self.std = student.mean, student.std
        self.optimizer = self._optimizer()
        self.amp = config.optim.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.run_dir = config.run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.unlabeled = unlabeled if unlabeled is not None else self.splits.unlabeled
        self.step = 0
        self.best_metric = -math.inf
        self.best_step = -1
        self.positions: dict[str, tuple[int, int]] = {"labeled": (0, 0), "unlabeled": (0, 0)}
        self.history: list[dict] = []
        self._on_log: Callable[[dict], None] | None = None

    # ------------------------------------------------------------------ setup
    def _data_parallel(self) -> torch.nn.Module:
        """The module a training step calls: the method itself, or DDP over it (gradients averaged over ranks;
        buffers such as BN statistics and EMA teachers broadcast from rank 0 on every step). Ranks then draw their
        own augmentation randomness."""
        if not self.dist.enabled:
            return self.method
        ids = [self.device.index] if self.device.type == "cuda" else None
        wrapped = DistributedDataParallel(self.method, device_ids=ids, find_unused_parameters=False)
        torch.manual_seed(self.config.seed * 7919 + self.dist.rank)
        return wrapped

    def _optimizer(self) -> torch.optim.Optimizer:
        o = self.config.optim
        params = self.method.trainable_parameters()
        cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
        return cls(params, lr=o.lr, weight_decay=o.weight_decay)

    def _dataset(self, records: list[PersonRecord], seed_offset: int, easy: bool = False) -> TopDownDataset:
        """Labeled crops get the full augmentation; unlabeled ones (easy=True) the teacher's easy view."""
        d = self.config.data
        augment = d.unlabeled_augment if easy else d.augment
        return TopDownDataset(
            records, self.codec, self.mean, self.std, d.padding, augment, seed=self.config.seed * 1000 + seed_offset
        )

    # ------------------------------------------------------------------ checkpoints
    @property
    def last_path(self) -> Path:
        return self.run_dir / run_files.LAST_FILE

    def save_checkpoint(self) -> None:
        if not self.dist.is_main:
            return
        run_files.save_last(
            self.last_path,
            step=self.step,
            method=self.method,
            optimizer=self.optimizer,
            scaler=self.scaler,
            best_metric=self.best_metric,
            best_step=self.best_step,
            positions=self.positions,
            config=self.config,
        )

    def try_resume(self) -> bool:
        if not self.last_path.exists():
            return False
        state = run_files.load_last(self.last_path, self.config)
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.best_metric, self.best_step = state["step"], state["best_metric"], state["best_step"]
        self.positions = {k: tuple(v) for k, v in state["positions"].items()}
        torch.set_rng_state(state["torch_rng"])
        if self.dist.enabled:  # rank 0's state was saved; the other ranks fold in their rank again
            torch.manual_seed(int(torch.randint(2**62, (1,))) + self.dist.rank)
        return True

    def _mark_unpromotable(self, reason: str) -> None:
        """A collapsed run keeps its files for inspection, but its model must never be promoted."""
        if self.dist.is_main:
            run_files.mark_unpromotable(self.run_dir, reason)

    def save_best(self, metrics: dict[str, float]) -> None:
        if not self.dist.is_main:
            return
        run_files.save_best(
            self.run_dir / run_files.BEST_FILE,
            student=self.method.student,
            config=self.config,
            metrics=metrics,
            step=self.step,
            trained_on=self.splits.description,
        )

    # ------------------------------------------------------------------ validation and logs
    def validate(self) -> dict[str, float]:
        """Student metrics; for dual methods also `ensemble/*` (both nets' heatmaps averaged), reported apart."""
        metrics = self._evaluate(self.method.student)
        students = self.method.students()
        if len(students) > 1:
            ensemble = self._evaluate(HeatmapEnsemble(students))
            metrics.update({f"ensemble/{k}": v for k, v in ensemble.items() if not k.startswith("pck/")})
        return metrics

    def _evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        e = self.config.eval
        return evaluate_model(
            model,
            self.splits.val,
            dataset=self.config.data.dataset,
            codec=self.codec,
            mean=self.mean,
            std=self.std,
            padding=self.config.data.padding,
            flip_test=e.flip_test,
            batch_size=e.batch_size,
            device=self.device,
            coco_gt=self.config.data.val_ann_file,
        )

    def log(self, row: dict) -> None:
        self.history.append(row)
        if not self.dist.is_main:
            return
        run_files.append_metrics(self.run_dir / run_files.METRICS_FILE, row)
        if self._on_log is not None:
            self._on_log(row)

    def _load_history(self) -> None:
        path = self.run_dir / run_files.METRICS_FILE
        if path.exists():
            self.history = [r for r in run_files.read_metrics(path) if r.get("step", 0) <= self.step]
            if self.dist.is_main:
                run_files.write_metrics(path, self.history)

    # ------------------------------------------------------------------ the loop
    def fit(
        self,
        resume: bool = True,
        progress: bool = True,
        stop_after: int | None = None,
        on_log: Callable[[dict], None] | None = None,
    ) -> TrainResult:
        """Run to `optim.iterations` (or only `stop_after` more steps, leaving a resumable checkpoint).

        on_log: called with every logged row (training and validation); it may raise to abort the run (e.g. a
        cancelled job) — the last periodic checkpoint stays, so the run can be resumed.
        """
        cfg = self.config
        self._on_log = on_log
        main = self.dist.is_main
        if resume and self.try_resume():
            self._load_history()
        elif main:
            (self.run_dir / run_files.METRICS_FILE).unlink(missing_ok=True)
        if main:
            (self.run_dir / "config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=2))
        loaders = {
            "labeled": InfiniteLoader(
                self._dataset(self.splits.train, 0),
                cfg.optim.batch_size,
                cfg.seed,
                cfg.data.num_workers,
                self.positions["labeled"],
                self.dist,
            )
        }
        if self.method.needs_unlabeled:
            if not self.unlabeled:
                raise ValueError(f"method {cfg.method.name!r} needs unlabeled records")
            loaders["unlabeled"] = InfiniteLoader(
                self._dataset(self.unlabeled, 1, easy=True),
                cfg.optim.batch_size,
                cfg.seed + 1,
                cfg.data.num_workers,
                self.positions["unlabeled"],
                self.dist,
            )
        labeled = iter(loaders["labeled"])
        unlabeled = iter(loaders["unlabeled"]) if "unlabeled" in loaders else None
        start = time.time()
        stopped = None
        bar = tqdm(
            total=cfg.optim.iterations,
            initial=self.step,
            disable=not (progress and main),
            desc=cfg.name,
            dynamic_ncols=True,
        )
        window: dict[str, float] = {}
        self.method.train()
        end = cfg.optim.iterations if stop_after is None else min(cfg.optim.iterations, self.step + stop_after)
        while self.step < end:
            lb = LabeledBatch.from_item(next(labeled), self.device, self.memory_format)
            ub = UnlabeledBatch.from_item(next(unlabeled), self.device, self.memory_format) if unlabeled else None
            for group in self.optimizer.param_groups:
                group["lr"] = cfg.optim.lr * lr_factor(self.step, cfg)
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                out = self.step_module(lb, ub, self.step)
            if self.dist.any(not torch.isfinite(out.loss)):
                stopped = f"non-finite loss at step {self.step}"
                break
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(out.loss).backward()
            if cfg.optim.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.method.trainable_parameters(), cfg.optim.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.method.after_optimizer_step(self.step)
            self.step += 1
            reason = self.method.collapse_reason()
            if self.dist.any(reason is not None):
                stopped = f"collapse: {reason or 'detected on another rank'}"
                self._mark_unpromotable(stopped)
                break
            self.positions.update({name: loader.position for name, loader in loaders.items()})
            for k, v in out.logs.items():
                window[k] = window.get(k, 0.0) + v
            window["_n"] = window.get("_n", 0) + 1
            bar.update(1)
            if self.step % cfg.schedule.log_every == 0 or self.step == cfg.optim.iterations:
                n = window.pop("_n")
                means = self.dist.mean({k: v / n for k, v in window.items()})
                row = {
                    "step": self.step,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "time_s": round(time.time() - start, 2),
                    **means,
                }
                window = {}
                self.log(row)
                bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k.startswith("loss")})
            if self.step % cfg.schedule.val_every == 0 or self.step == cfg.optim.iterations:
                self._validate_and_keep_best()
            if self.step % cfg.schedule.checkpoint_every == 0 or self.step in (cfg.optim.iterations, end):
                self.save_checkpoint()
        bar.close()
        self.dist.sync_buffers(self.method)  # ranks leave with rank 0's BN/EMA statistics, as checkpoints hold
        final = self.history[-1] if self.history else {}
        return TrainResult(
            self.run_dir,
            self.best_metric,
            self.best_step,
            {k: v for k, v in final.items() if k.startswith("val/")},
            self.step,
            time.time() - start,
            stopped,
        )

    def _validate_and_keep_best(self) -> None:
        """Rank 0 validates (after taking its BN statistics everywhere); every rank gets its metric, so reviewer
        snapshots and the best-step bookkeeping stay identical across ranks."""
        key = metric_name(self.config.data.dataset)
        self.dist.sync_buffers(self.method)
        metrics = self.validate() if self.dist.is_main else {}
        value = self.dist.broadcast(metrics.get(key, 0.0))
        if self.dist.is_main:
            self.log({"step": self.step, **{f"val/{k}": v for k, v in metrics.items()}})
        self.method.on_validation(value, self.step)
        if value > self.best_metric:
            self.best_metric, self.best_step = value, self.step
            self.save_best(metrics)
        if self.dist.is_main:
            plot_curves(self.history, self.run_dir / "curve.png", title=self.config.name, metric=f"val/{key}")
        self.method.train()
