"""The one training loop: data, optimisation, AMP, logging, validation, checkpoints and resume.

Methods (training/methods) only say what one step computes; everything else lives here.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from models.codec import HeatmapCodec
from models.network import build_model
from training.config import TrainConfig
from training.data import Splits, build_splits
from training.datasets.records import PersonRecord
from training.datasets.topdown import TopDownDataset
from training.distributed import DistContext, context_from_env, init_process_group
from training.evaluator import evaluate_model, metric_name
from training.inference import HeatmapEnsemble
from training.methods import LabeledBatch, Method, UnlabeledBatch, build_method
from training.plots import plot_curves


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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


def load_init(model: torch.nn.Module, checkpoint: str | Path) -> None:
    """Warm start from a best.pt; only auxiliary heads the checkpoint lacks may stay at their fresh init."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    bad = [k for k in missing if not k.startswith("aux_heads.")] + list(unexpected)
    if bad:
        raise RuntimeError(f"{checkpoint} does not fit this model: {bad[:5]}")


def codec_for(config: TrainConfig) -> HeatmapCodec:
    return HeatmapCodec.for_input(
        config.data.input_size, config.codec.stride, config.codec.sigma, config.codec.refinement
    )


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


class InfiniteLoader:
    """Endless shuffled batches; resumable exactly at (epoch, batch) so a resumed run sees the same data.

    Each epoch's order comes from a DistributedSampler seeded by (seed, epoch): with several processes, rank r
    takes every world-th sample, so its batch k is its share of global batch k and the union over ranks is exactly
    the single-process batch (same order, same augmentation draws). Sets smaller than a batch are drawn with
    replacement. The dataset's epoch (its augmentation draw) advances with each pass.
    """

    def __init__(
        self,
        dataset: TopDownDataset,
        batch_size: int,
        seed: int,
        num_workers: int,
        position: tuple[int, int] = (0, 0),
        dist: DistContext = DistContext(),
    ):
        self.dataset = dataset
        self.batch_size = batch_size  # global: every rank gets batch_size / world_size of it
        self.seed = seed
        self.num_workers = num_workers
        self.dist = dist
        self.epoch, self.batch = position

    @property
    def position(self) -> tuple[int, int]:
        return self.epoch, self.batch

    def _batches(self) -> list[list[int]]:
        n, d = len(self.dataset), self.dist
        local = d.shard(self.batch_size)
        if n < self.batch_size:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            return [torch.randint(n, (self.batch_size,), generator=g)[d.rank :: d.world_size].tolist()]
        sampler = DistributedSampler(
            self.dataset, num_replicas=d.world_size, rank=d.rank, shuffle=True, seed=self.seed * 100_003, drop_last=True
        )
        sampler.set_epoch(self.epoch)
        order = list(sampler)
        return [order[i : i + local] for i in range(0, len(order) - local + 1, local)]

    def __iter__(self) -> Iterator[dict]:
        while True:
            self.dataset.set_epoch(self.epoch)
            batches = self._batches()[self.batch :]
            loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers)
            for item in loader:
                self.batch += 1
                yield item
            self.epoch, self.batch = self.epoch + 1, 0


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
            load_init(student, init_checkpoint)
        self.method: Method = build_method(config.method.name, student, **config.method.params)
        if self.dist.enabled and self.device.type == "cuda":  # gloo has no SyncBatchNorm: CPU ranks keep local BN
            self.method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.method)
        self.method.to(self.device)
        self.memory_format = torch.channels_last if config.optim.channels_last else torch.contiguous_format
        self.method.to(memory_format=self.memory_format)
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

    def _dataset(self, records: list[PersonRecord], seed_offset: int) -> TopDownDataset:
        d = self.config.data
        return TopDownDataset(
            records, self.codec, self.mean, self.std, d.padding, d.augment, seed=self.config.seed * 1000 + seed_offset
        )

    # ------------------------------------------------------------------ checkpoints
    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pt"

    def save_checkpoint(self) -> None:
        if not self.dist.is_main:
            return
        atomic_save(
            {
                "step": self.step,
                "method": self.method.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "best_metric": self.best_metric,
                "best_step": self.best_step,
                "positions": self.positions,
                "torch_rng": torch.get_rng_state(),
                "config": self.config.model_dump(mode="json"),
                "git_commit": git_commit(),
            },
            self.last_path,
        )

    def try_resume(self) -> bool:
        if not self.last_path.exists():
            return False
        state = torch.load(self.last_path, map_location="cpu", weights_only=False)
        saved = TrainConfig.model_validate(state["config"]).model_dump(mode="json")  # fills fields added since
        if saved != self.config.model_dump(mode="json"):
            raise RuntimeError(f"{self.last_path} was written by a different config; use a new run name or delete it")
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
        if not self.dist.is_main:
            return
        (self.run_dir / "UNPROMOTABLE").write_text(reason + "\n")
        best = self.run_dir / "best.pt"
        if best.exists():
            state = torch.load(best, map_location="cpu", weights_only=True)
            state["promotable"] = False
            state["unpromotable_reason"] = reason
            atomic_save(state, best)

    def save_best(self, metrics: dict[str, float]) -> None:
        if not self.dist.is_main:
            return
        atomic_save(
            {
                "model": self.method.student.state_dict(),
                "model_config": self.config.model.model_dump(mode="json"),
                "config": self.config.model_dump(mode="json"),
                "metrics": metrics,
                "step": self.step,
                "trained_on": self.splits.description,
                "git_commit": git_commit(),
                "promotable": True,
            },
            self.run_dir / "best.pt",
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
            self.config.data.dataset,
            self.codec,
            self.mean,
            self.std,
            self.config.data.padding,
            e.flip_test,
            e.batch_size,
            self.device,
            coco_gt=self.config.data.val_ann_file,
        )

    def log(self, row: dict) -> None:
        self.history.append(row)
        if not self.dist.is_main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._on_log is not None:
            self._on_log(row)

    def _load_history(self) -> None:
        path = self.run_dir / "metrics.jsonl"
        if path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            self.history = [r for r in rows if r.get("step", 0) <= self.step]
            if self.dist.is_main:
                path.write_text("".join(json.dumps(r) + "\n" for r in self.history))

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
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
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
                self._dataset(self.unlabeled, 1),
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
