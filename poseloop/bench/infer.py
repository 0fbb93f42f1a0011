"""CPU inference benchmark: PyTorch eager vs ONNX Runtime, persons/s and ms/person at batch 1 and 8.

Weights are random (speed does not depend on them); the ONNX file is the one `models.export.export_onnx`
writes (parity-checked), run through the serving backend, so the numbers are what serving gets.
Timing: 3 warm-up calls, then timed calls for `seconds` (at least 5); per-call median, so a stray slow call
(page faults, another process) does not move the number.
"""

from __future__ import annotations

import functools
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from models.codec import HeatmapCodec
from models.export import Exporter, export_onnx
from models.geometry import Size
from models.network import HEADS, ModelConfig, build_model
from models.schemas import SCHEMAS, KeypointSchema
from poseloop.bench.doc import git_commit, machine_description, markdown_table, replace_section
from serving.backends.onnxruntime import OnnxRuntimeBackend

SECTION = "Inference (CPU)"
DEFAULT_SIZES = (Size(96, 128), Size(192, 256))  # (w, h): 128x96 and 256x192 as H x W
WARMUP_CALLS = 3
MIN_TIMED_CALLS = 5


def run_infer_bench(
    model_config: ModelConfig,
    input_size: Size,
    threads: int = 2,
    batches: Sequence[int] = (1, 8),
    seconds: float = 3.0,
    exporter: Exporter = "dynamo",
) -> list[dict]:
    """One row per (runtime, batch) for `model_config` (random init) at `input_size` = Size(w, h)."""
    input_size = Size(*input_size)
    torch.manual_seed(0)
    model = build_model(model_config.model_copy(update={"pretrained": False, "weights_path": None})).eval()
    codec = HeatmapCodec.for_input(input_size, model.heatmap_stride)
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, 3, input_size.h, input_size.w)).astype(np.float32) for b in batches}
    base = {
        "backbone": model_config.backbone,
        "head": model_config.head,
        "head_channels": model_config.head_channels,
        "input": f"{input_size.h}x{input_size.w}",
        "threads": threads,
    }
    rows = []

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for b in batches:
            x = torch.from_numpy(inputs[b])

            def eager(x=x):
                with torch.inference_mode():
                    model(x)

            rows.append({**base, "runtime": "pytorch-eager", "batch": b, **measure_calls(eager, b, seconds)})
    finally:
        torch.set_num_threads(previous_threads)

    with tempfile.TemporaryDirectory() as tmp:
        report = export_onnx(
            model,
            codec,
            _schema_for(model_config.num_keypoints),
            Path(tmp) / "model.onnx",
            version="bench",
            trained_on="random-init",
            exporter=exporter,
        )
        backend = OnnxRuntimeBackend(
            report.path, intra_op_threads=threads, inter_op_threads=1, providers=["CPUExecutionProvider"]
        )
        try:
            for b in batches:
                rows.append(
                    {
                        **base,
                        "runtime": "onnxruntime",
                        "batch": b,
                        **measure_calls(functools.partial(backend.infer, inputs[b]), b, seconds),
                    }
                )
        finally:
            backend.close()
    return rows


def default_configs() -> list[ModelConfig]:
    """mobilenet_v2 + deconv head (128 channels), and + light head when models.heads has it."""
    configs = [ModelConfig(backbone="mobilenet_v2", pretrained=False, head="deconv", head_channels=128)]
    if "light" in HEADS.names():
        configs.append(ModelConfig(backbone="mobilenet_v2", pretrained=False, head="light", head_channels=128))
    return configs


def run_default_bench(
    threads: int = 2,
    seconds: float = 3.0,
    out: Path = Path("docs/benchmarks.md"),
    command: str = "poseloop bench infer",
) -> list[dict]:
    """Every default config at 128x96 and 256x192; writes the docs section and returns the rows."""
    rows = [
        row
        for config in default_configs()
        for size in DEFAULT_SIZES
        for row in run_infer_bench(config, size, threads=threads, seconds=seconds)
    ]
    write_benchmark_section(rows, path=out, command=command, seconds=seconds)
    return rows


def write_benchmark_section(
    rows: Sequence[dict],
    path: str | Path = "docs/benchmarks.md",
    section: str = SECTION,
    command: str = "poseloop bench infer",
    seconds: float | None = None,
) -> None:
    """Replace (or create) the `## section` of the markdown file with a table of `rows`; other sections stay."""
    threads = sorted({row["threads"] for row in rows})
    timing = f"~{seconds:g} s of timed calls per row" if seconds is not None else "timed calls"
    body = "\n".join(
        [
            f"Command: `{command}`",
            "",
            f"- Machine: {machine_description()}; {', '.join(map(str, threads))} intra-op thread(s) per runtime",
            f"- Software: torch {torch.__version__}, onnxruntime {ort.__version__}",
            f"- Commit: {git_commit()}",
            f"- Method: random-init weights, normalised random input; {WARMUP_CALLS} warm-up calls, then {timing} "
            f"(at least {MIN_TIMED_CALLS}); ms/person and persons/s from the median call, best ms/person from the "
            "fastest call (closer to an idle machine's figure when the CPU is shared). Load average at write time: "
            f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}. ONNX Runtime runs the exported, parity-checked file "
            "through `serving.backends.onnxruntime.OnnxRuntimeBackend` (CPU EP, inter-op threads 1).",
            "",
            markdown_table(
                ["model", "input (HxW)", "runtime", "batch", "ms/person", "persons/s", "best ms/person"],
                [
                    [
                        f"{r['backbone']} + {r['head']}{r['head_channels']}",
                        r["input"],
                        r["runtime"],
                        r["batch"],
                        f"{r['ms_per_person']:.2f}",
                        f"{r['persons_per_s']:.1f}",
                        f"{r['best_ms_per_person']:.2f}",
                    ]
                    for r in rows
                ],
            ),
        ]
    )
    replace_section(Path(path), section, body)


def measure_calls(call: Callable[[], object], batch: int, seconds: float) -> dict:
    """ms/person (median call), persons/s and best ms/person of `call` on `batch` persons: WARMUP_CALLS untimed
    calls, then at least MIN_TIMED_CALLS and at least `seconds` of timed ones."""
    for _ in range(WARMUP_CALLS):
        call()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < MIN_TIMED_CALLS or time.perf_counter() < deadline:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "ms_per_person": 1000.0 * median / batch,
        "persons_per_s": batch / median,
        "best_ms_per_person": 1000.0 * min(times) / batch,
        "calls": len(times),
    }


def _schema_for(num_keypoints: int) -> KeypointSchema:
    """A known schema with that many keypoints, else an anonymous one (names k0..; no flips, no skeleton)."""
    for schema in SCHEMAS.values():
        if schema.num_keypoints == num_keypoints:
            return schema
    return KeypointSchema(f"anonymous{num_keypoints}", tuple(f"k{i}" for i in range(num_keypoints)), (), ())
