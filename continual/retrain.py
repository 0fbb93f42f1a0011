"""The retrain job: active model + uploads → recipe → evaluate → export → register → gate.

The default recipe is offline distillation, the measured best (docs/benchmarks.md, LSP-SSL v2): a teacher (by
default the shipped MoveNet Thunder ONNX, mapped to the model's schema by joint names; or the active version
itself) labels the upload snapshot once, the labels are filtered with thresholds calibrated on the model's
labeled training records, and the active model fine-tunes on labeled + pseudo-labelled crops with occlusion
noise. `retrain.recipe=consistency` runs the `retrain.config` semi-supervised method instead.

Every stage records its outcome in the job row before the next starts, and each is idempotent, so a job that is
redelivered after its worker died picks up where it stopped: the plan (parent version, upload snapshot) is fixed
at the first attempt, training resumes from its last checkpoint, a registered candidate is found again by job id,
and the gate runs once. The gate promotes only when the candidate beats the active model (measured in this job,
same validation set and metric) by `promotion_margin` and the collapse guard did not fire; the registry refuses
automatic promotion while pinned or if the active version changed meanwhile (e.g. an ops rollback).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from continual import gate
from continual.jobs import Job, JobStore, LeaseLost
from continual.labeled import LabeledStore, labeled_store
from continual.settings import Settings
from continual.uploads import UploadStore
from models.registry import ModelRegistry, RegistryError

log = logging.getLogger("poseloop.retrain")
HEARTBEAT_EVERY_S = 2.0
# distill: thresholds are calibrated on at most this many labeled training records (a teacher pass with TTA
# each); they are the model's own labels, never the gate's split
CALIBRATION_RECORDS = 200
SELF_TEACHER = "self"
# Retry policy: an infrastructure fault (disk, network, a backend or broker away) is not the job's inputs' fault:
# the job is handed back and resumes from its last recorded stage, up to this many times; any other exception
# (bad data, a bug, a refused model) fails the job at once with its cause.
TRANSIENT_FAULTS: tuple[type[BaseException], ...] = (OSError, TimeoutError)
MAX_TRANSIENT_FAULTS = 3
# the gate scores on the registered labeled persons' gate part once it holds this many (a smaller sample's
# interval is too wide to promote anything); below it, on the active model's configured validation split
MIN_LABELED_GATE_PERSONS = 5


class JobCancelled(Exception):
    """Raised from the progress callback when ops cancelled the job."""


@dataclass
class RetrainContext:
    settings: Settings
    jobs: JobStore
    registry: ModelRegistry
    uploads: UploadStore
    owner: str


class Reporter:
    """Throttled heartbeats carrying progress; turns a cancel request into JobCancelled."""

    def __init__(self, ctx: RetrainContext, job: Job) -> None:
        self.ctx, self.job_id = ctx, job.id
        self.progress: dict[str, Any] = dict(job.progress)
        self._last = 0.0
        self._t0 = time.time()
        self._step0: int | None = None

    def beat(self, result: dict | None = None, log_line: str | None = None, force: bool = False, **progress) -> None:
        self.progress.update(progress)
        if not force and result is None and log_line is None and time.time() - self._last < HEARTBEAT_EVERY_S:
            return
        self._last = time.time()
        cancel = self.ctx.jobs.heartbeat(
            self.job_id, self.ctx.owner, self.ctx.settings.loop.job_lease_s, self.progress, result, log_line
        )
        if cancel:
            raise JobCancelled("cancelled by request")

    def on_train_row(self, row: dict, total: int) -> None:
        """Trainer.on_log: step, losses, collapse statistics and ETA."""
        if "step" not in row:
            return
        if any(k.startswith("val/") for k in row):
            metrics = {k[4:]: round(v, 3) for k, v in row.items() if k.startswith("val/") and "/" not in k[4:]}
            self.beat(log_line=f"step {row['step']}: validation {metrics}", stage="train", validation=metrics)
            return
        step = row["step"]
        if self._step0 is None:  # the first step of this attempt shows whether it resumed from a checkpoint
            self._step0, self._t0 = step, time.time()
            self.beat(log_line=f"first logged training step of this attempt: {step}")
        rate = (step - self._step0) / max(time.time() - self._t0, 1e-6)
        eta = (total - step) / rate if rate > 0 else None
        keep = (
            "loss",
            "loss_sup",
            "loss_unsup",
            "loss_review",
            "loss_mix",
            "mean_peak",
            "low_peak_fraction",
            "agreement",
            "lr",
        )
        losses: dict[str, Any] = {k: round(float(row[k]), 6) for k in keep if k in row}
        self.beat(
            stage="train",
            step=step,
            total_steps=total,
            percent=round(100 * step / total, 1),
            eta_s=None if eta is None else round(eta, 1),
            **losses,
        )


def run_retrain(ctx: RetrainContext, job: Job, chunk_steps: int | None = None) -> Job | None:
    """Run (or resume) a claimed job. Returns the finished job, or None when `chunk_steps` training steps were
    done and more remain (the training checkpoint is saved; the caller releases the job for the next chunk).
    LeaseLost propagates: another worker owns the job now."""
    reporter = Reporter(ctx, job)
    try:
        result = _stages(ctx, job, reporter, chunk_steps)
        if result is None:
            return None
    except JobCancelled:
        return ctx.jobs.finish(job.id, ctx.owner, "cancelled", error="cancelled by request")
    except LeaseLost:
        raise
    except Exception as err:
        faults = int(ctx.jobs.get(job.id).result.get("transient_faults", 0))
        if isinstance(err, TRANSIENT_FAULTS) and faults < MAX_TRANSIENT_FAULTS:
            log.warning("retrain job %s: transient fault %d, retried: %s", job.id, faults + 1, err)
            reporter.beat(
                result={"transient_faults": faults + 1},
                log_line=f"transient fault {faults + 1} of {MAX_TRANSIENT_FAULTS} ({type(err).__name__}: {err}); "
                "the job is retried from its last recorded stage",
                force=True,
            )
            return None  # released like a finished chunk: the next poll or task resumes it
        log.exception("retrain job %s failed", job.id)
        return ctx.jobs.finish(job.id, ctx.owner, "failed", error=f"{type(err).__name__}: {err}")
    return ctx.jobs.finish(job.id, ctx.owner, "succeeded", result=result)


def _stages(ctx: RetrainContext, job: Job, reporter: Reporter, chunk_steps: int | None) -> dict[str, Any] | None:
    result = dict(job.result)  # the claimed row: earlier attempts' stages included
    if "plan" not in result:
        result["plan"] = _plan(ctx, job)
        reporter.beat(result={"plan": result["plan"]}, log_line=f"plan: {result['plan']}", stage="plan")
    plan = result["plan"]
    parent = ctx.registry.get(plan["parent"])
    checkpoint = parent.checkpoint_path
    if checkpoint is None:
        raise RegistryError(f"version {parent.version} has no training checkpoint to start from")
    config = _config(ctx.settings, checkpoint, job, plan)
    if "candidate" not in result:
        if "active_metric" not in result:
            reporter.beat(stage="baseline", force=True)
            result["active_metric"] = _score(checkpoint, config, plan)
            reporter.beat(
                result={"active_metric": result["active_metric"]},
                log_line=f"active version {parent.version}: {_summary(result['active_metric'])}",
            )
        if plan.get("recipe") == "distill":
            if "pseudo_labels" not in result:
                reporter.beat(log_line=f"labelling the pool with teacher {plan['teacher']}", stage="label", force=True)
                result["pseudo_labels"] = _pseudo_labels(ctx, config, plan, checkpoint)
                reporter.beat(result={"pseudo_labels": result["pseudo_labels"]}, log_line=_label_summary(result))
            config = _with_pseudo_labels(config, result["pseudo_labels"]["path"])
        trained = _train(ctx, config, checkpoint, plan, reporter, chunk_steps)
        if trained is None:
            return None
        result["training"] = trained
        reporter.beat(
            result={"training": trained},
            log_line=f"trained: {trained}",
            stage="register",
            force=True,
            step=trained["steps"],  # the last step run, logged or not
        )
        result["candidate_metric"] = _score(Path(trained["run_dir"]) / "best.pt", config, plan)
        reporter.beat(
            result={"candidate_metric": result["candidate_metric"]},
            log_line=f"candidate (last checkpoint): {_summary(result['candidate_metric'])}",
        )
        result["candidate"] = _register(ctx, job, config, plan, trained, result["active_metric"])
        reporter.beat(result={"candidate": result["candidate"]}, log_line=f"registered {result['candidate']}")
    if "gate" not in result:
        result["gate"] = _gate(ctx, job, plan, result)
        reporter.beat(
            result={"gate": result["gate"]},
            log_line=f"gate: {result['gate']['decision']} — {result['gate']['reason']}",
            stage="done",
            force=True,
        )
    return result


def _plan(ctx: RetrainContext, job: Job) -> dict[str, Any]:
    active = ctx.registry.active()
    if active is None:
        raise RegistryError("no active model version to start from")
    if active.checkpoint_path is None or not active.checkpoint_path.exists():
        raise RegistryError(
            f"active version {active.version} has no training checkpoint to start from "
            "(register models with their checkpoint)"
        )
    seq = ctx.uploads.max_seq()
    if seq == 0:
        raise ValueError("the unlabeled pool is empty: upload images first (POST /v1/unlabeled)")
    retrain = ctx.settings.retrain
    plan = {
        "parent": active.version,
        "unlabeled_seq": seq,
        "iterations": int(job.params.get("iterations") or retrain.iterations),
        "nproc": int(job.params.get("nproc") or retrain.train_nproc),
        "recipe": retrain.recipe,
        **_labeled_plan(ctx, active.checkpoint_path),
    }
    if retrain.recipe == "distill":
        if retrain.teacher != SELF_TEACHER and not Path(retrain.teacher).is_file():
            raise ValueError(
                f"retrain teacher {Path(retrain.teacher).name!r} not found: set POSELOOP_RETRAIN_TEACHER to a model "
                f"file or {SELF_TEACHER!r}"
            )
        plan["teacher"] = retrain.teacher
    return plan


def _labeled_plan(ctx: RetrainContext, checkpoint: Path) -> dict[str, Any]:
    """The labeled part of the plan, fixed at the first attempt like `unlabeled_seq`: the registered labeled
    snapshot (its records file), which split the gate scores on, and whether the active model's own dataset is
    on this machine (without it the job trains on the labeled train part alone)."""
    store = labeled_store(ctx.settings.loop.data_dir)
    seq = store.max_seq()
    readable = _dataset_readable(checkpoint)
    labeled: dict[str, Any] | None = None
    if seq:
        path = store.root / "snapshots" / f"labeled-{seq}.json"
        counts = store.export_records(path, seq)
        labeled = {"seq": seq, "records": str(path), "train_persons": counts["train"], "gate_persons": counts["gate"]}
    gate_persons = labeled["gate_persons"] if labeled else 0
    split = "labeled" if gate_persons >= MIN_LABELED_GATE_PERSONS else "configured"
    if not readable and (split != "labeled" or not labeled or not labeled["train_persons"]):
        raise ValueError(
            "the active model's training dataset is not on this machine (set POSELOOP_DATA), so the job needs "
            f"registered labeled data (POST /v1/labeled): at least {MIN_LABELED_GATE_PERSONS} persons in the gate "
            f"part and one in the train part (has {gate_persons} and {labeled['train_persons'] if labeled else 0})"
        )
    return {"labeled": labeled, "gate_split": split, "dataset_splits": readable}


def _dataset_readable(checkpoint: Path) -> bool:
    """Whether the checkpoint's configured labeled dataset (LSP under data.root, or the COCO/MPII files) exists."""
    import torch

    from training.config import TrainConfig
    from training.data import data_root

    data = TrainConfig.model_validate(torch.load(checkpoint, map_location="cpu", weights_only=True)["config"]).data
    if data.dataset == "lsp":
        try:
            return (data_root(data) / "lsp" / "joints.mat").is_file()
        except FileNotFoundError:
            return False
    return all(f is not None and Path(f).is_file() for f in (data.coco_ann_file, data.val_ann_file))


def _score(checkpoint: Path, config, plan: dict) -> dict[str, Any]:
    """gate.score_checkpoint on the plan's gate split: the labeled gate part, or the configured validation."""
    if plan.get("gate_split") != "labeled":
        return gate.score_checkpoint(checkpoint, config)
    from training.data import load_labeled_records, remap_record

    records = load_labeled_records(_labeled_records_file(plan))["gate"]
    return gate.score_checkpoint(checkpoint, config, [remap_record(r, config.data.model_schema) for r in records])


def _labeled_records_file(plan: dict) -> str:
    """The plan's labeled-records file (a redelivered job whose file is gone writes it again from the seq)."""
    labeled = plan["labeled"]
    path = Path(labeled["records"])
    if not path.is_file():
        LabeledStore(path.parent.parent).export_records(path, labeled["seq"])
    return str(path)


def _config(settings: Settings, checkpoint: Path, job: Job, plan: dict):
    """The active model's own training config (architecture, input, codec, labeled seed set, validation) with
    the continual recipe's method, the job's budget and any overrides from the request."""
    import torch

    from training.config import config_with, load_config

    base = torch.load(checkpoint, map_location="cpu", weights_only=True)["config"]
    # the student's labels come from this job's teacher, so a parent's own pseudo-labels never carry over
    data: dict[str, Any] = {"unlabeled": None, "num_workers": 0, "pseudo_labels": None}
    # registered labeled persons: the train part joins the labels (alone when the dataset is not here)
    data["labeled_records"] = _labeled_records_file(plan) if plan.get("labeled") else None
    data["labeled_records_only"] = not plan.get("dataset_splits", True)
    if plan.get("recipe") == "distill":
        recipe = load_config(settings.retrain.distill_config)
        noise = recipe.data.augment
        data["augment"] = {
            "occlusion_prob": noise.occlusion_prob,
            "occlusion_boxes": noise.occlusion_boxes,
            "occlusion_size": list(noise.occlusion_size),
        }
        data["pseudo_share"] = settings.retrain.distill_pseudo_share
        method = {"name": "supervised"}
    else:
        method = load_config(settings.retrain.config).method.model_dump(mode="json")
    n = plan["iterations"]
    return config_with(
        base,
        {
            "name": f"retrain-{job.id}",
            "output_dir": str(settings.loop.data_dir / "jobs"),
            "init_checkpoint": None,  # the job passes the active version's checkpoint explicitly
            "method": method,
            "model": {"pretrained": False},  # weights come from the active checkpoint
            "data": data,
            "optim": {"iterations": n, "lr": settings.retrain.lr},
            "schedule": {
                "log_every": max(1, min(10, n // 10)),
                # one validation, at the end: the candidate is the last checkpoint, so nothing is chosen on the
                # split the gate scores it on
                "val_every": n,
                "checkpoint_every": max(1, min(25, n // 4)),
            },
        },
        job.params.get("overrides") or [],
    )


def _with_pseudo_labels(config, path: str):
    from training.config import config_with

    return config_with(config.model_dump(mode="json"), {"data": {"pseudo_labels": path}})


def _pseudo_labels(ctx: RetrainContext, config, plan: dict, checkpoint: Path) -> dict[str, Any]:
    """distill: the plan's teacher labels the upload snapshot. The labels are cached by their inputs (teacher
    file hashes, TTA, filter, pool and calibration record ids) under the data dir, so a later chunk, a redelivered
    job or another job on the same snapshot reuses them instead of running the teacher again."""
    import torch

    from training.data import build_splits
    from training.distill import FilterSpec, TTAConfig, build_teacher, label_pool

    cache_root = ctx.settings.retrain.pseudo_label_dir or ctx.settings.loop.data_dir / "pseudo_labels"
    cache_root.mkdir(parents=True, exist_ok=True)  # an unusable volume fails here, before a teacher pass
    schema = config.data.model_schema
    pool = _unlabeled_records(ctx, plan, schema)
    calibration = build_splits(config.data).train[:CALIBRATION_RECORDS]
    source = checkpoint if plan["teacher"] == SELF_TEACHER else Path(plan["teacher"])
    teacher = build_teacher(source, schema, TTAConfig(), torch.get_num_threads())
    spec = FilterSpec(precision=ctx.settings.retrain.distill_precision)
    labels = label_pool(teacher, pool, cache_root, spec, calibration)
    counts = labels.provenance["counts"]
    if counts["persons_kept"] == 0:
        raise ValueError(
            f"the teacher's labels kept no pool person at precision {spec.precision} "
            f"(calibration {labels.provenance['calibration']}): lower POSELOOP_RETRAIN_DISTILL_PRECISION or use "
            "a better teacher"
        )
    members = labels.provenance["teacher"]["members"]
    return {
        "path": str(labels.path),
        "reused": labels.reused,
        "teacher": [{"kind": m["kind"], "sha256": m.get("sha256")} for m in members],
        "thresholds": labels.provenance["thresholds"],
        "calibration": labels.provenance["calibration"],
        "counts": counts,
    }


def _label_summary(result: dict[str, Any]) -> str:
    counts = result["pseudo_labels"]["counts"]
    reused = " (cached)" if result["pseudo_labels"]["reused"] else ""
    return (
        f"pseudo-labels{reused}: {counts['persons_kept']} of {counts['persons']} persons, "
        f"{counts['joints_kept']} joints kept"
    )


def _unlabeled_records(ctx: RetrainContext, plan: dict, schema: str):
    """The plan's upload snapshot, one person per box, without the images registered as labeled in the plan's
    labeled snapshot (their labels are better than a teacher's, and a gate image must never be trained on)."""
    from training.datasets.records import PersonRecord

    labeled = plan.get("labeled")
    exclude = labeled_store(ctx.settings.loop.data_dir).image_shas(labeled["seq"]) if labeled else set()
    records = []
    for item in ctx.uploads.snapshot(max_seq=plan["unlabeled_seq"]):
        if item.sha256 in exclude:
            continue
        for i, box in enumerate(item.boxes or [[0, 0, item.width, item.height]]):
            records.append(
                PersonRecord(
                    image_path=Path(item.path),
                    box=np.asarray(box, np.float32),
                    keypoints=None,
                    visibility=None,
                    schema=schema,
                    record_id=f"upload/{item.sha256}/{i}",
                )
            )
    return records


def _train(
    ctx: RetrainContext, config, init: Path, plan: dict, reporter: Reporter, chunk_steps: int | None
) -> dict[str, Any] | None:
    from training.engine import Trainer
    from training.evaluator import metric_name

    records = _unlabeled_records(ctx, plan, config.data.model_schema)
    # distill trains on the pseudo-labelled records (config.data.pseudo_labels), with no unlabeled branch
    unlabeled = None if config.data.pseudo_labels else records
    reporter.beat(
        log_line=f"training {config.optim.iterations} steps on {len(records)} unlabeled persons",
        stage="train",
        step=0,
        total_steps=config.optim.iterations,
    )
    nproc = int(plan.get("nproc") or ctx.settings.retrain.train_nproc)
    if nproc > 1:
        out = _train_under_torchrun(config, init, unlabeled or [], reporter, chunk_steps, nproc)
    else:
        trainer = Trainer(config, unlabeled=unlabeled, init_checkpoint=str(init))
        out = trainer.fit(
            resume=True,
            progress=False,
            stop_after=chunk_steps,
            on_log=lambda row: reporter.on_train_row(row, config.optim.iterations),
        ).summary()
    stopped = out["stopped"]
    if stopped is None and out["steps"] < config.optim.iterations:
        reporter.beat(
            log_line=f"checkpointed at step {out['steps']}; continuing in the next chunk", force=True, step=out["steps"]
        )
        return None
    return {
        "run_dir": out["run_dir"],
        "steps": out["steps"],
        "best_step": out["best_step"],
        "metric": metric_name(config.data.dataset),
        "value": round(out["best_metric"], 3),
        "collapse": stopped if stopped and "collapse" in stopped else None,
        "stopped": stopped,
        "unlabeled_persons": len(records),
    }


def _train_under_torchrun(
    config, init: Path, records, reporter: Reporter, chunk_steps: int | None, nproc: int
) -> dict[str, Any]:
    """The same chunk on `nproc` DDP processes (continual.ddp_chunk). Rank 0's metrics.jsonl rows become
    heartbeats here; a cancel or a lost lease stops the whole process group, leaving the last checkpoint."""
    import contextlib
    import json
    import os
    import signal
    import subprocess

    from continual.ddp_chunk import records_to_json
    from training.distributed import torchrun_argv, torchrun_env

    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "chunk_config.json").write_text(json.dumps(config.model_dump(mode="json")))
    (run_dir / "chunk_records.json").write_text(json.dumps(records_to_json(records)))
    result_path = run_dir / "chunk_result.json"
    result_path.unlink(missing_ok=True)
    args = [
        "--config",
        str(run_dir / "chunk_config.json"),
        "--records",
        str(run_dir / "chunk_records.json"),
        "--init",
        str(init),
        "--result",
        str(result_path),
    ]
    if chunk_steps is not None:
        args += ["--stop-after", str(chunk_steps)]
    metrics = run_dir / "metrics.jsonl"
    seen = len(metrics.read_text().splitlines()) if metrics.exists() else 0
    proc = subprocess.Popen(
        torchrun_argv(nproc, "continual.ddp_chunk", args), env=torchrun_env(nproc), start_new_session=True
    )
    try:
        while True:
            finished = proc.poll() is not None
            lines = metrics.read_text().splitlines() if metrics.exists() else []
            seen = min(seen, len(lines))  # a resumed chunk first trims rows written after its checkpoint
            for line in lines[seen:]:
                if line.strip():
                    reporter.on_train_row(json.loads(line), config.optim.iterations)
            seen = len(lines)
            if finished:
                break
            reporter.beat()
            time.sleep(HEARTBEAT_EVERY_S)
    except BaseException:  # the cancel or lease reason must propagate, not a failure to stop the group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        raise
    if proc.returncode != 0 or not result_path.exists():
        raise RuntimeError(f"torchrun training chunk failed with exit status {proc.returncode}")
    return json.loads(result_path.read_text())


def _register(ctx: RetrainContext, job: Job, config, plan: dict, trained: dict, active: dict) -> dict[str, Any]:
    for info in ctx.registry.list():  # a redelivered job finds the version it registered before dying
        if (info.meta.get("data_summary") or {}).get("job_id") == job.id:
            return {"version": info.version, "state": info.state}
    from training.checkpoints import export_checkpoint, save_compact

    run_dir = Path(trained["run_dir"])
    best = run_dir / "best.pt"
    if not best.exists():
        raise RuntimeError(f"training produced no checkpoint ({trained.get('stopped') or 'no validation ran'})")
    onnx_path = run_dir / "model.onnx"
    # stored like the bundled model: float16 weights in the ONNX (parity-checked by the export) and the checkpoint
    report = export_checkpoint(best, onnx_path, version=f"retrain-{job.id}", weights="float16")
    compact = save_compact(best, run_dir / "checkpoint.pt", released_as=f"retrain-{job.id}")
    info = ctx.registry.register(
        onnx_path,
        checkpoint_path=compact,
        parent=plan["parent"],
        actor=f"job:{job.id}",
        metrics={trained["metric"]: trained["value"], f"parent_{active['metric']}": active["value"]},
        data_summary={
            "job_id": job.id,
            "unlabeled_seq": plan["unlabeled_seq"],
            "unlabeled_persons": trained["unlabeled_persons"],
            "recipe": plan.get("recipe", "consistency"),
            "method": config.method.name,
            "teacher": plan.get("teacher"),
            "trained_on": config.data.dataset,
            "labeled_seq": (plan.get("labeled") or {}).get("seq"),
            "gate_split": plan.get("gate_split", "configured"),
        },
        config=config.model_dump(mode="json"),
    )
    freed = _free_run_dir(run_dir)
    return {
        "version": info.version,
        "state": info.state,
        "parity_max_abs": report.max_abs_diff,
        "parity_max_px": report.max_keypoint_diff_px,
        "freed_bytes": freed,
    }


# What a job directory keeps once its candidate is registered (the registry holds the model files): its logs,
# metrics and curve. Training checkpoints (last.pt ~130 MB) and the exported copies are deleted.
RUN_DIR_DISPOSABLE = ("last.pt", "best.pt", "checkpoint.pt", "model.onnx", "model.json")


def _free_run_dir(run_dir: Path) -> int:
    """Delete the job directory's large files after registration; returns the bytes freed."""
    freed = 0
    for name in RUN_DIR_DISPOSABLE:
        path = run_dir / name
        if path.is_file():
            freed += path.stat().st_size
            path.unlink()
    return freed


def _summary(score: dict[str, Any]) -> str:
    return f"{score['metric']} {score['value']} on {score['persons']} persons"


def _gate(ctx: RetrainContext, job: Job, plan: dict, result: dict) -> dict[str, Any]:
    """Promote only on evidence (continual.gate): both versions scored by one function on one split, paired
    bootstrap over persons, the interval's lower bound against the margin; the decision, both figures and the
    interval go into the job result and the audit reason."""
    version = result["candidate"]["version"]
    candidate = result["candidate_metric"]
    margin = float(job.params.get("margin", ctx.settings.retrain.promotion_margin))
    actor = f"job:{job.id}"
    evidence = gate.compare(candidate, result["active_metric"])
    verdict, reason = gate.decide(evidence, margin, result["training"]["collapse"])
    decision = {
        "candidate": version,
        "parent": plan["parent"],
        "candidate_value": evidence.candidate,
        "active_value": evidence.baseline,
        "metric": evidence.metric,
        "gain": evidence.delta,
        "ci_low": evidence.ci_low,
        "ci_high": evidence.ci_high,
        "persons": evidence.persons,
        "margin": margin,
        # which persons both models were scored on: "labeled" = the registered labels' gate part (never trained
        # on), "configured" = the active model's validation split from its training config
        "split": plan.get("gate_split", "configured"),
        "labeled_seq": (plan.get("labeled") or {}).get("seq"),
    }
    current = ctx.registry.get(version)
    if current.state == "active":
        return {**decision, "decision": "promoted", "reason": "already active"}
    if current.state == "rejected":
        return {**decision, "decision": "rejected", "reason": current.reason}
    if verdict == "promote":
        why_not = ctx.registry.promote_if(version, plan["parent"], actor, f"gate: {reason}")
        if why_not is None:
            return {**decision, "decision": "promoted", "reason": reason}
        return {**decision, "decision": "kept", "reason": why_not}
    ctx.registry.mark_rejected(version, reason, actor)
    return {**decision, "decision": "rejected", "reason": reason}
