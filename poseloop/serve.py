"""`poseloop serve`: run the HTTP API (serving.app) under uvicorn. Never imports torch.

Dev mode (POSELOOP_DEV=1 or `dev=True`, no tokens configured) prints one generated bearer token per role at
start; use them as `Authorization: Bearer <token>`. They live as long as the process.
"""
from __future__ import annotations

import logging
import sys

from serving.settings import Settings


def run_server(settings: Settings) -> None:
    """Serve on settings.host:settings.port until interrupted (one process; the ORT backend is in-process)."""
    import uvicorn

    from serving.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    if app.state.dev_tokens:
        print("PoseLoop dev mode: generated API tokens (valid for this process only):", file=sys.stderr)
        for role, token in app.state.dev_tokens.items():
            print(f"  {role:<6} Authorization: Bearer {token}", file=sys.stderr)
    print(f"PoseLoop API on http://{settings.host}:{settings.port} (docs: /docs, registry: {settings.registry_dir}, "
          f"backend: {settings.backend})", file=sys.stderr)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", access_log=False,
                timeout_graceful_shutdown=10)
