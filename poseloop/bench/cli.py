"""`poseloop bench ...` commands (results go to docs/benchmarks.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (results go to docs/benchmarks.md).")


@bench_app.command("infer")
def bench_infer(
    threads: int = typer.Option(2, help="Intra-op threads for both runtimes."),
    out: Path = typer.Option(Path("docs/benchmarks.md")),
    seconds: float = typer.Option(3.0, help="Measurement time per row."),
):
    """persons/s and ms/person: PyTorch eager vs ONNX Runtime at batch 1 and 8."""
    from poseloop.bench.infer import run_default_bench

    rows = run_default_bench(threads=threads, seconds=seconds, out=out, command=" ".join(["poseloop", *sys.argv[1:]]))
    for row in rows:
        typer.echo(json.dumps(row))


@bench_app.command("supervised")
def bench_supervised(
    out: Path = typer.Option(Path("docs/benchmarks.md")),
    only: list[str] = typer.Option([], help="Run only rows whose label contains this text (repeatable)."),
    threads: int | None = typer.Option(None, help="torch intra-op threads (run several benches side by side)."),
):
    """Supervised LSP PCK@0.2 for N = 100, 200, 800 labels, ImageNet vs random init (resumable, cached rows)."""
    import torch

    from poseloop.bench.supervised import run_supervised_bench

    if threads:
        torch.set_num_threads(threads)
    run_supervised_bench(out=out, only=only, command=" ".join(["poseloop", *sys.argv[1:]]))


@bench_app.command("serve")
def bench_serve(
    model: Path | None = typer.Option(
        None, exists=True, help="ONNX model (default: a random-init MobileNetV2 + deconv head, exported here)."
    ),
    backend: list[str] = typer.Option(["embedded", "triton"], help="Backends to run (repeatable)."),
    concurrency: list[int] = typer.Option([1, 4, 16, 64], help="Concurrent clients per row (repeatable)."),
    seconds: float = typer.Option(10.0, help="Measured seconds per row (after a 2 s warm-up)."),
    threads: int = typer.Option(2, help="ONNX Runtime intra-op threads (server and raw baseline)."),
    out: Path = typer.Option(Path("docs/benchmarks.md")),
):
    """HTTP /v1/pose throughput and p50/p95/p99 per backend and concurrency, vs raw in-process ONNX Runtime."""
    from poseloop.bench.serve import run_default_serve_bench

    result = run_default_serve_bench(
        model,
        backends=tuple(backend),
        concurrency=tuple(concurrency),
        duration_s=seconds,
        threads=threads,
        out=out,
        command=" ".join(["poseloop", *sys.argv[1:]]),
    )
    typer.echo(json.dumps(result, indent=2))


@bench_app.command("ssl")
def bench_ssl(
    profile: str = typer.Option(
        "quick", help="quick (a smoke run of every preset; the v1 full table is historical: see `bench ssl-v2`)."
    ),
    out: Path = typer.Option(Path("docs/benchmarks.md")),
    results: Path = typer.Option(Path("docs/results"), help="Where row results (and runs/) are kept."),
    only: list[str] = typer.Option([], help="Run only these rows (method names; the init row always runs)."),
    threads: int | None = typer.Option(None, help="torch intra-op threads."),
):
    """Every semi-supervised preset on the LSP-SSL protocol: PCK@0.2, gap closure, wall time, collapse flag."""
    import torch

    from poseloop.bench.ssl import run_ssl_bench

    if threads:
        torch.set_num_threads(threads)
    typer.echo(json.dumps(run_ssl_bench(profile, out, results, only or None), indent=2)[:4000])


@bench_app.command("ssl-v2")
def bench_ssl_v2(
    profile: str = typer.Option("v2", help="v2 (the LSP-SSL v2 table) or v2-quick (a smoke run through real data)."),
    out: Path = typer.Option(Path("docs/benchmarks.md")),
    results: Path = typer.Option(Path("docs/results"), help="Where ssl_<profile>.json and runs/ are kept."),
    only_method: list[str] = typer.Option([], "--only-method", help="Run only this method's rows (repeatable)."),
    only_labels: list[int] = typer.Option([], "--only-labels", help="Run only rows with this label budget N."),
    only_seed: list[int] = typer.Option([], "--only-seed", help="Run only rows with this seed."),
    distill: bool = typer.Option(False, "--distill/--no-distill", help="Include the distill rows (poseloop.distill)."),
    threads: int | None = typer.Option(None, help="torch intra-op threads (two benches side by side: 1 each)."),
):
    """LSP-SSL protocol v2: every preset from ImageNet init at N = 100/200/400, Δ on the 500-person report split."""
    import torch

    from poseloop.bench.ssl_v2 import run_ssl_v2_bench

    if threads:
        torch.set_num_threads(threads)
    rows = run_ssl_v2_bench(profile, out, results, only_method or None, only_labels or None, distill, only_seed or None)
    summary = {r["label"]: r["metrics"]["pck_limbs"] if r.get("done") else r.get("status") for r in rows.values()}
    typer.echo(json.dumps(summary, indent=2))


@bench_app.command("retrain")
def bench_retrain(
    work: Path = typer.Option(Path("runs/bench_retrain"), help="Registry, uploads and job of the run (resumable)."),
    uploads: int = typer.Option(1000, min=1, help="LSPET images uploaded, with their person boxes."),
    iterations: int | None = typer.Option(None, min=1, help="Retrain steps (default: the retrain setting)."),
    teacher: str | None = typer.Option(None, help="POSELOOP_RETRAIN_TEACHER for this run."),
    recipe: str | None = typer.Option(None, help="POSELOOP_RETRAIN_RECIPE for this run (distill|consistency)."),
    threads: int | None = typer.Option(None, help="torch intra-op threads."),
    out: Path = typer.Option(Path("docs/benchmarks.md")),
    results: Path = typer.Option(Path("docs/results/retrain.json")),
):
    """One default retrain of the bundled model on LSPET uploads: the gate's decision and interval, the
    pseudo-label counts, the wall time."""
    import torch

    from core.fileio import atomic_write_bytes
    from poseloop.bench.retrain import run_retrain_bench, write_section

    if threads:
        torch.set_num_threads(threads)
    overrides = {k: v for k, v in {"retrain_teacher": teacher, "retrain_recipe": recipe}.items() if v is not None}
    record = run_retrain_bench(work, uploads, iterations, overrides)
    atomic_write_bytes(results, json.dumps(record, indent=2).encode())
    write_section(record, out, " ".join(["poseloop", *sys.argv[1:]]))
    typer.echo(json.dumps(record.get("result", {}).get("gate"), indent=2))


@bench_app.command("compare")
def bench_compare(
    model: list[Path] = typer.Option(
        [], "--model", exists=True, help="Pose ONNX (repeatable; default: bundled + MoveNet)."
    ),
    threads: int = typer.Option(2, help="ONNX Runtime intra-op threads (pose models and detector)."),
    limit: int | None = typer.Option(None, min=1, help="Only the first N validation persons (a smoke run)."),
    out: Path = typer.Option(Path("docs/benchmarks.md")),
    results: Path = typer.Option(Path("docs/results/compare.json")),
):
    """PoseLoop vs MoveNet on LSP val im0801–1000: PCK@0.2 limbs with tight, detector and whole-image boxes."""
    import os

    from core.fileio import atomic_write_bytes
    from poseloop.bench.compare import DEFAULT_MODELS, run_compare, write_section
    from training.datasets import default_data_root, lsp_split

    root = default_data_root()
    records = lsp_split(root, "val")[:limit]
    load = os.getloadavg()
    record = run_compare(records, model or DEFAULT_MODELS, threads, coco_root=root / "fixtures" / "coco")
    record["load_average_at_start"] = list(load)
    atomic_write_bytes(results, json.dumps(record, indent=2).encode())
    note = f" · load average at start {load[0]:.1f} (other jobs at nice 19 on the same cores)"
    write_section(record, out, " ".join(["poseloop", *sys.argv[1:]]), note)
    for row in record["rows"]:
        typer.echo(json.dumps({k: row[k]["pck_limbs"] for k in ("tight", "detector", "detector_best_iou", "whole")}))


@bench_app.command("int8")
def bench_int8(
    calibration_images: int = typer.Option(200, min=1, max=800, help="LSP training images to calibrate on."),
    threads: int = typer.Option(2, help="ONNX Runtime intra-op threads."),
    work: Path = typer.Option(Path("runs/int8"), help="Where the quantised files go (never artifacts/)."),
    out: Path = typer.Option(Path("docs/benchmarks.md")),
    results: Path = typer.Option(Path("docs/results/int8.json")),
):
    """Static INT8 (QDQ) vs fp32: bundled LSP-14 model PCK and ms/person, the detector's speed and boxes."""
    from core.fileio import atomic_write_bytes
    from poseloop.bench.int8 import run_int8_bench, write_section
    from training.datasets import default_data_root, lsp_split

    root = default_data_root()
    record = run_int8_bench(root, lsp_split(root, "val"), work, calibration_images, threads)
    atomic_write_bytes(results, json.dumps(record, indent=2).encode())
    write_section(record, out, " ".join(["poseloop", *sys.argv[1:]]))
    typer.echo(json.dumps([{r["variant"]: r["pck_limbs"]} for r in record["rows"]] + [record["detector"]["speedup"]]))


@bench_app.command("isolation")
def bench_isolation(
    seconds: float = typer.Option(15.0, help="Measured seconds per phase (after a 5 s warm-up)."),
    threads: int = typer.Option(2, help="The API's ONNX Runtime intra-op threads."),
    out: Path = typer.Option(Path("docs/benchmarks.md")),
):
    """/v1/pose p50 while a training loop runs, isolated as the worker runs it and not, as ratios to idle."""
    from poseloop.bench.isolation import run_isolation_bench, write_section

    result = run_isolation_bench(seconds, threads)
    write_section(result, out, " ".join(["poseloop", *sys.argv[1:]]))
    typer.echo(json.dumps(result["p50_ratio"], indent=2))


@bench_app.command("decode")
def bench_decode(
    images: int = typer.Option(40, min=1, max=200, help="LSP val photos (im0801–) enlarged to each size."),
    model: Path | None = typer.Option(None, exists=True, help="Pose ONNX (default: the bundled model)."),
    threads: int = typer.Option(2, help="ONNX Runtime intra-op threads (pose model and detector)."),
    repeat: int = typer.Option(5, min=1, help="Timed runs per photo (median)."),
    out: Path = typer.Option(Path("docs/benchmarks.md")),
    results: Path = typer.Option(Path("docs/results/decode.json")),
):
    """1920×1080 and 4000×3000 JPEGs: reduced vs full decode, ms and PCK, detector + pose as /v1/pose."""
    from core.fileio import atomic_write_bytes
    from poseloop.bench.decode import run_decode_bench, write_section
    from poseloop.workflows import default_model_path
    from training.datasets import default_data_root, lsp_split

    chosen = model or default_model_path()
    if chosen is None:
        raise typer.BadParameter("no bundled model; pass --model")
    record = run_decode_bench(lsp_split(default_data_root(), "val")[:images], Path(chosen), threads, repeat)
    atomic_write_bytes(results, json.dumps(record, indent=2).encode())
    write_section(record, out, " ".join(["poseloop", *sys.argv[1:]]))
    for row in record["rows"]:
        typer.echo(json.dumps({k: row[k] for k in ("size", "decode_speedup", "total_speedup", "pck_delta")}))
