"""Request ids: every request gets one (the caller's `X-Request-ID` when it is a sane token, else a new one),
bound to every log line emitted while it is handled (core.logs) and echoed in the `X-Request-ID` response
header, so a client's report and the server's log meet on one id."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any

from core.logs import log_context

HEADER = b"x-request-id"
_SANE = re.compile(rb"[A-Za-z0-9._:-]{1,64}")


def request_id_of(scope: Mapping[str, Any]) -> str | None:
    """The id the middleware gave this request (None outside it)."""
    return scope.get("state", {}).get("request_id")


class RequestIdMiddleware:
    """Pure ASGI middleware (works for streaming responses and for errors raised below it)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope.get("headers", []) if k.lower() == HEADER), b"")
        request_id = given.decode() if _SANE.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (HEADER, request_id.encode())]
            await send(message)

        with log_context(request_id=request_id):
            await self.app(scope, receive, send_with_id)
