"""Open endpoints: /healthz (the process answers), /readyz (a model answers a tiny inference), /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from serving.routes.deps import get_service

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: an active version is loaded and answers a tiny inference")
async def readyz(request: Request):
    ok, version, detail = await get_service(request).ready()
    if ok:
        return {"status": "ready", "model_version": version}
    return JSONResponse({"status": "not_ready", "error": {"code": "not_ready", "message": detail}}, status_code=503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    service = get_service(request)
    return Response(service.metrics.render(), media_type=service.metrics.content_type)
