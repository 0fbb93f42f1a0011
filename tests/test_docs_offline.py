"""API docs without a network, over a real uvicorn server: /docs and /redoc reference only this server's own
asset URLs and those assets are served; /openapi.json types the models and ops answers and their errors."""

from __future__ import annotations

import re

import httpx
import pytest

from continual.settings import Settings
from serving.app import create_app
from tests.serving_fixtures import thread_server

OPS = "o" * 24
TYPED_PREFIXES = ("/v1/models", "/v1/ops/")


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("docs_offline")
    settings = Settings(
        registry_dir=root / "registry", data_dir=root / "data", ort_threads=1, registry_poll_s=0, tokens={OPS: ["ops"]}
    )
    with thread_server(create_app(settings)) as base, httpx.Client(base_url=base, timeout=30) as c:
        yield c


def _asset_urls(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r'spec-url="([^"]+)"', html)


@pytest.mark.parametrize(
    "page, needed",
    [
        ("/docs", {"swagger-ui-bundle.js", "swagger-ui.css"}),
        ("/redoc", {"redoc.standalone.js"}),
    ],
)
def test_docs_pages_use_only_local_assets(client, page, needed) -> None:
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "http://" not in html and "https://" not in html, "a docs page must not load anything from elsewhere"
    urls = _asset_urls(html)
    assert {u.rsplit("/", 1)[-1] for u in urls} >= needed
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 500, url  # the real bundle, not an error page
    assert "/openapi.json" in html


def test_assets_have_script_and_style_types(client) -> None:
    js = client.get("/docs/assets/swagger-ui-bundle.js")
    css = client.get("/docs/assets/swagger-ui.css")
    redoc = client.get("/docs/assets/redoc.standalone.js")
    assert "javascript" in js.headers["content-type"] and "SwaggerUIBundle" in js.text
    assert css.headers["content-type"].startswith("text/css")
    assert "javascript" in redoc.headers["content-type"] and "Redoc" in redoc.text
    assert client.get("/docs/assets/nope.js").status_code == 404
    assert client.get("/docs/oauth2-redirect").status_code == 200


def test_openapi_types_models_and_ops_answers(client) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    typed = {p: ops for p, ops in spec["paths"].items() if p.startswith(TYPED_PREFIXES)}
    assert len(typed) >= 10
    for path, operations in typed.items():
        for method, op in operations.items():
            ok = op["responses"].get("200") or op["responses"]["202"]
            if set(ok.get("content", {})) == {"image/jpeg"}:  # an image route (a version's render): no JSON body
                continue
            schema = ok["content"]["application/json"]["schema"]
            assert schema != {} and "$ref" in schema, (method, path, schema)
            name = schema["$ref"].rsplit("/", 1)[-1]
            assert schemas[name].get("properties"), (method, path, name)
            assert op["responses"]["401"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    # the error body is what the handlers send, not FastAPI's default validation schema
    promote = spec["paths"]["/v1/ops/promote"]["post"]["responses"]
    assert {"401", "403", "404", "409", "422"} <= set(promote)
    assert promote["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert set(schemas["ErrorBody"]["properties"]) == {"error"}
    assert {"active", "serving", "versions", "pinned"} <= set(schemas["ModelList"]["properties"])
    assert "from" in schemas["AuditEvent"]["properties"]


def test_error_answers_match_the_documented_body(client) -> None:
    r = client.post("/v1/ops/promote", json={"version": "1"})
    assert r.status_code == 401 and set(r.json()) == {"error"} and set(r.json()["error"]) == {"code", "message"}
    r = client.get("/v1/ops/jobs/nope", headers={"Authorization": f"Bearer {OPS}"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
