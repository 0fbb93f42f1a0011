"""Dependencies shared by the routers: the Service and role checks (bearer tokens, see serving.auth)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from serving.auth import Principal

_bearer = HTTPBearer(auto_error=False, description="API token; roles: infer, upload, ops")


def get_service(request: Request):
    """The app's Service (serving.app.Service), created by the lifespan."""
    return request.app.state.service


def require(role: str | None) -> Callable[..., Principal]:
    """Dependency: the caller's Principal, with `role` (None = any valid token). Raises AuthError (401/403)."""

    def dependency(
        request: Request, _credentials: HTTPAuthorizationCredentials | None = Security(_bearer)
    ) -> Principal:
        return get_service(request).auth.require(request.headers.get("authorization"), role)

    return dependency
