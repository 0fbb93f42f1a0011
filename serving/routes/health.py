"""Open endpoints: /healthz (the process answers), /readyz (a model answers a tiny inference; the broker's state),
/metrics.

/readyz is 200 whenever inference works, also while the broker is away: /v1/pose does not need the broker, and a
readiness probe that failed with it would take every replica out of the load balancer. The body says so instead:
`status` "degraded" and `broker` {reachable, error, undelivered} (uploads are still stored and retrain requests
accepted; their messages wait in the outbox until the broker is back, see continual.queue).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from serving.routes.deps import get_service

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: an active version answers a tiny inference; the broker's state")
async def readyz(request: Request):
    service = get_service(request)
    ok, version, detail = await service.ready()
    broker = await run_in_threadpool(service.queue.broker_status)  # never waits for the broker itself
    extra = {"broker": broker} if broker["mode"] == "celery" else {}  # embedded: no broker to report
    if not ok:
        body = {"status": "not_ready", "error": {"code": "not_ready", "message": detail}, **extra}
        return JSONResponse(body, status_code=503)
    degraded = broker.get("reachable") is False
    return {"status": "degraded" if degraded else "ready", "model_version": version, **extra}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    service = get_service(request)
    return Response(service.metrics.render(), media_type=service.metrics.content_type)
