"""A real tritonserver process managed by PoseLoop (the binary bundled in the nvidia-pytriton wheel, or another).

The server runs in EXPLICIT model-control mode with auto-complete disabled, listens on 127.0.0.1 by default,
and restricts the model-repository API (plus shared-memory, trace, logging) to requests carrying the header
`poseloop-repository-secret: <secret>`, on HTTP and gRPC alike (2.51 syntax, verified:
`--http-restricted-api=<api>[,<api>...]:<header>=<value>`; the `<apis>,<key>=<value>` form its --help text
shows makes the binary exit with its usage). Inference, health, metadata and statistics stay open. gRPC is
on by default because TritonBackend sends repository control over it (see serving.triton.backend).

Environment it needs, and sets for the child only:
- LD_LIBRARY_PATH: this interpreter's libpython dir (`sysconfig LIBDIR`) first, then the wheel's vendored libs.
  Otherwise the Python-backend stub may load the system's libpython and die on a stdlib mismatch.
- PATH: this interpreter's bin dir first (as PyTriton does), so the stub's embedded interpreter resolves to the
  same venv/prefix.
The pytriton wheel keeps stubs per Python version in `python_backend_stubs/<X.Y>/`; the backend directory
Triton needs (python/libtriton_python.so + triton_python_backend_utils.py + triton_python_backend_stub) is
assembled in a private temp dir, as PyTriton does.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

REPOSITORY_SECRET_HEADER = "poseloop-repository-secret"
RESTRICTED_APIS = ("model-repository", "shared-memory", "trace", "logging")
BINARY_ENV = "POSELOOP_TRITONSERVER"  # explicit binary path (e.g. /opt/tritonserver/bin/tritonserver)
_LOADER_ERRORS = (
    "error while loading shared libraries",
    "GLIBC_",
    "GLIBCXX_",
    "cannot open shared object",
    "Exec format error",
)


class TritonUnavailable(RuntimeError):
    """This machine cannot run tritonserver (binary, stub or shared libraries missing); not a PoseLoop bug."""


class TritonStartError(RuntimeError):
    """tritonserver was found and launched but did not become live (the message carries the log tail)."""


@dataclass(frozen=True)
class TritonDistribution:
    binary: Path
    backends: Path  # directory holding python/libtriton_python.so
    stub: Path | None  # the stub for this Python when it lives outside backends/python (pytriton wheel)
    libs: Path | None  # vendored shared libraries (nvidia_pytriton.libs)


def find_tritonserver() -> Path | None:
    """$POSELOOP_TRITONSERVER, else the nvidia-pytriton wheel's bundled binary, else `tritonserver` on PATH."""
    dist = _distribution()
    return dist.binary if dist else None


def _distribution(binary: Path | None = None) -> TritonDistribution | None:
    candidates = [binary] if binary else [Path(p) for p in [os.environ.get(BINARY_ENV)] if p]
    if not candidates:
        try:
            import importlib.util

            spec = importlib.util.find_spec("pytriton")
        except (ImportError, ValueError):
            spec = None
        if spec and spec.origin:
            candidates.append(Path(spec.origin).parent / "tritonserver" / "bin" / "tritonserver")
        on_path = shutil.which("tritonserver")
        if on_path:
            candidates.append(Path(on_path))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            root = path.resolve().parent.parent
            version = f"{sys.version_info.major}.{sys.version_info.minor}"
            stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
            libs = root.parent.parent / "nvidia_pytriton.libs"
            return TritonDistribution(
                path, root / "backends", stub if stub.exists() else None, libs if libs.is_dir() else None
            )
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class TritonServer:
    """tritonserver over `repo` in EXPLICIT mode; use as a context manager or call start()/stop().

    Ports: None = a free one. repository_secret: None = a random token (see `.repository_secret`); it is
    visible in the process command line to local users (2.51 has no file option). log_path: stdout+stderr of
    the server and its stubs (None = a file in a private temp dir, removed by stop()).
    """

    def __init__(
        self,
        repo: Path,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        repository_secret: str | None = None,
        log_path: Path | None = None,
        *,
        host: str = "127.0.0.1",
        binary: Path | None = None,
        allow_grpc: bool = True,
        allow_metrics: bool = True,
        exit_timeout_s: int = 5,
        startup_timeout_s: float = 60.0,
        python_shm_bytes: int = 4 << 20,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.repo = Path(repo)
        self.host = host
        self.repository_secret = repository_secret or secrets.token_urlsafe(24)
        self.allow_grpc, self.allow_metrics = allow_grpc, allow_metrics
        self.exit_timeout_s, self.startup_timeout_s = exit_timeout_s, startup_timeout_s
        self.python_shm_bytes = python_shm_bytes
        self.extra_args = tuple(extra_args)
        self._requested_ports = (http_port, grpc_port, metrics_port)
        self._binary = binary
        self._log_path = Path(log_path) if log_path else None
        self._workdir: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._shm_prefix = f"poseloop{os.getpid()}x{secrets.token_hex(3)}_"
        self.http_port = self.grpc_port = self.metrics_port = 0

    # ------------------------------------------------------------ public

    @property
    def url(self) -> str:
        """http://host:port of the KServe v2 HTTP endpoint."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str | None:
        """host:port of the gRPC endpoint (TritonBackend's repository-control channel); None if disabled."""
        return f"{self.host}:{self.grpc_port}" if self.allow_grpc else None

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def repository_headers(self) -> dict[str, str]:
        """The header the model-repository API requires."""
        return {REPOSITORY_SECRET_HEADER: self.repository_secret}

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        """The full command line (after start(): with the real ports and backend dir)."""
        dist = self._require_distribution()
        private = self._workdir / "backends" if self._workdir else None
        backends = private if private is not None and private.exists() else dist.backends
        restriction = f"{','.join(RESTRICTED_APIS)}:{REPOSITORY_SECRET_HEADER}={self.repository_secret}"
        return [
            str(dist.binary),
            f"--model-repository={self.repo}",
            "--model-control-mode=explicit",
            "--disable-auto-complete-config",
            "--strict-readiness=false",  # ready = live; per-model readiness is v2/models/<m>/versions/<v>/ready
            f"--backend-directory={backends}",
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
            f"--backend-config=python,shm-default-byte-size={self.python_shm_bytes}",
            f"--backend-config=python,shm-growth-byte-size={self.python_shm_bytes}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--http-restricted-api={restriction}",
            f"--allow-grpc={str(self.allow_grpc).lower()}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--grpc-restricted-protocol={restriction}",
            f"--allow-metrics={str(self.allow_metrics).lower()}",
            "--allow-gpu-metrics=false",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            "--log-verbose=0",
            *self.extra_args,
        ]

    def start(self) -> TritonServer:
        """Launch and wait for /v2/health/live. Retries on a port race when the ports were picked here."""
        if self.running():
            return self
        dist = self._require_distribution()
        self.repo.mkdir(parents=True, exist_ok=True)
        self._workdir = Path(tempfile.mkdtemp(prefix="poseloop-triton-"))
        self._assemble_backends(dist)
        if self._log_path is None:
            self._log_path = self._workdir / "tritonserver.log"
        attempts = 1 if any(self._requested_ports) else 3
        for attempt in range(attempts):
            self.http_port, self.grpc_port, self.metrics_port = (
                p or free_port(self.host) for p in self._requested_ports
            )
            try:
                self._launch(dist)
                atexit.register(self.stop)
                return self
            except TritonStartError as err:
                self._terminate()
                if "already in use" not in str(err).lower() or attempt == attempts - 1:
                    self._cleanup_files()
                    raise
                log.warning("tritonserver port race, retrying with new ports")
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """SIGTERM (Triton drains for exit_timeout_s), then SIGKILL to its whole process group (orphaned
        `triton_python_backend_stub`s included); removes its /dev/shm segments and temp dir."""
        atexit.unregister(self.stop)
        self._terminate()
        self._cleanup_files()

    def group_processes(self) -> list[int]:
        """Live processes in the server's process group (the server and its stubs)."""
        return _group_members(self._proc.pid) if self._proc else []

    def log_tail(self, chars: int = 4000) -> str:
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_text(errors="replace")[-chars:]

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------ internals

    def _require_distribution(self) -> TritonDistribution:
        dist = _distribution(self._binary)
        if dist is None:
            raise TritonUnavailable(f"no tritonserver binary found (install nvidia-pytriton, or set ${BINARY_ENV})")
        if dist.stub is None and not (dist.backends / "python" / "triton_python_backend_stub").exists():
            raise TritonUnavailable(
                f"no Python-backend stub for Python {sys.version_info.major}."
                f"{sys.version_info.minor} next to {dist.binary}"
            )
        return dist

    def _assemble_backends(self, dist: TritonDistribution) -> None:
        """pytriton wheel: <workdir>/backends/python = the backend library, its utils and this Python's stub
        (copies, ~3 MB). Other layouts (NGC image) already have the stub in place and are used as they are."""
        if dist.stub is None:
            return
        assert self._workdir is not None, "start() creates the work directory first"
        target = self._workdir / "backends" / "python"
        shutil.copytree(dist.backends / "python", target, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(dist.stub, target / "triton_python_backend_stub")

    def _environment(self, dist: TritonDistribution) -> dict[str, str]:
        env = os.environ.copy()
        libdirs = [
            sysconfig.get_config_var("LIBDIR"),
            str(dist.libs) if dist.libs else None,
            env.get("LD_LIBRARY_PATH"),
        ]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libdirs if p)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.pop("PYTHONPATH", None)  # the stub ignores it anyway; model.py extends sys.path from the config
        return env

    def _launch(self, dist: TritonDistribution) -> None:
        assert self._log_path is not None, "start() sets the log path first"
        with open(self._log_path, "ab") as logfile:
            self._proc = subprocess.Popen(
                self.command(),
                env=self._environment(dist),
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = self.log_tail()
                error = TritonUnavailable if any(s in tail for s in _LOADER_ERRORS) else TritonStartError
                raise error(
                    f"tritonserver exited with {self._proc.returncode} during startup; log {self._log_path}:\n{tail}"
                )
            if self._live():
                log.info("tritonserver live at %s (pid %d)", self.url, self._proc.pid)
                return
            time.sleep(0.1)
        raise TritonStartError(
            f"tritonserver not live after {self.startup_timeout_s:.0f} s; log {self._log_path}:\n{self.log_tail()}"
        )

    def _live(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/health/live", timeout=1.0) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _terminate(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.exit_timeout_s + 10)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver %d ignored SIGTERM; killing its process group", proc.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group id is the server's pid (start_new_session)
        proc.wait()
        deadline = time.monotonic() + 5.0
        while _group_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _cleanup_files(self) -> None:
        shm = Path("/dev/shm")
        if shm.is_dir():
            for segment in shm.glob(f"{self._shm_prefix}*"):
                segment.unlink(missing_ok=True)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)  # with the default log inside it
            if self._log_path is not None and self._workdir in self._log_path.parents:
                self._log_path = None
            self._workdir = None

    def shm_segments(self) -> list[Path]:
        """/dev/shm segments this server's Python backend created (and has not removed yet)."""
        return sorted(Path("/dev/shm").glob(f"{self._shm_prefix}*"))


def _group_members(pgid: int) -> list[int]:
    """PIDs whose process group is `pgid` (from /proc; zombies excluded)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members
