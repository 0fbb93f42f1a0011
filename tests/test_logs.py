"""One logging set-up: ids bound to every line, JSON lines, request ids over HTTP, generic 500 bodies."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI
from fastapi.testclient import TestClient

from core.logs import JsonFormatter, log_context, setup_logging
from serving.app import _install_error_handlers
from serving.request_ids import RequestIdMiddleware


def _capture(json_lines: bool, capsys) -> list[str]:
    setup_logging("INFO", json_lines=json_lines)
    log = logging.getLogger("poseloop.test")
    with log_context(job_id="j1"):
        log.info("inside")
    log.info("outside")
    return capsys.readouterr().err.strip().splitlines()


def test_text_lines_carry_bound_ids(capsys) -> None:
    inside, outside = _capture(False, capsys)
    assert inside.endswith("poseloop.test [job_id=j1]: inside")
    assert outside.endswith("poseloop.test: outside")


def test_json_lines(capsys) -> None:
    inside, outside = (json.loads(line) for line in _capture(True, capsys))
    assert inside["message"] == "inside" and inside["job_id"] == "j1" and inside["level"] == "INFO"
    assert "job_id" not in outside
    assert isinstance(JsonFormatter(), logging.Formatter)


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/boom")
    def boom() -> None:
        logging.getLogger("poseloop.test").warning("about to fail")
        raise RuntimeError("secret /internal/path")

    _install_error_handlers(app)
    app.add_middleware(RequestIdMiddleware)
    return app


def test_request_id_echoed_logged_and_500_body_is_generic(caplog) -> None:
    setup_logging("INFO")
    client = TestClient(_app(), raise_server_exceptions=False)
    with caplog.at_level(logging.WARNING):
        response = client.get("/boom", headers={"X-Request-ID": "abc-123"})
    assert response.status_code == 500 and response.headers["x-request-id"] == "abc-123"
    body = response.json()["error"]
    assert body["code"] == "internal_error" and "abc-123" in body["message"]
    assert "secret" not in body["message"] and "RuntimeError" not in body["message"]
    assert any(getattr(r, "ids", {}).get("request_id") == "abc-123" for r in caplog.records)


def test_insane_request_id_is_replaced() -> None:
    client = TestClient(_app(), raise_server_exceptions=False)
    response = client.get("/nothing", headers={"X-Request-ID": "x" * 200})
    rid = response.headers["x-request-id"]
    assert response.status_code == 404 and len(rid) == 32 and rid != "x" * 200
