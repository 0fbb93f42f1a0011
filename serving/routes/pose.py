"""POST /v1/pose (JSON or COCO results) and POST /v1/pose/render (PNG overlay).

Input, one of:
  * multipart/form-data: file field `image`, optional text fields `boxes` (JSON) and `image_id`;
  * application/json: {"image": "<base64 or data: URL>", "boxes": [[x, y, w, h], ...], "image_id": 7};
  * image/* or application/octet-stream: the encoded image as the body, `?boxes=<JSON>` optional.
No boxes = the whole image is one person. Boxes are [x, y, w, h] in image pixels.

COCO output (`?format=coco`): the results-file list pycocotools' loadRes reads, one entry per person:
{"image_id" (only if given), "category_id": 1, "keypoints": [x1, y1, s1, ...], "score", "bbox": [x, y, w, h]}.
The third value per keypoint is the keypoint's confidence (the heatmap peak), as in COCO *results* files
(COCO's 0/1/2 visibility flags exist only in ground truth, and OKS ignores the value). Note: with `bbox`
present, loadRes takes the box area as the detection area.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartParser

from core.inputs import (
    MAX_IMAGE_ID,
    InputError,
    PoseInput,
    declared_length_exceeds,
    decode_base64_image,
    parse_image_id,
    parse_json,
)
from serving.auth import Principal
from serving.pipeline import to_json
from serving.routes.deps import get_service, require

router = APIRouter(prefix="/v1", tags=["pose"])

_BODY_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "boxes": {"type": "string", "description": "JSON [[x, y, w, h], ...]"},
                        "image_id": {"type": "integer"},
                    },
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "string", "description": "base64 (or a data: URL)"},
                        "boxes": {
                            "type": "array",
                            "items": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4},
                        },
                        "image_id": {"type": "integer"},
                    },
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post("/pose", openapi_extra=_BODY_SCHEMA, summary="Keypoints of the people in an image")
async def pose(
    request: Request,
    format: Literal["poseloop", "coco"] = "poseloop",
    image_id: int | None = Query(None, ge=0, le=MAX_IMAGE_ID, description="echoed in COCO results"),
    boxes: str | None = Query(None, description="JSON boxes, for a raw image body"),
    _caller: Principal = Depends(require("infer")),
):
    """{model_version, image, persons: [{box, score, keypoints: [{name, x, y, score}]}], timing_ms}; header
    X-Model-Version names the version that computed it."""
    service = get_service(request)
    pose_input = await read_pose_input(request, service.settings, boxes, image_id)
    outcome = await service.predict(pose_input)
    headers = {"X-Model-Version": outcome.result.version}
    if format == "coco":
        return service.json_response(to_coco(outcome.result.poses, pose_input.image_id), headers)
    doc = to_json(outcome.result.poses, outcome.result.version)
    doc["image"] = {"width": outcome.width, "height": outcome.height, "id": pose_input.image_id}
    doc["timing_ms"] = outcome.timing_ms
    return service.json_response(doc, headers)


@router.post(
    "/pose/render",
    openapi_extra=_BODY_SCHEMA,
    summary="Skeleton overlay PNG",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
async def render(request: Request, boxes: str | None = Query(None), _caller: Principal = Depends(require("infer"))):
    service = get_service(request)
    pose_input = await read_pose_input(request, service.settings, boxes, None)
    png, version = await service.render(pose_input)
    return Response(png, media_type="image/png", headers={"X-Model-Version": version})


def to_coco(poses, image_id: int | None) -> list[dict]:
    out = []
    for pose in poses:
        flat = []
        for (x, y), s in zip(pose.keypoints, pose.keypoint_scores):
            flat += [float(x), float(y), float(s)]
        entry = {"category_id": 1, "keypoints": flat, "score": float(pose.score), "bbox": [float(v) for v in pose.box]}
        if image_id is not None:
            entry["image_id"] = image_id
        out.append(entry)
    return out


POSE_FIELDS = ("image", "boxes", "image_id")


def _refuse_unknown(names) -> None:
    """A misspelt field (`bbox=`) must not be ignored: the request would run without the boxes it meant."""
    unknown = sorted(set(names) - set(POSE_FIELDS))
    if unknown:
        shown = ", ".join(repr(n[:40]) for n in unknown[:5])
        raise InputError(422, "unknown_field", f"unknown field(s) {shown}; the fields are {', '.join(POSE_FIELDS)}")


async def read_pose_input(request: Request, settings, boxes_query: str | None, image_id: int | None) -> PoseInput:
    """The encoded image, raw boxes and image id from any accepted content type (size-limited; see module doc)."""
    body = await _read_body(request, settings.limits.max_image_bytes * 4 // 3 + (1 << 20))
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        doc = parse_json(body)
        if not isinstance(doc, dict):
            raise InputError(422, "invalid_request", "the JSON body must be an object with an 'image' field")
        if "image" not in doc:
            raise InputError(422, "missing_image", "the JSON body has no 'image' field (base64)")
        _refuse_unknown(doc.keys())
        data = decode_base64_image(doc["image"], settings.limits.max_image_bytes)
        return PoseInput(data, doc.get("boxes"), False, _pick_id(image_id, doc.get("image_id")))
    if ctype == "multipart/form-data":
        form = await _parse_multipart(request.headers, body)
        _refuse_unknown(form.keys())
        if len(form.getlist("image")) > 1:
            raise InputError(422, "too_many_images", "send one 'image' part per request (use /v1/pose per image)")
        upload = form.get("image")
        if upload is None:
            raise InputError(422, "missing_image", "the form has no 'image' file field")
        if not isinstance(upload, UploadFile):
            raise InputError(422, "invalid_image_field", "'image' must be a file upload, not a text field")
        data = await upload.read()
        if len(data) > settings.limits.max_image_bytes:
            raise InputError(
                413, "image_too_large", f"image is {len(data)} bytes, limit {settings.limits.max_image_bytes}"
            )
        form_boxes = form.get("boxes")
        if form_boxes is not None and not isinstance(form_boxes, str):
            raise InputError(422, "invalid_boxes", "'boxes' must be a text field holding JSON")
        form_id = form.get("image_id")
        return PoseInput(
            data,
            form_boxes if form_boxes is not None else boxes_query,
            True,
            _pick_id(image_id, form_id if isinstance(form_id, str) else None),
        )
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        if len(body) > settings.limits.max_image_bytes:
            raise InputError(
                413, "image_too_large", f"image is {len(body)} bytes, limit {settings.limits.max_image_bytes}"
            )
        return PoseInput(body, boxes_query, True, image_id)
    raise InputError(
        415,
        "unsupported_media_type",
        f"Content-Type {ctype or '(none)'!r} is not accepted; send multipart/form-data, application/json or image/*",
    )


def _pick_id(query_id: int | None, body_id) -> int | None:
    return query_id if query_id is not None else parse_image_id(body_id)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds `limit` bytes (Content-Length or streamed)."""
    declared = request.headers.get("content-length")
    if declared_length_exceeds(declared, limit):
        raise InputError(413, "request_too_large", f"request body is {declared} bytes, limit {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InputError(413, "request_too_large", f"request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _parse_multipart(headers: Headers, body: bytes):
    async def stream():
        yield body

    try:
        return await MultiPartParser(headers, stream(), max_files=2, max_fields=8).parse()
    except Exception as err:
        raise InputError(400, "malformed_multipart", f"multipart body cannot be parsed: {err}") from None
