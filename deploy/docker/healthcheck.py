"""Docker HEALTHCHECK of the PoseLoop image: the API answers GET /healthz; every other role passes.

One image runs every role by command (`poseloop serve`, `worker`, `worker --queue ingest`, `beat`,
`triton-sync`). Only `poseloop serve` listens on HTTP, so this looks for that process in /proc and probes it.
When there is none (a worker, beat, triton-sync) it exits 0: those roles are supervised by their restart policy,
and compose/Kubernetes give them their own checks where they need one.
Port: the process's `--port`, else $POSELOOP_PORT, else 8080. Exit status 0 = healthy, 1 = unhealthy.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

DEFAULT_PORT = 8080


def serve_port(proc: Path = Path("/proc")) -> int | None:
    """The HTTP port of a running `poseloop serve` process (None when no such process runs here)."""
    for cmdline in proc.glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode(errors="replace").rstrip("\0").split("\0")
        except OSError:  # the process exited while we looked
            continue
        for i, arg in enumerate(argv[:-1]):
            if (os.path.basename(arg) == "poseloop" or arg == "poseloop.cli") and argv[i + 1] == "serve":
                return _port(argv[i + 2 :])
    return None


def _port(args: list[str]) -> int:
    for i, arg in enumerate(args):
        if arg.startswith("--port="):
            return int(arg.split("=", 1)[1])
        if arg == "--port" and i + 1 < len(args):
            return int(args[i + 1])
    return int(os.environ.get("POSELOOP_PORT") or DEFAULT_PORT)


def main() -> int:
    port = serve_port()
    if port is None:
        return 0
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=4) as response:
            return 0 if response.status == 200 else 1
    except OSError as err:  # URLError, HTTPError, timeouts
        print(f"healthz on port {port}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
