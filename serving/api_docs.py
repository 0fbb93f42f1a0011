"""/docs (Swagger UI) and /redoc (ReDoc) served from local files, so the API docs work with no network.

FastAPI's default pages load their JavaScript and CSS from a CDN (and ReDoc its fonts from Google), so they are
blank offline or behind a strict firewall. The assets come from the `fastapi-offline` wheel (MIT), which ships
Swagger UI 5 (`swagger-ui-bundle.js`, `swagger-ui.css`; Apache-2.0) and ReDoc 2 (`redoc.standalone.js`; MIT)
as plain files; only those files are used, mounted under ASSETS_URL.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs/assets"
ASSET_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")


def assets_dir() -> Path:
    """The folder of the vendored files (checked at start: a broken install fails loudly, not as a blank page)."""
    import fastapi_offline

    folder = Path(fastapi_offline.__file__).resolve().parent / "static"
    missing = [name for name in ASSET_FILES if not (folder / name).is_file()]
    if missing:
        raise RuntimeError(f"API docs assets missing from {folder}: {missing} (reinstall fastapi-offline)")
    return folder


def install_offline_docs(app: FastAPI) -> None:
    """Add /docs, its OAuth2 redirect page, /redoc and the asset mount to an app built with docs_url=None and
    redoc_url=None. URLs are relative to the ASGI root_path, so the pages also work behind a path prefix."""
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"
    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} — API docs",
            oauth2_redirect_url=root + oauth2_redirect_url,
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            # no badge fetched from the public validator service
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None},
        )

    @app.get(oauth2_redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} — API reference",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
