"""`poseloop serve`: run the HTTP API (serving.app) under uvicorn. Never imports torch.

Dev mode (POSELOOP_DEV=1 or `dev=True`, no tokens configured) prints one generated bearer token per role at
start; use them as `Authorization: Bearer <token>`. They live as long as the process.

Connections (settings.limits): a client must send a request's headers within `http_header_timeout_s` of
connecting (or of starting the request) and may leave its body silent for at most `http_body_timeout_s`, or the
connection is answered 408 and closed (slowloris / slow POST); beyond `http_max_connections` open connections a
new one is answered 503 and closed. uvicorn itself only times out idle keep-alive connections. A 500 leaves the
connection usable (see KeepAliveAfterError). At start the upload dir is swept (UploadStore.sweep).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from continual.settings import Settings, setup_process_logging

log = logging.getLogger("poseloop.serve")


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

    from continual.uploads import UploadStore
    from serving.app import create_app

    setup_process_logging(settings)
    try:
        UploadStore(settings.loop.data_dir / "uploads").sweep()  # what a kill -9 left (logged)
    except Exception:  # never keeps the API from starting
        log.exception("upload sweep at start failed")
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
        KeepAliveAfterError(app),
        host=settings.api.host,
        port=settings.api.port,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=10,
        **uvicorn_limits(settings),
    )


def uvicorn_limits(settings: Settings) -> dict:
    """uvicorn.run / uvicorn.Config options for the connection limits in settings.limits."""
    limits = settings.limits
    return {
        "http": guarded_http_protocol(
            limits.http_header_timeout_s, limits.http_body_timeout_s, limits.http_max_connections
        ),
        "timeout_keep_alive": 5,
    }


class KeepAliveAfterError:
    """ASGI wrapper. Starlette's ServerErrorMiddleware sends the 500 (serving.app's generic body, logged there)
    and then re-raises for the server; uvicorn then closes the connection without `Connection: close`, and the
    client's next request on it is reset. An exception raised after the response was sent in full is dropped
    here, so the connection stays usable; one raised before or during the response still reaches uvicorn."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        complete = False

        async def tracked(message) -> None:
            nonlocal complete
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            if not complete:
                raise
            log.debug("exception after a complete response (already logged by the app); connection kept")


def guarded_http_protocol(header_timeout_s: float, body_timeout_s: float, max_connections: int) -> type:
    """uvicorn's httptools protocol with a header deadline, a body idle timeout and a connection cap."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _timer: asyncio.TimerHandle | None = None
        _waiting: str | None = None  # "headers" | "body" while a timer runs

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                log.warning("refusing a connection: %d open (http_max_connections)", len(self.connections) - 1)
                self._answer_and_close(503, "too many open connections; retry later", retry_after=True)
                return
            self._arm("headers", header_timeout_s)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._waiting != "headers":  # a request on a kept-alive connection starts its own deadline
                self._arm("headers", header_timeout_s)

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self._arm("body", body_timeout_s)  # disarmed at once by on_message_complete when there is none

        def on_body(self, body: bytes) -> None:
            super().on_body(body)
            self._arm("body", body_timeout_s)

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._disarm()

        def _arm(self, what: str, seconds: float) -> None:
            self._disarm()
            self._waiting = what
            self._timer = self.loop.call_later(seconds, self._expired)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._waiting = None, None

        def _expired(self) -> None:
            what, self._timer = self._waiting, None
            if self.transport.is_closing():
                return
            if what == "body" and self.flow.read_paused:  # the app is not reading: not the client's fault
                self._arm("body", body_timeout_s)
                return
            limit = header_timeout_s if what == "headers" else body_timeout_s
            log.info("closing a connection from %s: request %s incomplete after %g s", self.client, what, limit)
            if self.cycle is not None and not self.cycle.response_complete:
                self.cycle.disconnected = True  # the app sees a disconnect; its late answer is dropped
                self.cycle.message_event.set()
                if self.cycle.response_started:
                    self.transport.close()
                    return
            self._answer_and_close(408, f"request {what} not received within {limit:g} s")

        def _answer_and_close(self, status: int, message: str, retry_after: bool = False) -> None:
            body = message.encode()
            head = f"HTTP/1.1 {status} {'Request Timeout' if status == 408 else 'Service Unavailable'}\r\n"
            extra = "retry-after: 1\r\n" if retry_after else ""
            self.transport.write(
                (
                    f"{head}content-type: text/plain; charset=utf-8\r\ncontent-length: {len(body)}\r\n"
                    f"connection: close\r\n{extra}\r\n"
                ).encode()
                + body
            )
            self.transport.close()

    return GuardedHttpToolsProtocol


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
