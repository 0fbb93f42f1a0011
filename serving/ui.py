"""The ops console at /ui: static HTML, CSS and JavaScript from serving/ui/, no build step and no CDN.

The page is a client of the public API only: it logs in with a bearer token (kept in the tab's sessionStorage,
sent as `Authorization: Bearer …` on every fetch) and reads /v1/models, /v1/ops/*, /v1/unlabeled/stats and
/v1/pose like any other client, so it needs no routes of its own and no server-side session. The files are
served with a Content-Security-Policy that allows only this origin, so the console cannot load anything from
the network even by mistake (it works offline and behind strict firewalls).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

UI_URL = "/ui"
UI_DIR = Path(__file__).resolve().parent / "ui"
UI_FILES = ("index.html", "style.css", "app.js", "charts.js", "jobs.js", "try.js")
# Only this origin: scripts, styles, fetches. Images and the try-it canvas use blob: URLs of local files.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
)


class _ConsoleFiles(StaticFiles):
    """StaticFiles with the console's security headers on every answer (and no caching of a stale app.js)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-cache"
        return response


def ui_dir() -> Path:
    """The console's files (checked at start: a broken install fails loudly, not as a blank page)."""
    missing = [name for name in UI_FILES if not (UI_DIR / name).is_file()]
    if missing:
        raise RuntimeError(f"ops console files missing from {UI_DIR}: {missing} (reinstall poseloop)")
    return UI_DIR


def install_ui(app: FastAPI) -> None:
    """Serve the console: /ui redirects to /ui/ (so the page's relative URLs resolve under it), /ui/ is
    index.html, /ui/<file> the assets. Relative to the ASGI root_path, so it works behind a path prefix."""
    folder = ui_dir()

    @app.get(UI_URL, include_in_schema=False)
    async def console_root(request: Request) -> RedirectResponse:
        return RedirectResponse(request.scope.get("root_path", "") + UI_URL + "/", status_code=307)

    app.mount(UI_URL, _ConsoleFiles(directory=folder, html=True), name="ui")
