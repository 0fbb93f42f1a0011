"""A real redis-server (AOF on, loopback, random port) and real Celery worker processes for the loop tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from tests.serving_fixtures import free_port

REPO = Path(__file__).resolve().parent.parent


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.dir, self.port = directory, free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis(port=self.port)
        deadline = time.time() + 20
        while True:
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    return
            if time.time() > deadline:
                raise TimeoutError("redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: redis flushes the AOF and exits
            self.proc.wait(20)


class CeleryWorker:
    """`celery -A poseloop.worker.tasks worker` as the train worker runs in production (solo, one job)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env, self.log_path = env, log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> CeleryWorker:
        log = open(self.log_path, "a")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "poseloop.worker.tasks",
                "worker",
                "-Q",
                "train,ingest",
                "-P",
                "solo",
                "-c",
                "1",
                "--prefetch-multiplier",
                "1",
                "-n",
                f"test{time.time_ns()}@%h",
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
            ],
            cwd=REPO,
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill9()


def loop_env(root: Path, broker_url: str, **extra: str) -> dict[str, str]:
    env = {
        "POSELOOP_REGISTRY_DIR": str(root / "registry"),
        "POSELOOP_DATA_DIR": str(root / "data"),
        "POSELOOP_BROKER_URL": broker_url,
        "POSELOOP_VISIBILITY_TIMEOUT_S": "10",
        "POSELOOP_JOB_LEASE_S": "6",
        "POSELOOP_RETRAIN_CHUNK_STEPS": "3",
        "POSELOOP_RETRAIN_MIN_NEW_IMAGES": "100000",
        "POSELOOP_ORPHAN_AFTER_S": "0",
        "POSELOOP_WORKER_METRICS_PORT": "0",  # a test that scrapes a worker gives it a free port
        "OMP_NUM_THREADS": "1",
    }
    env.update(extra)
    return env
