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

from collections.abc import AsyncGenerator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from continual.settings import Settings
from continual.uploads import BatchReport, UploadStore
from core.inputs import InputError, declared_length_exceeds, parse_json
from serving.archives import Archive, ArchiveLimits
from serving.auth import AuthError, Principal
from serving.routes.deps import get_service, require

router = APIRouter(prefix="/v1/unlabeled", tags=["unlabeled"])

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


@router.post("", openapi_extra=_BODY_SCHEMA, summary="Add unlabeled images (files or one archive) to the pool")
async def upload(request: Request, caller: Principal = Depends(require("upload"))):
    """{accepted: [{id, name}], duplicates: [{id, name}], rejected: [{name, reason}], counts}; id = sha256."""
    service = get_service(request)
    form = await _read_form(request, service.settings)
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


@router.get("/stats", summary="Pool size, images new since the active model was trained, rejections, disk use")
async def stats(request: Request, caller: Principal = Depends(require(None))) -> dict:
    if not caller.roles & {"upload", "ops"}:
        raise AuthError(403, "forbidden", f"this token lacks the 'upload' or 'ops' role (has {sorted(caller.roles)})")
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


async def _read_form(request: Request, settings: Settings) -> FormData:
    """The multipart form; 413 as soon as the body passes max_upload_bytes or max_upload_files."""
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
        max_fields=len(FIELDS),
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
    files, archives = _file_parts(form, "files"), _file_parts(form, "archive")
    boxes_text, source = _text_field(form, "boxes"), _text_field(form, "source")
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
        (name, _read_part(part, settings.limits.max_image_bytes), box) for name, part, box in zip(names, files, boxes)
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


def _read_part(part: UploadFile, limit: int) -> bytes | InputError:
    if part.size is not None and part.size > limit:
        return InputError(413, "image_too_large", f"image is {part.size} bytes, limit {limit} (max_image_bytes)")
    return part.file.read()


def _file_parts(form: FormData, field: str) -> list[UploadFile]:
    parts = form.getlist(field)
    files = [p for p in parts if isinstance(p, UploadFile)]
    if len(files) != len(parts):
        raise InputError(422, f"invalid_{field}", f"'{field}' must be file parts (with a filename), not text fields")
    return files


def _text_field(form: FormData, field: str) -> str | None:
    values = form.getlist(field)
    texts = [v for v in values if isinstance(v, str)]
    if len(values) > 1 or len(texts) != len(values):
        raise InputError(422, f"invalid_{field}", f"'{field}' must be a single text field")
    return texts[0] if texts else None
