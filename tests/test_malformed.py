"""Bad input against a LIVE server process: a corpus of malformed requests (plus hypothesis-generated ones) must
each get a 4xx JSON error naming the problem — never a 5xx — while the process stays up with bounded RSS."""

from __future__ import annotations

import base64
import json
import secrets
import struct
import zlib

import cv2
import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.registry import ModelRegistry
from tests.serving_fixtures import auth, encode, process_server, rss_kib, sample_image, tiny_pose_onnx

pytestmark = pytest.mark.integration  # real server processes: `make test`, not `make test-fast`

TOKEN = secrets.token_urlsafe(16)
OPS = secrets.token_urlsafe(16)
MAX_BYTES = 2 * 1024 * 1024
IMAGE = sample_image(1, (160, 120))
PNG = encode(IMAGE, ".png")
JPEG = encode(IMAGE, ".jpg")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(side: int = 30000) -> bytes:
    """A valid side×side 1-bit greyscale PNG (~110 kB for 30000; decodes to 2.7 GB as 8-bit RGB)."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    comp = zlib.compressobj(6)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def jpeg_with_size(width: int, height: int) -> bytes:
    data = bytearray(JPEG)
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def webp_canvas(width: int, height: int) -> bytes:
    vp8x = (
        b"VP8X"
        + struct.pack("<I", 10)
        + b"\x00" * 4
        + (width - 1).to_bytes(3, "little")
        + (height - 1).to_bytes(3, "little")
    )
    body = b"WEBP" + vp8x + b"\x00" * 16
    return b"RIFF" + struct.pack("<I", len(body)) + body


def bmp_with(width: int, height: int) -> bytes:
    data = bytearray(encode(IMAGE, ".bmp"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def corrupt_png_idat() -> bytes:
    data = bytearray(PNG)
    start = data.find(b"IDAT") + 4
    for i in range(start + 20, start + 60):
        data[i] ^= 0x5A
    return bytes(data)


def multipart(image: bytes, boxes: str | None = None, filename: str = "x.png") -> dict:
    files = {"image": (filename, image)}
    if boxes is not None:
        files["boxes"] = (None, boxes)
    return {"files": files}


def body(content: bytes, ctype: str | None) -> dict:
    return {"content": content, "headers": {"Content-Type": ctype} if ctype else {}}


def corpus() -> list[tuple[str, dict]]:
    """(name, httpx request kwargs for POST /v1/pose)."""
    b64 = base64.b64encode(PNG).decode()
    half_png, half_jpeg = PNG[: len(PNG) // 2], JPEG[: len(JPEG) // 2]
    webp = encode(IMAGE, ".webp")
    cases = {
        # --- image bytes
        "zero-byte image": multipart(b""),
        "text as image": multipart(b"this is not an image"),
        "random bytes": multipart(np.random.default_rng(0).bytes(4096)),
        "truncated png (half)": multipart(half_png),
        "truncated png (no IEND)": multipart(PNG[:-12]),
        "png signature only": multipart(PNG[:8]),
        "png header only": multipart(PNG[:33]),
        "png corrupt IDAT": multipart(corrupt_png_idat()),
        "png zero width": multipart(PNG[:16] + struct.pack(">I", 0) + PNG[20:]),
        "png bomb 30000x30000": multipart(png_bomb()),
        "truncated jpeg (half)": multipart(half_jpeg),
        "truncated jpeg (no EOI)": multipart(JPEG[:-2]),
        "jpeg header only": multipart(JPEG[:200]),
        "jpeg soi only": multipart(b"\xff\xd8\xff"),
        "jpeg bomb 65000x65000": multipart(jpeg_with_size(65000, 65000)),
        "jpeg zero height (DNL)": multipart(jpeg_with_size(100, 0)),
        "truncated webp": multipart(webp[: len(webp) // 2]),
        "webp bomb canvas 16384^2": multipart(webp_canvas(16384, 16384)),
        "webp riff only": multipart(b"RIFF\x10\x00\x00\x00WEBP"),
        "truncated bmp": multipart(encode(IMAGE, ".bmp")[:500]),
        "bmp bomb 100000^2": multipart(bmp_with(100000, 100000)),
        "bmp negative width": multipart(bmp_with(-160, 120)),
        "gif": multipart(b"GIF89a" + b"\x01\x00\x01\x00" + b"\x00" * 20),
        "tiff": multipart(encode(IMAGE, ".tiff")),
        "pdf": multipart(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n"),
        "svg": multipart(b"<svg xmlns='http://www.w3.org/2000/svg' width='1e9' height='1e9'/>"),
        "image over byte limit": multipart(PNG[:8] + b"\x00" * (MAX_BYTES + 10)),
        # --- boxes
        "boxes not json": multipart(PNG, "not json"),
        "boxes object": multipart(PNG, "{}"),
        "boxes flat list": multipart(PNG, "[1, 2, 3, 4]"),
        "box with 3 values": multipart(PNG, "[[1, 2, 3]]"),
        "box with 5 values": multipart(PNG, "[[1, 2, 3, 4, 5]]"),
        "box NaN": multipart(PNG, "[[NaN, 0, 10, 10]]"),
        "box Infinity": multipart(PNG, "[[0, 0, Infinity, 10]]"),
        "box -Infinity": multipart(PNG, "[[-Infinity, 0, 10, 10]]"),
        "box negative width": multipart(PNG, "[[10, 10, -5, 20]]"),
        "box zero area": multipart(PNG, "[[10, 10, 0, 0]]"),
        "box outside right": multipart(PNG, "[[1000, 10, 50, 50]]"),
        "box outside top-left": multipart(PNG, "[[-500, -500, 100, 100]]"),
        "too many boxes": multipart(PNG, json.dumps([[0, 0, 10, 10]] * 65)),
        "box with string": multipart(PNG, '[["a", 0, 10, 10]]'),
        "box with bool": multipart(PNG, "[[true, 0, 10, 10]]"),
        "box with null": multipart(PNG, "[[null, 0, 10, 10]]"),
        "box 1e300": multipart(PNG, "[[0, 0, 1e300, 1e300]]"),
        "boxes nested too deep": multipart(PNG, "[[[1, 2, 3, 4]]]"),
        "boxes deep recursion": multipart(PNG, "[" * 100_000 + "]" * 100_000),
        "boxes invalid utf-8": {"files": {"image": ("x.png", PNG), "boxes": (None, b"\xff\xfe[[1,2,3,4]]")}},
        # --- JSON body
        "json truncated": body(b'{"image": "', "application/json"),
        "json array": body(b"[1, 2]", "application/json"),
        "json no image": body(b'{"boxes": []}', "application/json"),
        "json image number": body(b'{"image": 12}', "application/json"),
        "json image bad base64": body(b'{"image": "!!!not base64!!!"}', "application/json"),
        "json base64 of garbage": body(
            json.dumps({"image": base64.b64encode(b"garbage" * 9).decode()}).encode(), "application/json"
        ),
        "json data url not base64": body(b'{"image": "data:image/png,abc"}', "application/json"),
        "json negative image_id": body(json.dumps({"image": b64, "image_id": -3}).encode(), "application/json"),
        "json string image_id": body(json.dumps({"image": b64, "image_id": "abc"}).encode(), "application/json"),
        "json boxes as string": body(json.dumps({"image": b64, "boxes": "[[0,0,5,5]]"}).encode(), "application/json"),
        "json invalid utf-8": body(b'{"image": "\xff\xfe"}', "application/json"),
        "json empty body": body(b"", "application/json"),
        "json deep nesting": body(b'{"image": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "application/json"),
        # --- content types and framing
        "text/plain body": body(PNG, "text/plain"),
        "no content type": body(PNG, None),
        "multipart without image": {"files": {"boxes": (None, "[[0,0,10,10]]")}},
        "multipart image as text field": {"files": {"image": (None, "not a file")}},
        "multipart garbage": body(b"--xyz\r\ngarbage without headers", "multipart/form-data; boundary=abc"),
        "multipart no boundary": body(b"whatever", "multipart/form-data"),
        "raw body garbage": body(b"\x00" * 100, "image/png"),
        "octet-stream empty": body(b"", "application/octet-stream"),
        "body over limit": body(b"\x00" * (MAX_BYTES * 2), "application/octet-stream"),
    }
    return list(cases.items())


QUERY_CASES = [
    ({"format": "xml"}, "invalid_request"),
    ({"image_id": "-1"}, "invalid_request"),
    ({"image_id": "abc"}, "invalid_request"),
    ({"boxes": "[[0,0,0,0]]"}, "invalid_boxes"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("malformed")
    registry = ModelRegistry(root / "registry")
    registry.set_active(registry.register(tiny_pose_onnx(root / "m.onnx", seed=5), actor="test").version, actor="test")
    env = {
        "POSELOOP_REGISTRY_DIR": str(root / "registry"),
        "POSELOOP_TOKENS": json.dumps({TOKEN: ["infer"], OPS: ["ops"]}),
        "POSELOOP_MAX_IMAGE_BYTES": str(MAX_BYTES),
        "POSELOOP_ORT_THREADS": "1",
        "POSELOOP_REGISTRY_POLL_S": "0",
    }
    with process_server(env) as (base, proc), httpx.Client(base_url=base, timeout=30, headers=auth(TOKEN)) as client:
        yield client, proc


def check_4xx(response: httpx.Response, name: str) -> None:
    assert 400 <= response.status_code < 500, f"{name}: {response.status_code} {response.text[:300]}"
    error = response.json()["error"]
    assert error["code"] and error["message"], name


def test_valid_variants_are_accepted(server) -> None:
    """Grey, alpha, 16-bit, BMP and WebP inputs are converted to RGB uint8 and answered."""
    client, _ = server
    grey16 = IMAGE[..., 0].astype(np.uint16) * 257
    rgba = cv2.cvtColor(IMAGE, cv2.COLOR_RGB2RGBA)
    variants = {
        "grey": cv2.imencode(".png", IMAGE[..., 1])[1].tobytes(),
        "grey16": cv2.imencode(".png", grey16)[1].tobytes(),
        "rgba": cv2.imencode(".png", rgba)[1].tobytes(),
        "bmp": encode(IMAGE, ".bmp"),
        "webp": encode(IMAGE, ".webp"),
        "jpeg": JPEG,
        "jpeg + trailing bytes": JPEG + b"\x00" * 64,
    }
    whole = json.dumps([[0, 0, 160, 120]])  # explicit box: this test is about decoding, not detection
    for name, data in variants.items():
        r = client.post("/v1/pose", files={"image": ("x", data), "boxes": (None, whole)})
        assert r.status_code == 200, f"{name}: {r.text}"
        assert r.json()["image"]["width"] == 160 and len(r.json()["persons"]) == 1
        assert r.json()["boxes_from"] == "request", name


def test_malformed_corpus_gets_4xx_and_server_survives(server) -> None:
    client, proc = server
    for _ in range(3):  # warm up allocator pools before the baseline
        assert client.post("/v1/pose", files={"image": ("x.png", PNG)}).status_code == 200
    baseline = rss_kib(proc.pid)
    cases = corpus()
    assert len(cases) >= 50
    codes = {}
    rounds = []
    for _ in range(3):
        for name, kwargs in cases:
            response = client.post("/v1/pose", **kwargs)
            check_4xx(response, name)
            codes[name] = (response.status_code, response.json()["error"]["code"])
        for params, code in QUERY_CASES:
            response = client.post("/v1/pose", params=params, files={"image": ("x.png", PNG)})
            check_4xx(response, str(params))
            assert response.json()["error"]["code"] == code
        rounds.append(rss_kib(proc.pid))
    assert proc.poll() is None and client.get("/healthz").status_code == 200
    assert client.post("/v1/pose", files={"image": ("x.png", PNG)}).status_code == 200
    # the problem is named
    assert codes["png bomb 30000x30000"] == (413, "image_too_large")
    assert codes["jpeg bomb 65000x65000"] == (413, "image_too_large")
    assert codes["webp bomb canvas 16384^2"] == (413, "image_too_large")
    assert codes["truncated jpeg (half)"] == (400, "truncated_image")
    assert codes["truncated png (no IEND)"] == (400, "truncated_image")
    assert codes["gif"] == (415, "unsupported_image_type")
    assert codes["box NaN"] == (422, "invalid_boxes") and codes["too many boxes"] == (422, "too_many_boxes")
    assert codes["box outside right"] == (422, "box_outside_image")
    assert codes["json truncated"] == (400, "malformed_json")
    assert codes["text/plain body"] == (415, "unsupported_media_type")
    assert codes["body over limit"][0] == 413 and codes["image over byte limit"][0] == 413
    # RSS: bounded overall, and flat from round 1 to round 3 (no per-request leak)
    assert rounds[-1] - baseline < 150 * 1024, (baseline, rounds)
    assert rounds[-1] - rounds[0] < 30 * 1024, (baseline, rounds)


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.one_of(
        st.binary(max_size=2048),
        st.integers(1, len(PNG) - 1).map(lambda n: PNG[:n]),
        st.integers(1, len(JPEG) - 1).map(lambda n: JPEG[:n]),
        st.binary(min_size=1, max_size=512).map(lambda b: PNG[:33] + b),
        st.binary(min_size=1, max_size=512).map(lambda b: JPEG[:300] + b),
    )
)
def test_fuzzed_images_never_5xx(server, data) -> None:
    client, _proc = server
    response = client.post("/v1/pose", files={"image": ("x", data)})
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        check_4xx(response, repr(data[:40]))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True, allow_infinity=True) | st.integers() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=20,
)


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(boxes=JSON_VALUES)
def test_fuzzed_boxes_never_5xx(server, boxes) -> None:
    client, _ = server
    response = client.post("/v1/pose", files={"image": ("x.png", PNG), "boxes": (None, json.dumps(boxes))})
    assert response.status_code < 500, response.text
    if response.status_code == 200:  # only well-formed boxes inside the image may succeed
        assert boxes is None or (isinstance(boxes, list) and len(response.json()["persons"]) == len(boxes))
    else:
        check_4xx(response, repr(boxes))
