"""GET /v1/models, /v1/models/active, /v1/models/{version}: what the registry holds and what this process serves;
GET /v1/models/{version}/render: an upload drawn with that version's poses (serving.previews)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from core.inputs import InputError
from serving.auth import Principal
from serving.backends import BackendLoadError
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


@router.get(
    "/{version}/render",
    summary="A pool upload drawn with this version's poses (before/after previews; any version on disk)",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}, **error_responses(403, 404, 409, 422)},
)
async def render_version(
    version: str,
    request: Request,
    upload: str = Query(..., pattern=r"^[0-9a-f]{64}$", description="the upload's sha256 (GET /v1/unlabeled/items)"),
    _caller: Principal = Depends(require("ops")),
) -> Response:
    """JPEG (longest side ≤ 640 px) of a stored upload with the poses `version` predicts on it: its boxes, else
    the detected persons or the whole image. The version need not serve: candidates and older versions are
    previewed on their own ONNX Runtime session, never loaded into the serving backend. 404 unknown version or
    upload, 409 a pruned version, 422 a version whose file does not load."""
    service = get_service(request)
    record = await run_in_threadpool(service.uploads.get, upload)
    if record is None or not record.path.is_file():
        raise InputError(404, "unknown_upload", f"no upload {upload} in the pool")
    try:
        jpeg = await run_in_threadpool(service.previews.render, version, record)
    except BackendLoadError as err:
        raise InputError(422, "load_failed", str(err)) from None
    return Response(jpeg, media_type="image/jpeg", headers={"X-Model-Version": version, "Cache-Control": "no-store"})
