"""POST /v1/pose (JSON or COCO results) and POST /v1/pose/render (PNG overlay).

Input, one of:
  * multipart/form-data: file field `image`, optional text fields `boxes` (JSON) and `image_id`;
  * application/json: {"image": "<base64 or data: URL>", "boxes": [[x, y, w, h], ...], "image_id": 7};
  * image/* or application/octet-stream: the encoded image as the body, `?boxes=<JSON>` optional.
No boxes = the person detector finds the people (each one posed, all in one batched call; none found =
`persons: []`); without a configured detector the whole image is one person. Boxes are [x, y, w, h] in image
pixels. `boxes_from` in the response says which ("detector", "request", "whole_image").

Options (query parameters, or fields of the JSON body / multipart form; defaults from settings.inference):
`max_persons` (20, at most limits.max_boxes), `det_threshold` (0.35), `kpt_threshold` (0.3: keypoints scoring
below it are `valid: false`, as MMPose's kpt_thr; nothing is dropped), `flip` (false: flip test). A bad value is
a 422 naming the field. Keypoints are never clipped: one outside the image is flagged `in_image: false`.

COCO output (`?format=coco`): the results-file list pycocotools' loadRes reads, one entry per person:
{"image_id" (only if given), "category_id": 1, "keypoints": [x1, y1, s1, ...], "score", "bbox": [x, y, w, h]}.
The third value per keypoint is the keypoint's confidence (the heatmap peak), as in COCO *results* files
(COCO's 0/1/2 visibility flags exist only in ground truth, and OKS ignores the value). Note: with `bbox`
present, loadRes takes the box area as the detection area.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
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
from serving.pipeline import PoseOptions, to_json
from serving.routes.deps import get_service, require

router = APIRouter(prefix="/v1", tags=["pose"])
_OPTION_TYPES = {"max_persons": "integer", "det_threshold": "number", "kpt_threshold": "number", "flip": "boolean"}


class RequestOptions(BaseModel):
    """Per-request options as sent (None = the settings default); the bounds are the API contract."""

    model_config = ConfigDict(extra="forbid")

    max_persons: int | None = Field(None, ge=1, description="most detected persons posed, best first")
    det_threshold: float | None = Field(None, ge=0, le=1, description="person score a detection needs")
    kpt_threshold: float | None = Field(None, ge=0, le=1, description="keypoints below it are `valid: false`")
    flip: bool | None = Field(None, description="flip test: also run mirrored crops and average")


class Keypoint(BaseModel):
    name: str
    x: float = Field(description="column, image pixels (pixel centres at integers); never clipped")
    y: float = Field(description="row, image pixels; never clipped")
    score: float = Field(description="confidence (heatmap peak)")
    in_image: bool = Field(description="inside [-0.5, width - 0.5] × [-0.5, height - 0.5]")
    valid: bool = Field(description="score ≥ kpt_threshold and in_image")


class Person(BaseModel):
    box: list[float] = Field(min_length=4, max_length=4, description="[x, y, w, h], image pixels")
    det_score: float | None = Field(description="detector person score; null when the box was given or whole image")
    pose_score: float = Field(description="mean keypoint score")
    score: float = Field(description="same as pose_score (kept for older clients)")
    keypoints: list[Keypoint]


class ImageInfo(BaseModel):
    width: int = Field(..., description="displayed width (after EXIF orientation); keypoints are in these pixels")
    height: int
    id: int | None
    decoded_scale: float = Field(
        1.0,
        description="the resolution the image was decoded at: 1 = full, 1/2, 1/4, 1/8 = a large JPEG decoded only "
        "as large as the detector and the crops need (inference.decode_min_side); keypoints are still full-size",
    )


class AppliedOptions(BaseModel):
    max_persons: int
    det_threshold: float
    kpt_threshold: float
    flip: bool


class PoseResponse(BaseModel):
    """The body of POST /v1/pose (format=poseloop)."""

    model_version: str
    image: ImageInfo
    boxes_from: Literal["detector", "request", "whole_image"]
    options: AppliedOptions = Field(description="the options in effect (request values or defaults)")
    persons: list[Person] = Field(description="[] when no person was found (never a guessed skeleton)")
    timing_ms: dict[str, float]


class CocoResult(BaseModel):
    """One entry of the format=coco answer (pycocotools loadRes)."""

    image_id: int | None = None
    category_id: int
    keypoints: list[float] = Field(description="x1, y1, s1, x2, ... (s = confidence)")
    score: float
    bbox: list[float]


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
                        **{k: {"type": v} for k, v in _OPTION_TYPES.items()},
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
                        **{k: {"type": v} for k, v in _OPTION_TYPES.items()},
                    },
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def query_options(
    max_persons: int | None = Query(None, ge=1, description="most detected persons (default 20)"),
    det_threshold: float | None = Query(None, ge=0, le=1, description="person score needed (default 0.35)"),
    kpt_threshold: float | None = Query(None, ge=0, le=1, description="keypoint validity threshold (default 0.3)"),
    flip: bool | None = Query(None, description="flip test (default false)"),
) -> RequestOptions:
    return RequestOptions(max_persons=max_persons, det_threshold=det_threshold, kpt_threshold=kpt_threshold, flip=flip)


@router.post(
    "/pose",
    openapi_extra=_BODY_SCHEMA,
    summary="Keypoints of the people in an image",
    response_model=PoseResponse | list[CocoResult],
)
async def pose(
    request: Request,
    format: Literal["poseloop", "coco"] = "poseloop",
    image_id: int | None = Query(None, ge=0, le=MAX_IMAGE_ID, description="echoed in COCO results"),
    boxes: str | None = Query(None, description="JSON boxes, for a raw image body"),
    query: RequestOptions = Depends(query_options),
    _caller: Principal = Depends(require("infer")),
):
    """PoseResponse (format=poseloop) or a COCO results list (format=coco); header X-Model-Version names the
    version that computed it."""
    service = get_service(request)
    pose_input, body_options = await read_pose_input(request, service.settings, boxes, image_id)
    applied = resolve_options(query, body_options, service.settings)
    outcome = await service.predict(pose_input, pipeline_options(applied))
    headers = {"X-Model-Version": outcome.result.version}
    if format == "coco":
        return service.json_response(to_coco(outcome.result.poses, pose_input.image_id), headers)
    doc = to_json(outcome.result.poses, outcome.result.version, applied.kpt_threshold, (outcome.width, outcome.height))
    doc["image"] = {
        "width": outcome.width,
        "height": outcome.height,
        "id": pose_input.image_id,
        "decoded_scale": 1 / outcome.reduction,
    }
    doc["boxes_from"] = outcome.result.source
    doc["options"] = applied.model_dump()
    doc["timing_ms"] = {**outcome.timing_ms, "detect": round(outcome.result.detect_ms, 3)}
    return service.json_response(doc, headers)


@router.post(
    "/pose/render",
    openapi_extra=_BODY_SCHEMA,
    summary="Skeleton overlay PNG",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
async def render(
    request: Request,
    boxes: str | None = Query(None),
    query: RequestOptions = Depends(query_options),
    _caller: Principal = Depends(require("infer")),
):
    service = get_service(request)
    pose_input, body_options = await read_pose_input(request, service.settings, boxes, None)
    applied = resolve_options(query, body_options, service.settings)
    png, version = await service.render(pose_input, pipeline_options(applied), applied.kpt_threshold)
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


POSE_FIELDS = ("image", "boxes", "image_id", *_OPTION_TYPES)


def body_options(values: dict[str, Any], strict: bool) -> RequestOptions:
    """Options sent in the body, validated (422 naming the field); strict for JSON values (true, not "yes"),
    lax for multipart text fields ("true", "0.5")."""
    try:
        return RequestOptions.model_validate(values, strict=strict)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or "options"
        raise InputError(422, "invalid_option", f"{field}: {first.get('msg')}") from None


def resolve_options(query: RequestOptions, sent: RequestOptions, settings) -> AppliedOptions:
    """Query and body options merged (the same option in both with different values is a 422), defaults
    filled from settings.inference; max_persons may not exceed limits.max_boxes."""
    merged = {}
    for name in RequestOptions.model_fields:
        q, b = getattr(query, name), getattr(sent, name)
        if q is not None and b is not None and q != b:
            raise InputError(422, "conflicting_option", f"{name} is {q!r} in the query but {b!r} in the body")
        merged[name] = q if q is not None else b
    inference, max_boxes = settings.inference, settings.limits.max_boxes
    if merged["max_persons"] is not None and merged["max_persons"] > max_boxes:
        raise InputError(422, "invalid_option", f"max_persons: {merged['max_persons']} is above the limit {max_boxes}")
    return AppliedOptions(
        max_persons=merged["max_persons"] or min(inference.max_persons, max_boxes),
        det_threshold=inference.det_threshold if merged["det_threshold"] is None else merged["det_threshold"],
        kpt_threshold=inference.kpt_threshold if merged["kpt_threshold"] is None else merged["kpt_threshold"],
        flip=inference.flip_test if merged["flip"] is None else merged["flip"],
    )


def pipeline_options(applied: AppliedOptions) -> PoseOptions:
    """What the pipeline needs: a request without boxes is always detected (if a detector is configured)."""
    return PoseOptions(
        detect=True, det_threshold=applied.det_threshold, max_persons=applied.max_persons, flip=applied.flip
    )


def _refuse_unknown(names) -> None:
    """A misspelt field (`bbox=`) must not be ignored: the request would run without the boxes it meant."""
    unknown = sorted(set(names) - set(POSE_FIELDS))
    if unknown:
        shown = ", ".join(repr(n[:40]) for n in unknown[:5])
        raise InputError(422, "unknown_field", f"unknown field(s) {shown}; the fields are {', '.join(POSE_FIELDS)}")


async def read_pose_input(
    request: Request, settings, boxes_query: str | None, image_id: int | None
) -> tuple[PoseInput, RequestOptions]:
    """The encoded image, raw boxes and image id from any accepted content type (size-limited; see module doc),
    and the options sent in the body (JSON values, or multipart text fields; validated by resolve_options)."""
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
        options = body_options({k: doc[k] for k in _OPTION_TYPES if doc.get(k) is not None}, strict=True)
        return PoseInput(data, doc.get("boxes"), False, _pick_id(image_id, doc.get("image_id"))), options
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
        options = body_options(
            {k: form[k] for k in _OPTION_TYPES if isinstance(form.get(k), str) and form[k].strip() != ""}, strict=False
        )
        pose_input = PoseInput(
            data,
            form_boxes if form_boxes is not None else boxes_query,
            True,
            _pick_id(image_id, form_id if isinstance(form_id, str) else None),
        )
        return pose_input, options
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        if len(body) > settings.limits.max_image_bytes:
            raise InputError(
                413, "image_too_large", f"image is {len(body)} bytes, limit {settings.limits.max_image_bytes}"
            )
        return PoseInput(body, boxes_query, True, image_id), RequestOptions()
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
