"""Human-labeled data for retraining and the gate: POST /v1/labeled (role `ops`), GET /v1/labeled/stats.

Role: `ops`, not `upload`. Labeled persons decide promotions (the gate scores on their gate part), so who may
register them is who may promote; an uploader feeds the unlabeled pool only. Stats: `upload` or `ops`.

POST input is multipart/form-data, one of:
  * an `annotations` part (a COCO keypoints JSON, file or text) and `files` parts, one per image of its `images`
    (matched by base file name);
  * one `archive` part (tar, tar.gz or zip; serving.archives) holding the images and exactly one `*.json`
    (the annotations), or an `annotations` part next to the archive.
  Optional `source` text field (default "labeled:files" / "labeled:archive:<name>").

Strict and all-or-nothing (continual.coco_labels): the keypoint schema (the active model's or COCO-17), the
keypoint count, every box and labeled keypoint inside its image, every listed image present and no file that is
not listed, each image's declared width × height equal to the decoded (EXIF-oriented) image; otherwise 422
naming the problems and nothing is stored. Persons COCO marks unusable (iscrowd, no labeled keypoint) are
skipped and listed. Accepted images are written durably (core.fileio) and indexed before the 200; the same
image + annotation again is a duplicate. Each image falls in the train or the gate part by its sha256
(continual.labeled.part_of).
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from starlette.datastructures import FormData, UploadFile

from continual.coco_labels import CocoLabels, parse_coco
from continual.labeled import LabeledStore, labeled_store
from continual.uploads import safe_name
from core.inputs import ImageHeader, InputError, check_image, decode_image, parse_json
from serving.archives import Archive, ArchiveLimits
from serving.auth import AuthError, Principal
from serving.ops_types import error_responses
from serving.routes.deps import get_service, require
from serving.routes.unlabeled import ARCHIVE_EXPANSION, MAX_SOURCE_CHARS, file_parts, read_form, read_part, text_field

router = APIRouter(prefix="/v1/labeled", tags=["labeled"], responses=error_responses(401, 403))
log = logging.getLogger("poseloop.labeled")
FIELDS = ("annotations", "files", "archive", "source")
MAX_ANNOTATION_BYTES = 64 << 20
KNOWN_SCHEMAS = ("lsp14", "coco17", "mpii16")

_BODY_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "annotations": {"type": "string", "format": "binary", "description": "COCO keypoints JSON"},
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "archive": {"type": "string", "format": "binary", "description": "tar/zip: images + *.json"},
                        "source": {"type": "string"},
                    },
                }
            }
        },
    }
}


class LabeledImage(BaseModel):
    id: str = Field(..., description="sha256 of the image bytes")
    name: str
    part: str = Field(..., description="train or gate (by image hash)")
    persons: int = Field(..., description="persons stored now")
    duplicates: int = Field(0, description="persons of this image already registered")


class SkippedItem(BaseModel):
    annotation: str
    reason: str


class LabeledCounts(BaseModel):
    images: int
    persons: int = Field(..., description="persons stored now")
    duplicates: int = Field(..., description="persons already registered")
    skipped: int


class LabeledReport(BaseModel):
    schema_: str = Field(..., alias="schema", description="the keypoint schema the annotations are in")
    accepted: list[LabeledImage] = Field(..., description="images with at least one new person")
    duplicates: list[LabeledImage] = Field(..., description="images whose persons were all registered before")
    skipped: list[SkippedItem]
    counts: LabeledCounts


class PartCounts(BaseModel):
    images: int
    persons: int


class LabeledStats(BaseModel):
    images: int
    persons: int
    train: PartCounts
    gate: PartCounts = Field(..., description="what the retrain gate scores on, never trained on")
    gate_percent: int
    schemas: dict[str, int] = Field(..., description="persons per keypoint schema")
    max_seq: int = Field(..., description="the newest person's seq (a retrain plan fixes its snapshot by it)")
    disk_bytes: int


@router.post(
    "",
    openapi_extra=_BODY_SCHEMA,
    summary="Register labeled persons (COCO keypoints JSON + images) for retraining and the gate",
    response_model=LabeledReport,
    response_model_by_alias=True,
    responses=error_responses(400, 409, 413, 422, 503),
)
async def register(request: Request, caller: Principal = Depends(require("ops"))) -> dict:
    service = get_service(request)
    form = await read_form(request, service.settings, FIELDS)
    try:
        report = await run_in_threadpool(_register, service, form, caller.actor)
    finally:
        await form.close()
    log.info("labeled data from %s: %s", caller.actor, report["counts"])
    return report


@router.get("/stats", summary="Registered labeled images and persons, per part and schema", response_model=LabeledStats)
async def stats(request: Request, caller: Principal = Depends(require(None))) -> dict:
    if not caller.roles & {"upload", "ops"}:
        raise AuthError(403, "forbidden", f"this token lacks the 'upload' or 'ops' role (has {sorted(caller.roles)})")
    return await run_in_threadpool(store_of(get_service(request)).stats)


def store_of(service: Any) -> LabeledStore:
    """The Service's labeled store (made once per Service)."""
    store = getattr(service, "labeled", None)
    if store is None:
        store = service.labeled = labeled_store(service.settings.loop.data_dir)
    return store


def model_schema(service: Any) -> str:
    active = service.manager.registry.active()
    if active is None:
        raise InputError(503, "no_active_model", "no active model: its keypoint schema decides what labels fit")
    schema = str((active.meta.get("onnx") or {}).get("schema") or "")
    if schema not in KNOWN_SCHEMAS:
        raise InputError(
            409,
            "unknown_model_schema",
            f"the active model's keypoint schema {schema!r} is not one of "
            f"{list(KNOWN_SCHEMAS)}: labels cannot be checked against it",
        )
    return schema


Members = Callable[[], Iterator[tuple[str, "bytes | InputError"]]]


def _register(service: Any, form: FormData, actor: str) -> dict:
    settings = service.settings
    unknown = sorted(set(form.keys()) - set(FIELDS))
    if unknown:
        raise InputError(422, "unknown_field", f"unknown form field(s) {unknown}; expected {list(FIELDS)}")
    files, archives = file_parts(form, "files"), file_parts(form, "archive")
    source = text_field(form, "source")
    if source is not None and len(source) > MAX_SOURCE_CHARS:
        raise InputError(422, "invalid_source", f"'source' is {len(source)} characters, limit {MAX_SOURCE_CHARS}")
    if archives and (files or len(archives) > 1):
        raise InputError(422, "invalid_archive", "send either 'files' parts or exactly one 'archive' part")
    if not files and not archives:
        raise InputError(400, "no_files", "the request holds no images: send 'files' parts or one 'archive' part")
    annotation_bytes = _annotation_part(form)
    if archives:
        limits = ArchiveLimits(
            settings.limits.max_upload_files,
            settings.limits.max_image_bytes,
            ARCHIVE_EXPANSION * settings.limits.max_upload_bytes,
        )
        archive = Archive(archives[0].file, archives[0].filename or "archive", limits)
        try:
            members: Members = lambda: ((posixpath.basename(n), d) for n, d, _b in archive.images())  # noqa: E731
            if annotation_bytes is None:
                annotation_bytes, members = _annotations_in(members)
            return _check_and_store(
                service, annotation_bytes, members, source or f"labeled:archive:{archive.name}", actor
            )
        finally:
            archive.close()
    if annotation_bytes is None:
        raise InputError(400, "no_annotations", "send the COCO keypoints JSON as an 'annotations' part")

    def parts() -> Iterator[tuple[str, bytes | InputError]]:
        for i, part in enumerate(files):
            part.file.seek(0)
            yield posixpath.basename(part.filename or f"files[{i}]"), read_part(part, settings.limits.max_image_bytes)

    return _check_and_store(service, annotation_bytes, parts, source or "labeled:files", actor)


def _annotation_part(form: FormData) -> bytes | None:
    values = form.getlist("annotations")
    if len(values) > 1:
        raise InputError(422, "invalid_annotations", "send one 'annotations' part")
    if not values:
        return None
    value = values[0]
    if isinstance(value, UploadFile):
        if (value.size or 0) > MAX_ANNOTATION_BYTES:
            raise InputError(413, "annotations_too_large", f"'annotations' is over {MAX_ANNOTATION_BYTES} bytes")
        return value.file.read()
    return value.encode()


def _annotations_in(members: Members) -> tuple[bytes, Members]:
    """The archive's one *.json member, and the members without it."""
    found = [(n, d) for n, d in members() if n.lower().endswith(".json")]
    if len(found) != 1:
        names = [safe_name(n) for n, _ in found][:5]
        raise InputError(
            422, "no_annotations", f"the archive must hold exactly one *.json (the COCO annotations), found {names}"
        )
    name, data = found[0]
    if isinstance(data, InputError):
        raise InputError(data.status, data.code, f"annotations member {safe_name(name)}: {data.message}")
    return data, lambda: ((n, d) for n, d in members() if n != name)


def _check_and_store(service: Any, annotation_bytes: bytes, members: Members, source: str, actor: str) -> dict:
    """Parse and check everything (422 naming the problems, nothing stored), then store image by image."""
    settings = service.settings
    labels = parse_coco(parse_json(annotation_bytes, "'annotations'"), model_schema(service), settings.limits.max_boxes)
    problems: list[str] = []
    seen: dict[str, ImageHeader] = {}
    for name, data in members():
        spec = labels.images.get(name)
        if spec is None:
            if name not in labels.listed:
                problems.append(f"file {safe_name(name)!r} is not in the annotations' images")
            continue
        if name in seen:
            problems.append(f"two files are named {safe_name(name)!r}")
            continue
        try:
            if isinstance(data, InputError):
                raise data
            header = _decoded_header(service, data)
        except InputError as err:
            problems.append(f"image {safe_name(name)!r}: {err.code}: {err.message}")
            continue
        if (header.width, header.height) != (spec.width, spec.height):
            problems.append(
                f"image {safe_name(name)!r} is {header.width}×{header.height} (EXIF-oriented) but the annotations "
                f"say {spec.width}×{spec.height}"
            )
        seen[name] = header
    problems += [
        f"image {safe_name(n)!r} is in the annotations but not in the request" for n in labels.images if n not in seen
    ]
    if problems:
        more = f" (+{len(problems) - 10} more)" if len(problems) > 10 else ""
        raise InputError(422, "invalid_labeled_data", f"{len(problems)} problem(s): {'; '.join(problems[:10])}{more}")
    return _store(store_of(service), labels, members, seen, source, actor)


def _decoded_header(service: Any, data: bytes) -> ImageHeader:
    """The image's header with the decoded (EXIF-oriented) size; decoding held against the pixel budget."""
    settings = service.settings
    header = check_image(data, settings.limits.max_pixels)
    pixels = header.width * header.height
    try:
        service.pixel_budget.acquire(pixels, settings.api.request_timeout_s)
    except TimeoutError:
        raise InputError(503, "overloaded", "too many large images are being decoded; retry later") from None
    try:
        height, width = decode_image(data, settings.limits.max_pixels, header).shape[:2]
    finally:
        service.pixel_budget.release(pixels)
    return ImageHeader(header.format, width, height)


def _store(
    store: LabeledStore, labels: CocoLabels, members: Members, headers: dict[str, ImageHeader], source: str, actor: str
) -> dict:
    accepted: list[dict] = []
    duplicates: list[dict] = []
    for name, data in members():
        spec = labels.images.get(name)
        if spec is None or isinstance(data, InputError):
            continue
        outcome = store.add_image(data, headers[name], name, labels.schema, spec.persons, source, actor)
        item = {
            "id": outcome.sha256,
            "name": safe_name(name),
            "part": outcome.part,
            "persons": outcome.accepted,
            "duplicates": outcome.duplicates,
        }
        (accepted if outcome.accepted else duplicates).append(item)
    counts = {
        "images": len(accepted) + len(duplicates),
        "persons": sum(i["persons"] for i in accepted),
        "duplicates": sum(i["duplicates"] for i in accepted + duplicates),
        "skipped": len(labels.skipped),
    }
    return {
        "schema": labels.schema,
        "accepted": accepted,
        "duplicates": duplicates,
        "skipped": labels.skipped,
        "counts": counts,
    }
