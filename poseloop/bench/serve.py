"""HTTP serving benchmark: throughput and latency of POST /v1/pose per backend and concurrency, next to raw
in-process ONNX Runtime on the same model in the same run, plus the hot-swap (promotion) time.

Per backend a fresh registry holds the model twice (versions 1 and 2); a live server process
(`poseloop.serve.run_server`) promotes 1, an asyncio load generator (httpx.AsyncClient, one connection per
concurrent client) posts one JPEG with one person box for `duration_s` per concurrency level after a warm-up,
then version 2 is promoted while the server is idle and the promote call's timings are recorded.
Triton: tritonserver via serving.triton.server.TritonServer with serving.triton.backend.TritonBackend; skipped
with a note when those modules or the tritonserver binary are unavailable.

Ratios: HTTP c16 throughput / raw batched ORT throughput (batch 16, persons/s: how much of the network's
batched capacity the service delivers), and HTTP p99 at c1 / raw batch-1 latency (the per-request overhead of
HTTP + decode + crop + batching + JSON). The load generator shares the machine with the server.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import httpx
import numpy as np

from models.registry import ModelRegistry
from poseloop.bench.doc import git_commit, machine_description, markdown_table, replace_section
from poseloop.serve import serve_in_subprocess
from serving.backends.onnxruntime import OnnxRuntimeBackend

if TYPE_CHECKING:
    from serving.triton.server import TritonServer

SECTION = "Serving (HTTP)"
IMAGE_WH = (640, 480)
BOX = [200.0, 60.0, 220.0, 400.0]


def run_serve_bench(
    model_path: str | Path,
    backends: Sequence[str] = ("embedded", "triton"),
    concurrency: Sequence[int] = (1, 4, 16, 64),
    duration_s: float = 10.0,
    warmup_s: float = 2.0,
    threads: int = 2,
    max_batch: int = 16,
    max_wait_ms: float = 5.0,
    out: str | Path | None = "docs/benchmarks.md",
    command: str = "poseloop bench serve",
) -> dict:
    """Benchmark each backend (see module docstring); writes the `## Serving (HTTP)` section if `out`."""
    model_path = Path(model_path)
    raw = raw_ort(model_path, threads, max(duration_s / 2, 1.0), max_batch)
    results: dict = {"raw": raw, "backends": {}, "notes": []}
    body = _request_body()
    for backend in backends:
        try:
            results["backends"][backend] = _bench_backend(
                backend, model_path, body, concurrency, duration_s, warmup_s, threads, max_batch, max_wait_ms
            )
        except _Skip as skip:
            results["notes"].append(f"{backend}: skipped ({skip})")
    if out is not None:
        write_section(results, Path(out), command, duration_s, threads, max_batch, max_wait_ms)
    return results


def run_default_serve_bench(model: Path | None = None, **kwargs) -> dict:
    """`run_serve_bench` on `model`, or on a random-init MobileNetV2 + deconv head at 256×192 (exported here)."""
    if model is not None:
        return run_serve_bench(model, **kwargs)
    import torch  # the benchmark process may use torch; the server process it starts never does

    from models.codec import HeatmapCodec
    from models.export import export_onnx
    from models.geometry import Size
    from models.network import ModelConfig, build_model
    from models.schemas import LSP14

    torch.manual_seed(0)
    net = build_model(ModelConfig(backbone="mobilenet_v2", pretrained=False, num_keypoints=14)).eval()
    with tempfile.TemporaryDirectory(prefix="poseloop-bench-model-") as tmp:
        report = export_onnx(
            net,
            HeatmapCodec.for_input(Size(192, 256), net.heatmap_stride),
            LSP14,
            Path(tmp) / "model.onnx",
            version="bench",
            trained_on="random-init",
        )
        return run_serve_bench(report.path, **kwargs)


def raw_ort(model_path: Path, threads: int, seconds: float, batch: int = 16) -> dict:
    """Network only, in process: median batch-1 latency (ms) and batch-`batch` throughput (persons/s)."""
    backend = OnnxRuntimeBackend(model_path, intra_op_threads=threads, providers=["CPUExecutionProvider"])
    size = backend.metadata.input_size
    rng = np.random.default_rng(0)
    try:
        one = rng.standard_normal((1, 3, size.h, size.w), np.float32)
        many = rng.standard_normal((batch, 3, size.h, size.w), np.float32)
        single = _median_call_s(lambda: backend.infer(one), seconds)
        batched = _median_call_s(lambda: backend.infer(many), seconds)
    finally:
        backend.close()
    return {"single_ms": single * 1e3, "batched_persons_per_s": batch / batched, "batch": batch}


async def load_test(base: str, token: str, body: dict, concurrency: int, duration_s: float, warmup_s: float) -> dict:
    """`concurrency` clients posting back to back; returns throughput (req/s), latency percentiles (ms), errors."""
    latencies: list[float] = []
    errors: list[str] = []
    measuring = asyncio.Event()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base, timeout=60, limits=limits, headers={"Authorization": f"Bearer {token}"}
    ) as client:

        async def worker(deadline: float) -> None:
            while (now := time.perf_counter()) < deadline:
                try:
                    r = await client.post("/v1/pose", files=body)
                    ok, failure = r.status_code == 200, str(r.status_code)
                except httpx.HTTPError as err:
                    ok, failure = False, str(err)
                if measuring.is_set():
                    if ok:
                        latencies.append(time.perf_counter() - now)
                    else:
                        errors.append(failure)

        start = time.perf_counter()
        tasks = [asyncio.create_task(worker(start + warmup_s + duration_s)) for _ in range(concurrency)]
        await asyncio.sleep(warmup_s)
        measuring.set()
        measured_from = time.perf_counter()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - measured_from
    lat = np.sort(np.asarray(latencies)) * 1e3 if latencies else np.array([np.nan])
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": len(errors),
        "throughput_rps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


class _Skip(Exception):
    pass


def _bench_backend(
    backend: str,
    model_path: Path,
    body: dict,
    concurrency: Sequence[int],
    duration_s: float,
    warmup_s: float,
    threads: int,
    max_batch: int,
    max_wait_ms: float,
) -> dict:
    infer_token, ops_token = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory(prefix=f"poseloop-bench-{backend}-") as tmp, _backend_env(backend, tmp) as env:
        registry = ModelRegistry(Path(tmp) / "registry")
        for _ in range(2):
            registry.register(model_path, actor="bench")
        env = {
            **env,
            "POSELOOP_REGISTRY_DIR": str(registry.root),
            "POSELOOP_ORT_THREADS": str(threads),
            "POSELOOP_MAX_BATCH": str(max_batch),
            "POSELOOP_MAX_WAIT_MS": str(max_wait_ms),
            "POSELOOP_REGISTRY_POLL_S": "0",
            "POSELOOP_MAX_QUEUE": "4096",
            "POSELOOP_TOKENS": json.dumps({infer_token: ["infer"], ops_token: ["ops"]}),
        }
        with serve_in_subprocess(env, log_path=Path(tmp) / "server.log") as (base, _proc):
            ops = {"Authorization": f"Bearer {ops_token}"}
            first = httpx.post(base + "/v1/ops/promote", json={"version": "1"}, headers=ops, timeout=300)
            first.raise_for_status()
            rows = [asyncio.run(load_test(base, infer_token, body, c, duration_s, warmup_s)) for c in concurrency]
            swap_load, swap = asyncio.run(_swap_under_load(base, infer_token, ops, body, min(duration_s, 4.0)))
    return {
        "rows": rows,
        "first_load_ms": first.json()["timing_ms"],
        "hot_swap_ms": swap["timing_ms"],
        "swap_load": swap_load,
    }


async def _swap_under_load(
    base: str, token: str, ops_headers: dict, body: dict, seconds: float, concurrency: int = 4
) -> tuple[dict, dict]:
    """Promote version 2 in the middle of a `concurrency`-client load: (load row, promote response)."""
    load = asyncio.create_task(load_test(base, token, body, concurrency, seconds, warmup_s=0.5))
    await asyncio.sleep(0.5 + seconds / 3)
    async with httpx.AsyncClient(base_url=base, timeout=300, headers=ops_headers) as client:
        swap = await client.post("/v1/ops/promote", json={"version": "2"})
    swap.raise_for_status()
    return await load, swap.json()


class _backend_env:
    """Context manager: POSELOOP_* variables selecting the backend (starts tritonserver for "triton")."""

    def __init__(self, backend: str, tmp: str) -> None:
        self.backend, self.tmp = backend, Path(tmp)
        self.server: TritonServer | None = None

    def __enter__(self) -> dict[str, str]:
        if self.backend == "embedded":
            return {"POSELOOP_BACKEND": "embedded"}
        if self.backend != "triton":
            raise ValueError(f"unknown backend {self.backend!r}")
        try:
            import serving.triton.backend  # noqa: F401 - checks the backend is importable
            from serving.triton.server import TritonServer
        except ImportError as err:
            raise _Skip(f"Triton modules not importable: {err}") from err
        server = self.server = TritonServer(self.tmp / "triton_repo", log_path=self.tmp / "tritonserver.log")
        try:
            server.start()
        except Exception as err:
            raise _Skip(f"tritonserver cannot run here: {str(err).splitlines()[0]}") from err
        env = {
            "POSELOOP_BACKEND": "triton",
            "POSELOOP_TRITON_URL": server.url,
            "POSELOOP_TRITON_REPOSITORY": str(server.repo),
            "POSELOOP_TRITON_REPOSITORY_SECRET": server.repository_secret,
        }
        if server.grpc_url:
            env["POSELOOP_TRITON_GRPC_URL"] = server.grpc_url
        return env

    def __exit__(self, *exc) -> None:
        if self.server is not None:
            self.server.stop()


def write_section(
    results: dict, out: Path, command: str, duration_s: float, threads: int, max_batch: int, max_wait_ms: float
) -> None:
    raw = results["raw"]
    table, notes = [], list(results["notes"])
    for backend, res in results["backends"].items():
        rows = {r["concurrency"]: r for r in res["rows"]}
        for r in res["rows"]:
            table.append(
                [
                    backend,
                    r["concurrency"],
                    r["requests"],
                    r["errors"],
                    f"{r['throughput_rps']:.1f}",
                    f"{r['p50_ms']:.1f}",
                    f"{r['p95_ms']:.1f}",
                    f"{r['p99_ms']:.1f}",
                ]
            )
        ratios = []
        if 16 in rows:
            ratios.append(
                f"HTTP c16 throughput / raw batched ORT = {rows[16]['throughput_rps']:.1f} / "
                f"{raw['batched_persons_per_s']:.1f} = {rows[16]['throughput_rps'] / raw['batched_persons_per_s']:.2f}"
            )
        if 1 in rows:
            ratios.append(
                f"p99 c1 / raw single latency = {rows[1]['p99_ms']:.1f} / {raw['single_ms']:.2f} ms = "
                f"{rows[1]['p99_ms'] / raw['single_ms']:.1f}×"
            )
        swap, under = res["hot_swap_ms"], res["swap_load"]
        notes.append(
            f"{backend}: {'; '.join(ratios)}; hot swap (promote 1 → 2 under a 4-client load: "
            f"{under['requests']} requests, {under['errors']} errors, p99 {under['p99_ms']:.1f} ms): "
            f"load + warm-up {swap['load']:.0f} ms, flip {swap['flip']:.3f} ms, whole call "
            f"{swap['total']:.0f} ms"
        )
    body = "\n".join(
        [
            f"Command: `{command}`",
            "",
            f"- Machine: {machine_description()}; commit {git_commit()}",
            f"- Method: one {IMAGE_WH[0]}×{IMAGE_WH[1]} JPEG with one person box per request (multipart), "
            f"{duration_s:g} s measured per row after a warm-up; ONNX Runtime intra-op threads {threads}; "
            f"micro-batching max_batch {max_batch}, max_wait {max_wait_ms:g} ms. Load generator: httpx.AsyncClient "
            "in the same machine (it competes with the server for the CPU).",
            f"- Raw in-process ONNX Runtime, same model and threads: batch 1 {raw['single_ms']:.2f} ms (median), "
            f"batch {raw['batch']} {raw['batched_persons_per_s']:.1f} persons/s",
            "",
            markdown_table(
                ["backend", "concurrency", "requests", "errors", "req/s", "p50 ms", "p95 ms", "p99 ms"], table
            ),
            "",
            *[f"- {n}" for n in notes],
        ]
    )
    replace_section(out, SECTION, body)


def _request_body() -> dict:
    rng = np.random.default_rng(0)
    low = rng.uniform(0, 255, (6, 8, 3)).astype(np.float32)
    image = cv2.resize(low, IMAGE_WH, interpolation=cv2.INTER_CUBIC).astype(np.uint8)
    jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    return {"image": ("bench.jpg", jpeg, "image/jpeg"), "boxes": (None, json.dumps([BOX]))}


def _median_call_s(call, seconds: float, min_calls: int = 5) -> float:
    for _ in range(3):
        call()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < min_calls or time.perf_counter() < deadline:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
