"""Operations (role `ops`): promote (hot swap), rollback, audit events. Later ops routes join this router."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from serving.auth import Principal
from serving.routes.deps import get_service, require

router = APIRouter(prefix="/v1/ops", tags=["ops"])


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(..., min_length=1, max_length=32, pattern=r"^[0-9]+$")
    reason: str | None = Field(None, max_length=500)


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(None, min_length=1, max_length=32, pattern=r"^[0-9]+$",
                                description="default: the previous active version")
    reason: str | None = Field(None, max_length=500)


@router.post("/promote", summary="Hot-swap to a registered version (the old one serves until it is ready)")
async def promote(body: PromoteRequest, request: Request, caller: Principal = Depends(require("ops"))) -> dict:
    service = get_service(request)
    return await run_in_threadpool(service.promote, body.version, caller.actor, body.reason, False)


@router.post("/rollback", summary="Hot-swap back to the previous active version (or the one given)")
async def rollback(request: Request, body: RollbackRequest | None = None,
                   caller: Principal = Depends(require("ops"))) -> dict:
    service = get_service(request)
    body = body or RollbackRequest()
    return await run_in_threadpool(service.promote, body.version, caller.actor, body.reason, True)


@router.get("/events", summary="Audit log: who changed which version's state, when and why")
def events(request: Request, limit: int = Query(100, ge=1, le=10_000),
           _caller: Principal = Depends(require("ops"))) -> dict:
    return {"events": get_service(request).manager.registry.events(limit)}
