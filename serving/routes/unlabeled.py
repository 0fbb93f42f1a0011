"""Unlabeled images for the retrain pool: POST /v1/unlabeled (role `upload`), GET /v1/unlabeled/stats.

POST input is multipart/form-data, one of:
  * `files` parts, each an image (JPEG, PNG, WebP, BMP), and optionally a `boxes` text field holding JSON, either
    {"<filename>": [[x, y, w, h], ...]} or a list aligned with the files (null / no entry = the whole image is
    one person; a single [x, y, w, h] is a one-box list);
  * one `archive` part: a tar (.tar, .tar.gz, .tgz, bzip2, xz) or zip of images with an optional boxes.json
    {"<member name>": boxes} (LSPET's {"boxes": {...}} wrapper too); see serving.archives.
  Optional `source` text field: provenance stored with each image (default "files" or "archive:<filename>").

Each image passes the /v1/pose input checks and its boxes must overlap it; a bad item is rejected on its own,
with its reason (also recorded in the store), and the good ones are stored: 200 with per-item lists. 4xx
answers only a request that is unusable as a whole (no images, bad `boxes` JSON, an unreadable archive).

Limits: the whole body is parsed before any image is stored (file parts spooled to temporary files, never held
in memory), so a body over `max_upload_bytes` (by Content-Length, or counted while it streams in), more than
`max_upload_files` files or archive entries, or an archive expanding past ARCHIVE_EXPANSION × max_upload_bytes
is refused whole with 413 and nothing is stored. An image over `max_image_bytes` is rejected on its own.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
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
async def upload(request: Request, caller: Principal = Depends(require("upload"))) -> dict:
    """{accepted: [{id, name}], duplicates: [{id, name}], rejected: [{name, reason}], counts}; id = sha256."""
    service = get_service(request)
    form = await _read_form(request, service.settings)
    try:
        report = await run_in_threadpool(_ingest, service.uploads, form, service.settings, caller.actor)
    finally:
        await form.close()
    if report.accepted:
        await run_in_threadpool(service.queue.dispatch_ingest_checks)
    return report.to_dict()


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


def _ingest(store: UploadStore, form: FormData, settings: Settings, actor: str) -> BatchReport:
    """Check the request as a whole, then store item by item (in a worker thread: hashing, decoding, fsync)."""
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
        return store.add_many(archive.images(), source or f"archive:{archive.name}", actor)
    names = [f.filename or f"files[{i}]" for i, f in enumerate(files)]
    boxes = _boxes_per_file(boxes_text, names)
    items = (
        (name, _read_part(part, settings.limits.max_image_bytes), box) for name, part, box in zip(names, files, boxes)
    )
    return store.add_many(items, source or "files", actor)


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
