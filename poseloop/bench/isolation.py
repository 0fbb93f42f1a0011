"""`poseloop bench isolation`: /v1/pose latency while a training process shares the box, with and without the
worker's isolation (poseloop.worker.isolation: niceness, threads, cores), as ratios to the idle latency in the
same run.

A live server (the bundled model, one person box per request, as `poseloop bench serve`) is measured at one
client for `seconds` three times: idle; while a trainer runs as the worker would run it (isolated with the
default loop settings); and while the same trainer runs at the API's priority on every thread and core. The
trainer is the real training loop on LSP crops (configs/quick.yaml with a long step budget), started fresh per
phase and stopped after it; the load generator shares the machine too, as a client on the same box would.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from models.registry import ModelRegistry
from poseloop.bench.doc import git_commit, machine_description, markdown_table, replace_section
from poseloop.bench.serve import _request_body, load_test
from poseloop.serve import serve_in_subprocess

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "artifacts" / "lsp14-mbv2-128x96" / "v1" / "model.onnx"
SECTION = "Serving isolation (API latency while training)"
TRAINER = """
import os, sys
from continual.settings import load_settings
from poseloop.worker.isolation import isolate
from training.config import load_config
from training.engine import Trainer
if sys.argv[1] == "isolated":
    isolate(load_settings(data_dir=sys.argv[2]))
cfg = load_config("configs/quick.yaml", [f"output_dir={sys.argv[2]}", "name=load", "optim.iterations=100000",
                                         "schedule.val_every=100000", "schedule.checkpoint_every=100000"])
Trainer(cfg).fit(progress=False)
"""


def _trainer(mode: str, work: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", TRAINER, mode, str(work)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def run_isolation_bench(seconds: float, threads: int, warmup_s: float = 5.0) -> dict:
    token, ops = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    body = _request_body()
    phases: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="poseloop-bench-isolation-") as tmp:
        registry = ModelRegistry(Path(tmp) / "registry")
        info = registry.register(MODEL, actor="bench")
        registry.set_active(info.version, "bench")
        env = {
            "POSELOOP_REGISTRY_DIR": str(registry.root),
            "POSELOOP_ORT_THREADS": str(threads),
            "POSELOOP_REGISTRY_POLL_S": "0",
            "POSELOOP_TOKENS": json.dumps({token: ["infer"], ops: ["ops"]}),
        }
        with serve_in_subprocess(env, log_path=Path(tmp) / "server.log") as (base, _proc):
            phases["idle"] = asyncio.run(load_test(base, token, body, 1, seconds, warmup_s))
            for mode in ("isolated", "unisolated"):
                trainer = _trainer(mode, Path(tmp) / mode)
                try:
                    time.sleep(warmup_s)  # the trainer reads its data and reaches steady training steps
                    if trainer.poll() is not None:
                        raise RuntimeError(f"the {mode} trainer exited with {trainer.returncode}")
                    phases[mode] = asyncio.run(load_test(base, token, body, 1, seconds, warmup_s))
                finally:
                    trainer.terminate()
                    trainer.wait(timeout=60)
    idle = phases["idle"]["p50_ms"]
    return {
        "phases": phases,
        "p50_ratio": {k: round(v["p50_ms"] / idle, 2) for k, v in phases.items()},
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }


def write_section(result: dict, out: Path, command: str) -> None:
    rows = [
        [
            phase,
            f"{r['p50_ms']:.1f}",
            f"{r['p95_ms']:.1f}",
            f"{result['p50_ratio'][phase]:.2f}×",
            r["requests"],
            r["errors"],
        ]
        for phase, r in result["phases"].items()
    ]
    body = (
        f"Command: `{command}` · {machine_description()} · commit {git_commit()} · {time.strftime('%Y-%m-%d')} · "
        f"load average at the end {result['load_avg']} (anything else running on the box shows up here).\n\n"
        "One client posting one person box to the bundled model, back to back; `isolated` = a real training "
        "loop running as the worker runs it (nice 10, every core but one thread-wise, off core 0: "
        "poseloop.worker.isolation defaults); `unisolated` = the same loop at the API's priority on every "
        "thread and core. Target (issue 17): p50 while training ≤ 1.5× idle.\n\n"
        + markdown_table(["phase", "p50 ms", "p95 ms", "p50 / idle", "requests", "errors"], rows)
        + "\n"
    )
    replace_section(out, SECTION, body)
