"""Unlabeled images for the retrain pool: POST /v1/unlabeled (role `upload`), GET /v1/unlabeled/stats.

POST input is multipart/form-data, one of:
  * `files` parts, each an image (JPEG, PNG, WebP, BMP), and optionally a `boxes` text field holding JSON, either
    {"<filename>": [[x, y, w, h], ...]} or a list aligned with the files (null / no entry = the whole image is
    one person; a single [x, y, w, h] is a one-box list);
  * one `archive` part: a tar (.tar, .tar.gz, .tgz, bzip2, xz) or zip of images with an optional boxes.json
    {"<member name>": boxes} (LSPET's {"boxes": {...}} wrapper too); see serving.archives.
  Optional `source` text field: provenance stored with each image (default "files" or "archive:<filename>").

Each image passes the /v1/pose input checks (decompression bombs refused from the header, decoding held against
the same pixel budget as /v1/pose) and its boxes must overlap it; a bad item is rejected on its own, with its
reason (also recorded in the store), and the good ones are stored: 200 with per-item lists. Archives are
reported per member the same way (never all-or-nothing, never half-silent: every member is accepted, a
duplicate, or rejected with its reason). When nothing was stored or found stored (every item rejected, or no
image at all) the answer is 422 `all_rejected` with the same per-item lists (503/507 when every rejection was
the server's: overloaded / out of space). 4xx answers a request that is unusable as a whole (no images, bad
`boxes` JSON, an unreadable archive).

Limits: the whole body is parsed before any image is stored (file parts spooled to temporary files, never held
in memory), so a body over `max_upload_bytes` (by Content-Length, or counted while it streams in), more than
`max_upload_files` files or archive entries, or an archive inflating past ARCHIVE_EXPANSION × max_upload_bytes
(counted while inflating) is refused whole with 413 and nothing is stored. An image over `max_image_bytes` is
rejected on its own. Pool quota (`max_pool_bytes`, stored image bytes): a request whose images alone exceed it is
413 `request_exceeds_pool_quota`, one that would take the pool past it 507 `pool_quota_exceeded` (its images
counted as if all were new), both before anything is stored.

Broker outages: the images are stored without the broker; the ingest-check message waits in the outbox and is
sent when the broker is back (continual.queue), so an upload never waits on a broker that is down.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from continual.coco_labels import label_studio_config, label_studio_tasks, labeling_task
from continual.labeled import labeled_store
from continual.settings import Settings
from continual.uploads import BatchReport, UploadStore
from core.inputs import InputError, PoseInput, declared_length_exceeds, parse_json
from serving.archives import Archive, ArchiveLimits
from serving.auth import AuthError, Principal
from serving.ops_types import error_responses
from serving.routes.deps import get_service, require

router = APIRouter(prefix="/v1/unlabeled", tags=["unlabeled"], responses=error_responses(401, 403))
log = logging.getLogger("poseloop.uploads")
SHA = Path(..., pattern=r"^[0-9a-f]{64}$", description="the image's sha256 (its id)")
MAX_PAGE = 500
MAX_EXPORT = 500
DEFAULT_IMAGE_URL = "/data/local-files/?d=images/"  # Label Studio local-files serving of <root>/images/

ARCHIVE_EXPANSION = 8  # an archive may hold up to this many times max_upload_bytes once decompressed
MAX_FIELD_BYTES = 64 << 20  # text fields (`boxes` for 10,000 files is well under 1 MiB)
MAX_SOURCE_CHARS = 200
FIELDS = ("files", "archive", "boxes", "source")

_BODY_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "archive": {
                            "type": "string",
                            "format": "binary",
                            "description": ".tar, .tar.gz or .zip (+ boxes.json)",
                        },
                        "boxes": {
                            "type": "string",
                            "description": 'JSON {"<filename>": [[x, y, w, h], ...]} or a list',
                        },
                        "source": {"type": "string"},
                    },
                }
            }
        },
    }
}


class UploadReport(BaseModel):
    accepted: list[dict[str, str]] = Field(..., description="[{id (sha256), name}] stored now")
    duplicates: list[dict[str, str]] = Field(..., description="[{id, name}] already stored")
    rejected: list[dict[str, str]] = Field(..., description="[{name, reason}]")
    counts: dict[str, int]


@router.post(
    "",
    openapi_extra=_BODY_SCHEMA,
    summary="Add unlabeled images (files or one archive) to the pool",
    response_model=UploadReport,
    responses=error_responses(400, 413, 422, 503),
)
async def upload(request: Request, caller: Principal = Depends(require("upload"))):
    """{accepted: [{id, name}], duplicates: [{id, name}], rejected: [{name, reason}], counts}; id = sha256."""
    service = get_service(request)
    form = await read_form(request, service.settings)
    try:
        report = await run_in_threadpool(_ingest, service, form, caller.actor)
    finally:
        await form.close()
    if report.accepted:
        await run_in_threadpool(service.queue.dispatch_ingest_checks)  # never waits on a broker that is away
    if report.all_rejected:
        return _all_rejected(report)
    return report.to_dict()


def _all_rejected(report: BatchReport) -> JSONResponse:
    """422 with the per-item reasons; 503 / 507 when every rejection was the server's (overloaded, full)."""
    statuses = set(report.rejected_status)
    status, headers = 422, None
    if statuses and all(s >= 500 for s in statuses):
        status = 507 if 507 in statuses else 503
        headers = {"Retry-After": "5"} if status == 503 else None
    total = len(report.rejected)
    message = (
        f"every file was rejected ({total}); nothing was stored, see 'rejected' for each reason"
        if total
        else "the upload holds no image (only directories, links or boxes.json)"
    )
    body = {"error": {"code": "all_rejected" if total else "no_images", "message": message}, **report.to_dict()}
    return JSONResponse(body, status_code=status, headers=headers)


class SourceStats(BaseModel):
    images: int
    bytes: int
    rejected: int


class PoolStats(BaseModel):
    total: int
    new_since_active: int = Field(..., description="images newer than the active model's unlabeled_seq")
    rejected: int
    max_seq: int
    disk_bytes: int
    checked: int = Field(..., description="images the ingest check has seen (thumbnail, confidence)")
    quarantined: int
    mean_teacher_confidence: float | None
    sources: dict[str, SourceStats] = Field(..., description="per upload source: images, bytes, rejections")
    active_version: str | None
    active_unlabeled_seq: int


class PoolItem(BaseModel):
    seq: int
    sha256: str
    name: str | None
    source: str | None
    bytes: int
    width: int
    height: int
    boxes: list[list[float]] | None = Field(..., description="[x, y, w, h] image pixels; null = the whole image")
    created: str
    check: Literal["pending", "checked", "quarantined"]
    teacher_confidence: float | None
    disagreement: float | None = Field(
        ..., description="flip disagreement of the ingest check (crop heights); null = not checked or no person"
    )
    persons: int | None
    has_thumbnail: bool
    quarantine_reason: str | None


class PoolPage(BaseModel):
    items: list[PoolItem]
    next_after_seq: int | None = Field(..., description="pass as after_seq for the next page; null = the last page")


class DeletedUpload(BaseModel):
    deleted: str = Field(..., description="sha256")
    seq: int
    name: str | None
    source: str | None
    bytes: int
    actor: str
    reason: str | None


class ExportItem(BaseModel):
    sha256: str
    seq: int
    file_name: str = Field(..., description="the name in the COCO document and the task's images/ folder")
    width: int
    height: int
    score: float = Field(
        ...,
        description="low_confidence: the served model's mean keypoint confidence; disagreement: its flip "
        "disagreement (mean joint distance between the image's and its mirror's keypoints, in crop heights)",
    )
    image_path: str = Field(..., description="GET this (role ops) for the image bytes")


class LabelingExport(BaseModel):
    strategy: str
    count: int
    model_version: str
    schema_: str = Field(..., alias="schema")
    items: list[ExportItem]
    coco: dict[str, Any] = Field(..., description="COCO keypoints JSON with the model's pre-annotations")
    label_studio: list[dict[str, Any]] = Field(..., description="Label Studio import tasks (keypointlabels)")
    label_config: str = Field(..., description="Label Studio labeling interface (XML) for these tasks")


def _pool_reader(caller: Principal) -> None:
    if not caller.roles & {"upload", "ops"}:
        raise AuthError(403, "forbidden", f"this token lacks the 'upload' or 'ops' role (has {sorted(caller.roles)})")


@router.get(
    "/stats",
    summary="Pool size, images new since the active model was trained, rejections, disk use, per source",
    response_model=PoolStats,
)
async def stats(request: Request, caller: Principal = Depends(require(None))) -> dict:
    _pool_reader(caller)
    service = get_service(request)

    def read() -> dict:
        active = service.manager.registry.active()
        seq = (active.meta.get("data_summary") or {}).get("unlabeled_seq") if active else None
        seq = seq if isinstance(seq, int) else 0  # trained before uploads existed: every upload is new
        return {
            **service.uploads.stats(seq),
            "active_version": active.version if active else None,
            "active_unlabeled_seq": seq,
        }

    return await run_in_threadpool(read)


@router.get(
    "/items",
    summary="Browse the pool in upload order (pages by seq)",
    response_model=PoolPage,
    responses=error_responses(422),
)
async def items(
    request: Request,
    after_seq: int = Query(0, ge=0, description="only images with seq > after_seq"),
    limit: int = Query(50, ge=1, le=MAX_PAGE),
    source: str | None = Query(None, max_length=MAX_SOURCE_CHARS, description="only this upload source"),
    caller: Principal = Depends(require(None)),
) -> dict:
    _pool_reader(caller)
    page = await run_in_threadpool(get_service(request).uploads.items, after_seq, limit, source)
    return {"items": page, "next_after_seq": page[-1]["seq"] if len(page) == limit else None}


@router.get(
    "/export",
    summary="The N most informative uploads as a labeling task (COCO + Label Studio)",
    response_model=LabelingExport,
    responses=error_responses(409, 422, 503),
)
async def export(
    request: Request,
    n: int = Query(20, ge=1, le=MAX_EXPORT, description="how many images"),
    strategy: Literal["low_confidence", "disagreement"] = Query("low_confidence"),
    image_url: str = Query(DEFAULT_IMAGE_URL, max_length=500, description="Label Studio URL prefix of images/"),
    caller: Principal = Depends(require("ops")),
) -> dict:
    """The checked uploads (ingest checks), labeled images left out, ranked by `strategy`: low_confidence = the
    served model's lowest mean keypoint confidence first; disagreement = its largest flip disagreement first (the
    mirrored view, flipped back, against the plain one: the two views a retrain's flip-TTA teacher averages, so
    the images whose pseudo-labels would be least trustworthy). Each is run through the active model for its
    pre-annotations (the boxes of the upload, else the whole image)."""
    service = get_service(request)
    labeled = await run_in_threadpool(labeled_store(service.settings.loop.data_dir).image_shas)
    candidates = await run_in_threadpool(service.uploads.labeling_candidates, n, labeled, strategy)
    if not candidates:
        hint = " (uploads checked before disagreement was recorded, or without a person, have none)"
        raise InputError(
            409,
            "no_candidates",
            "no checked, unlabeled upload to choose from: wait for the ingest "
            "checks (GET /v1/unlabeled/stats 'checked') or upload more images"
            + (hint if strategy == "disagreement" else ""),
        )
    chosen, version, schema = [], "", ""
    for i, (record, score) in enumerate(candidates):
        data = await run_in_threadpool(record.path.read_bytes)
        boxes = record.boxes or [[0, 0, record.width, record.height]]
        outcome = await service.predict(PoseInput(data, boxes, False, None))
        version, schema = outcome.result.version, outcome.result.metadata.schema.name
        poses = [
            {"box": list(p.box), "keypoints": p.keypoints.tolist(), "scores": p.keypoint_scores.tolist()}
            for p in outcome.result.poses
        ]
        name = f"{record.sha256}{record.path.suffix}"
        chosen.append(
            {
                "file_name": name,
                "image_id": i + 1,
                "width": outcome.width,
                "height": outcome.height,
                "poses": poses,
                "item": {
                    "sha256": record.sha256,
                    "seq": record.seq,
                    "file_name": name,
                    "width": outcome.width,
                    "height": outcome.height,
                    "score": round(score, 4),
                    "image_path": f"/v1/unlabeled/{record.sha256}/image",
                },
            }
        )
    coco = labeling_task(chosen, schema, version)
    log.info("labeling export of %d uploads (%s) for %s", len(chosen), strategy, caller.actor)
    return {
        "strategy": strategy,
        "count": len(chosen),
        "model_version": version,
        "schema": schema,
        "items": [c["item"] for c in chosen],
        "coco": coco,
        "label_studio": label_studio_tasks(coco, image_url, version),
        "label_config": label_studio_config(schema),
    }


@router.get(
    "/{sha}/thumbnail",
    summary="The ingest check's thumbnail (JPEG, longest side 160 px)",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}, **error_responses(404, 422)},
)
async def thumbnail(request: Request, sha: str = SHA, caller: Principal = Depends(require(None))) -> Response:
    _pool_reader(caller)
    store: UploadStore = get_service(request).uploads
    if await run_in_threadpool(store.get, sha) is None:
        raise InputError(404, "unknown_upload", f"no upload {sha} in the pool")
    path = store.thumbnail_path(sha)
    if not path.is_file():
        raise InputError(404, "no_thumbnail", f"upload {sha} has no thumbnail yet: its ingest check has not run")
    return Response(
        await run_in_threadpool(path.read_bytes),
        media_type="image/jpeg",
        headers={"Cache-Control": "private, max-age=3600"},
    )


@router.get(
    "/{sha}/image",
    summary="The stored image bytes (role ops; labeling exports fetch them)",
    response_class=Response,
    responses={200: {"content": {"image/*": {}}}, **error_responses(404, 422)},
)
async def image(request: Request, sha: str = SHA, _caller: Principal = Depends(require("ops"))) -> Response:
    record = await run_in_threadpool(get_service(request).uploads.get, sha)
    if record is None or not record.path.is_file():
        raise InputError(404, "unknown_upload", f"no upload {sha} in the pool")
    media = {".jpg": "image/jpeg", ".png": "image/png", ".webp": "image/webp", ".bmp": "image/bmp"}
    return Response(await run_in_threadpool(record.path.read_bytes), media_type=media[record.path.suffix])


@router.delete(
    "/{sha}",
    summary="Remove an upload from the pool for good (audit-logged)",
    response_model=DeletedUpload,
    responses=error_responses(404, 422),
)
async def delete(
    request: Request,
    sha: str = SHA,
    reason: str | None = Query(None, max_length=500, description="why (recorded in the pool's audit log)"),
    caller: Principal = Depends(require("ops")),
) -> dict:
    """The index row goes first (no later retrain snapshot names the image), then the file and thumbnail,
    then a line in <data_dir>/uploads/audit.jsonl. Uploading the same bytes again adds it anew."""
    event = await run_in_threadpool(get_service(request).uploads.delete, sha, caller.actor, reason)
    if event is None:
        raise InputError(404, "unknown_upload", f"no upload {sha} in the pool")
    return {
        "deleted": sha,
        "seq": event["seq"],
        "name": event["name"],
        "source": event["source"],
        "bytes": event["bytes"],
        "actor": caller.actor,
        "reason": reason,
    }


async def read_form(request: Request, settings: Settings, fields: tuple[str, ...] = FIELDS) -> FormData:
    """The multipart form (at most one part per name in `fields` besides files); 413 as soon as the body passes
    max_upload_bytes or max_upload_files. Shared with serving.routes.labeled."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "multipart/form-data":
        raise InputError(
            415,
            "unsupported_media_type",
            f"Content-Type {ctype or '(none)'!r} is not accepted; send "
            "multipart/form-data with 'files' parts or one 'archive' part",
        )
    limit = settings.limits.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared_length_exceeds(declared, limit):
        raise InputError(
            413,
            "request_too_large",
            f"request body is {declared} bytes, limit {limit} (max_upload_bytes); split the upload",
        )

    async def counted() -> AsyncGenerator[bytes, None]:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise InputError(
                    413,
                    "request_too_large",
                    f"request body exceeds {limit} bytes (max_upload_bytes); nothing was stored, split the upload",
                )
            yield chunk

    parser = MultiPartParser(
        request.headers,
        counted(),
        max_files=settings.limits.max_upload_files,
        max_fields=len(fields),
        max_part_size=MAX_FIELD_BYTES,
    )
    try:
        return await parser.parse()
    except MultiPartException as err:
        if "too many files" in str(err).lower():
            raise InputError(
                413,
                "too_many_files",
                f"more than {settings.limits.max_upload_files} files in one request (max_upload_files); "
                "split the upload",
            ) from None
        raise InputError(400, "malformed_multipart", f"multipart body cannot be parsed: {err}") from None


def _ingest(service: Any, form: FormData, actor: str) -> BatchReport:  # serving.app.Service
    """Check the request as a whole, then store item by item (in a worker thread: hashing, decoding, fsync)."""
    store, settings = service.uploads, service.settings
    store_options = {
        "budget": service.pixel_budget,
        "budget_timeout_s": settings.api.request_timeout_s,
        "quota_bytes": settings.limits.max_pool_bytes,
    }
    unknown = sorted(set(form.keys()) - set(FIELDS))
    if unknown:
        raise InputError(422, "unknown_field", f"unknown form field(s) {unknown}; expected {list(FIELDS)}")
    files, archives = file_parts(form, "files"), file_parts(form, "archive")
    boxes_text, source = text_field(form, "boxes"), text_field(form, "source")
    if not files and not archives:
        raise InputError(400, "no_files", "the request holds no images: send 'files' parts or one 'archive' part")
    if archives and (files or len(archives) > 1):
        raise InputError(422, "invalid_archive", "send either 'files' parts or exactly one 'archive' part")
    if source is not None and len(source) > MAX_SOURCE_CHARS:
        raise InputError(422, "invalid_source", f"'source' is {len(source)} characters, limit {MAX_SOURCE_CHARS}")
    if archives:
        if boxes_text is not None:
            raise InputError(422, "invalid_boxes", "'boxes' applies to 'files'; put boxes.json inside the archive")
        limits = ArchiveLimits(
            settings.limits.max_upload_files,
            settings.limits.max_image_bytes,
            ARCHIVE_EXPANSION * settings.limits.max_upload_bytes,
        )
        archive = Archive(archives[0].file, archives[0].filename or "archive", limits)
        try:
            _check_quota(store, archive.member_bytes, settings.limits.max_pool_bytes)
            return store.add_many(archive.images(), source or f"archive:{archive.name}", actor, **store_options)
        finally:
            archive.close()
    names = [f.filename or f"files[{i}]" for i, f in enumerate(files)]
    boxes = _boxes_per_file(boxes_text, names)
    _check_quota(store, sum(f.size or 0 for f in files), settings.limits.max_pool_bytes)
    items = (
        (name, read_part(part, settings.limits.max_image_bytes), box) for name, part, box in zip(names, files, boxes)
    )
    return store.add_many(items, source or "files", actor, **store_options)


def _check_quota(store: UploadStore, request_bytes: int, quota: int) -> None:
    """413 when the request's images alone exceed the pool quota, 507 when they would take the pool past it."""
    if request_bytes > quota:
        raise InputError(
            413,
            "request_exceeds_pool_quota",
            f"the upload's images are {request_bytes} bytes, more than the whole pool quota of {quota} bytes "
            "(max_pool_bytes); nothing was stored",
        )
    used = store.stored_bytes()
    if used + request_bytes > quota:
        raise InputError(
            507,
            "pool_quota_exceeded",
            f"the unlabeled pool holds {used} bytes of images; this upload's {request_bytes} bytes would pass its "
            f"quota of {quota} bytes (max_pool_bytes); nothing was stored: free space or raise the quota",
        )


def _boxes_per_file(text: str | None, names: list[str]) -> list[object]:
    """The raw boxes of each file from the `boxes` field (checked per image by the store)."""
    if text is None or not text.strip():
        return [None] * len(names)
    doc = parse_json(text.encode(), "'boxes'")
    if isinstance(doc, list):
        if len(doc) != len(names):
            raise InputError(422, "invalid_boxes", f"'boxes' lists {len(doc)} entries for {len(names)} files")
        return doc
    if not isinstance(doc, dict):
        raise InputError(
            422,
            "invalid_boxes",
            "'boxes' must be a JSON object {filename: [[x, y, w, h], ...]} or a "
            f"list aligned with 'files', got {type(doc).__name__}",
        )
    missing = sorted(set(doc) - set(names))
    if missing:
        raise InputError(422, "invalid_boxes", f"'boxes' names files not in the request: {missing[:5]}")
    return [doc.get(name) for name in names]


def read_part(part: UploadFile, limit: int) -> bytes | InputError:
    if part.size is not None and part.size > limit:
        return InputError(413, "image_too_large", f"image is {part.size} bytes, limit {limit} (max_image_bytes)")
    return part.file.read()


def file_parts(form: FormData, field: str) -> list[UploadFile]:
    parts = form.getlist(field)
    files = [p for p in parts if isinstance(p, UploadFile)]
    if len(files) != len(parts):
        raise InputError(422, f"invalid_{field}", f"'{field}' must be file parts (with a filename), not text fields")
    return files


def text_field(form: FormData, field: str) -> str | None:
    values = form.getlist(field)
    texts = [v for v in values if isinstance(v, str)]
    if len(values) > 1 or len(texts) != len(values):
        raise InputError(422, f"invalid_{field}", f"'{field}' must be a single text field")
    return texts[0] if texts else None
