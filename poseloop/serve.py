"""`poseloop serve`: run the HTTP API (serving.app) under uvicorn. Never imports torch.

Dev mode (POSELOOP_DEV=1 or `dev=True`, no tokens configured) prints one generated bearer token per role at
start; use them as `Authorization: Bearer <token>`. They live as long as the process.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from continual.settings import Settings, setup_process_logging


@contextlib.contextmanager
def managed_triton(settings: Settings) -> Iterator[Settings]:
    """For backend=triton with `triton_managed`: start a real tritonserver (from the nvidia-pytriton wheel) with
    its repository under the registry dir and a fresh repository-API secret; stop it (and its stubs) on exit."""
    if settings.inference.backend != "triton" or not settings.triton.managed:
        yield settings
        return
    import secrets

    from serving.triton.server import TritonServer

    repo = Path(settings.registry.dir) / "triton_repository"
    server = TritonServer(
        repo, repository_secret=secrets.token_urlsafe(24), log_path=Path(settings.registry.dir) / "tritonserver.log"
    )
    server.start()
    print(f"tritonserver (managed) at {server.url}, repository {repo}", file=sys.stderr)
    try:
        yield settings.updated(
            triton_url=server.url,
            triton_grpc_url=server.grpc_url,
            triton_repository=repo,
            triton_repository_secret=server.repository_secret,
        )
    finally:
        server.stop()


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def run_server(settings: Settings) -> None:
    """Serve on settings.api.host:settings.api.port until interrupted (starting a managed tritonserver if configured).

    uvicorn re-raises SIGTERM after its graceful shutdown; turning it into SystemExit lets the managed
    tritonserver (and anything else held here) be stopped instead of orphaned.
    """
    import signal

    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with managed_triton(settings) as effective:
        _run_uvicorn(effective)


def _run_uvicorn(settings: Settings) -> None:
    import uvicorn

    from serving.app import create_app

    setup_process_logging(settings)
    app = create_app(settings)
    if app.state.dev_tokens:
        print("PoseLoop dev mode: generated API tokens (valid for this process only):", file=sys.stderr)
        for role, token in app.state.dev_tokens.items():
            print(f"  {role:<6} Authorization: Bearer {token}", file=sys.stderr)
    print(
        f"PoseLoop API on http://{settings.api.host}:{settings.api.port} (docs: /docs, "
        f"registry: {settings.registry.dir}, backend: {settings.inference.backend})",
        file=sys.stderr,
    )
    uvicorn.run(
        app,
        host=settings.api.host,
        port=settings.api.port,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=10,
    )


@contextlib.contextmanager
def serve_in_subprocess(
    env: dict[str, str], port: int | None = None, ready_timeout_s: float = 60.0, log_path: Path | None = None
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`run_server(Settings())` in a child process configured by POSELOOP_* variables in `env` (merged over
    this environment), on 127.0.0.1:`port` (None = a free one). Yields (base URL, process) once /healthz
    answers; terminates it afterwards. For benchmarks and tests: the load generator runs in another process."""
    import httpx

    port = port or _free_port()
    child_env = {**os.environ, "POSELOOP_HOST": "127.0.0.1", "POSELOOP_PORT": str(port), **env}
    code = "from poseloop.serve import run_server; from continual.settings import Settings; run_server(Settings())"
    logfile = open(log_path, "w") if log_path else None  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parent.parent,
        env=child_env,
        stdout=logfile if logfile is not None else subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} (log: {log_path or 'not kept'})")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/healthz", timeout=1.0).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{base}/healthz did not answer within {ready_timeout_s} s")
            time.sleep(0.05)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if logfile is not None:
            logfile.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
