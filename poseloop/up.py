"""`poseloop up`: the whole stack as one supervised process group with prefixed, readable logs.

Embedded (nothing configured): API (in-process ONNX Runtime) + embedded worker (which also schedules).
With POSELOOP_BROKER_URL: API + Celery `train` worker (solo, one job at a time) + Celery `ingest` worker +
exactly one `celery beat`. A child that dies is restarted (with backoff). A worker that keeps dying is given up
on — loudly, every minute — while the API keeps serving: a broken worker must not take inference down. Only
an API that keeps dying stops the stack. Ctrl-C / SIGTERM stops every child (SIGTERM, then SIGKILL after a grace
period).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from continual.settings import ROLES
from poseloop.demo import TOKENS_FILE

GRACE_S = 15.0
CELERY = [sys.executable, "-m", "celery", "-A", "poseloop.worker.tasks"]


@dataclass
class Child:
    name: str
    argv: list[str]
    essential: bool = False  # the stack stops when an essential child (the API) keeps dying
    proc: subprocess.Popen | None = None
    restarts: list[float] = field(default_factory=list)
    next_start: float | None = None  # when a dead child is started again (backoff); None while it runs
    given_up: bool = False


def dev_tokens() -> dict[str, str]:
    return {role: f"dev-{role}-{secrets.token_urlsafe(18)}" for role in ROLES}


def celery_worker_argv(queue: str) -> list[str]:
    """`train`: one job at a time (solo pool, prefetch 1: a GPU trains one model); `ingest`: light CPU checks."""
    if queue == "train":
        return [
            *CELERY,
            "worker",
            "-Q",
            "train",
            "-P",
            "solo",
            "-c",
            "1",
            "-n",
            "train@%h",
            "--prefetch-multiplier",
            "1",
            "--loglevel",
            "INFO",
        ]
    return [*CELERY, "worker", "-Q", queue, "-c", "1", "-n", f"{queue}@%h", "--loglevel", "INFO"]


def celery_beat_argv(data_dir: str) -> list[str]:
    """The schedule file lives in the (writable, persistent) data dir; run exactly one beat per deployment."""
    return [*CELERY, "beat", "--loglevel", "INFO", "--schedule", os.path.join(data_dir, "celerybeat-schedule")]


def stack(broker: bool, port: int) -> list[Child]:
    api = Child("api", [sys.executable, "-m", "poseloop.cli", "serve", "--port", str(port)], essential=True)
    if not broker:
        return [api, Child("worker", [sys.executable, "-m", "poseloop.cli", "worker"])]
    return [
        api,
        Child("train", celery_worker_argv("train")),
        Child("ingest", celery_worker_argv("ingest")),
        Child("beat", celery_beat_argv(os.environ.get("POSELOOP_DATA_DIR", "runs/data"))),
    ]


class Supervisor:
    """Starts the children, restarts the dead ones with backoff (2, 4, 8, 10 s…), gives up on a non-essential
    child after `max_restarts` deaths within a minute and stops the stack when an essential one does."""

    def __init__(
        self, children: list[Child], env: dict[str, str], max_restarts: int = 5, backoff_cap_s: float = 10.0
    ) -> None:
        self.children, self.env = children, env
        self.max_restarts, self.backoff_cap_s = max_restarts, backoff_cap_s
        self.stopping = threading.Event()
        self._print = threading.Lock()

    def say(self, name: str, line: str) -> None:
        with self._print:
            sys.stdout.write(f"[{name:>6}] {line.rstrip()}\n")
            sys.stdout.flush()

    def _start(self, child: Child) -> None:
        child.proc = subprocess.Popen(
            child.argv,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        threading.Thread(target=self._pump, args=(child, child.proc), daemon=True).start()

    def _pump(self, child: Child, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None, "_start opens the child with stdout=PIPE"
        for line in proc.stdout:
            self.say(child.name, line)

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stopping.set())
        for child in self.children:
            self._start(child)
        while not self.stopping.wait(0.2):
            for child in self.children:
                self._watch(child)
        self.stop()
        return 0

    def _watch(self, child: Child) -> None:
        now = time.time()
        if child.given_up:
            if child.next_start is not None and now >= child.next_start:  # keep saying so, once a minute
                self.say("up", f"{child.name} is down (it kept dying); the API keeps serving — see its log above")
                child.next_start = now + 60.0
            return
        if child.next_start is not None:
            if now >= child.next_start:
                child.next_start = None
                self._start(child)
            return
        assert child.proc is not None, "every child was started by run()"
        code = child.proc.poll()
        if code is None:
            return
        child.restarts = [t for t in child.restarts if now - t < 60] + [now]
        if len(child.restarts) > self.max_restarts:
            if child.essential:
                self.say("up", f"{child.name} keeps dying (exit {code}); stopping the stack")
                self.stopping.set()
            else:
                self.say("up", f"{child.name} keeps dying (exit {code}); giving up on it, the API keeps serving")
                child.given_up, child.next_start = True, now + 60.0
            return
        delay = min(2.0 ** len(child.restarts), self.backoff_cap_s)
        self.say("up", f"{child.name} exited with {code}; restarting in {delay:g} s")
        child.next_start = now + delay

    def stop(self) -> None:
        self.say("up", "stopping…")
        for child in self.children:
            if child.proc and child.proc.poll() is None:
                os.killpg(child.proc.pid, signal.SIGTERM)
        deadline = time.time() + GRACE_S
        for child in self.children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait()
        self.say("up", "stopped")


def run_up(port: int, bootstrap_model: str | None) -> int:
    env = dict(os.environ)
    tokens = None
    if "POSELOOP_TOKENS" not in env:
        tokens = dev_tokens()
        env["POSELOOP_TOKENS"] = json.dumps(
            {tok: {"roles": [role], "name": f"dev-{role}"} for role, tok in tokens.items()}
        )
        env["POSELOOP_DEV"] = "1"
    if bootstrap_model:
        env["POSELOOP_BOOTSTRAP_MODEL"] = bootstrap_model
    broker = bool(env.get("POSELOOP_BROKER_URL"))
    children = stack(broker, port)
    print(
        f"PoseLoop: http://127.0.0.1:{port}  (docs /docs, metrics /metrics) — queue: "
        f"{'Celery/Redis ' + env['POSELOOP_BROKER_URL'] if broker else 'embedded (SQLite job table)'} — "
        f"processes: {', '.join(c.name for c in children)}",
        flush=True,
    )
    if tokens:
        data_dir = Path(env.get("POSELOOP_DATA_DIR", "runs/data"))
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / TOKENS_FILE
        path.touch(mode=0o600)
        path.write_text(json.dumps(tokens))
        for role, tok in tokens.items():
            print(f"  dev token ({role}): {tok}", flush=True)
        print(f"  (also in {path}; `poseloop demo` reads them from there)", flush=True)
    return Supervisor(children, env).run()
