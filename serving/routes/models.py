"""GET /v1/models, /v1/models/active, /v1/models/{version}: what the registry holds and what this process serves."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from serving.auth import Principal
from serving.ops_types import ActiveModel, ListedVersion, ModelList, error_responses
from serving.routes.deps import get_service, require

router = APIRouter(prefix="/v1/models", tags=["models"], responses=error_responses(401))


@router.get("", summary="All versions: status, metrics, lineage, created, size", response_model=ModelList)
def list_models(request: Request, _caller: Principal = Depends(require(None))) -> dict[str, Any]:
    service = get_service(request)
    registry, manager = service.manager.registry, service.manager
    active, previous = registry.active(), registry.previous_active()
    loaded = set(manager.loaded_versions())
    return {
        "active": active.version if active else None,
        "previous_active": previous.version if previous else None,
        "serving": manager.active_version,
        "pinned": registry.pinned(),
        "versions": [{**info.to_dict(), "loaded": info.version in loaded} for info in registry.list()],
    }


@router.get(
    "/active",
    summary="The version this process serves, with its input contract",
    response_model=ActiveModel,
    responses=error_responses(503),
)
def active_model(request: Request, _caller: Principal = Depends(require(None))) -> dict[str, Any]:
    service = get_service(request)
    model = service.manager.active()
    meta = model.metadata
    return {
        **service.manager.registry.get(model.version).to_dict(),
        "serving": model.version,
        "keypoints": list(meta.schema.keypoints),
        "skeleton": [list(p) for p in meta.schema.skeleton],
        "input_size": {"width": meta.input_size.w, "height": meta.input_size.h},
        "decode": meta.decode,
    }


@router.get("/{version}", summary="One version", response_model=ListedVersion, responses=error_responses(404))
def get_model(version: str, request: Request, _caller: Principal = Depends(require(None))) -> dict[str, Any]:
    service = get_service(request)
    info = service.manager.registry.get(version)
    return {**info.to_dict(), "loaded": version in service.manager.loaded_versions()}
