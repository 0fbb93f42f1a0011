"""Client input that used to reach a 500, a crash loop or unbounded resources: it gets a 4xx naming the problem
(issue: a loop you can trust — the attacker's classes: degenerate boxes, oversized integers, non-ASCII digits,
decompression bombs, EXIF orientation, slowloris connections, keep-alive after a 500)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import struct
import time
import zlib

import cv2
import httpx
import numpy as np
import pytest

from continual.uploads import UploadStore
from core.inputs import (
    InputError,
    check_image,
    declared_length_exceeds,
    decode_image,
    parse_boxes,
    parse_image_id,
    parse_json,
)
from models.geometry import Size, person_crop_affine
from tests.serving_fixtures import process_server, wait_for


@pytest.mark.parametrize("box", [[0, 0, 1e-300, 1e-300], [10, 10, 0.5, 40], [10, 10, 40, 1e-9]])
def test_boxes_below_one_pixel_are_refused(box) -> None:
    with pytest.raises(InputError) as err:
        parse_boxes([box], 100, 100, 8)
    assert err.value.status == 422 and err.value.code == "box_too_small"


def test_smallest_accepted_box_gives_a_finite_crop() -> None:
    boxes = parse_boxes([[3, 4, 1, 1]], 100, 100, 8)
    assert boxes is not None
    affine = person_crop_affine(boxes[0], Size(48, 64), 1.25)
    assert np.isfinite(affine).all()


@pytest.mark.parametrize("value", ["²", "①", "١٢", "9" * 5000, 2**63, "-1", " 12x", True, 1.5])
def test_bad_image_ids_are_422(value) -> None:
    with pytest.raises(InputError) as err:
        parse_image_id(value)
    assert err.value.status == 422 and err.value.code == "invalid_image_id"


def test_good_image_ids() -> None:
    assert parse_image_id(" 42 ") == 42 and parse_image_id(2**63 - 1) == 2**63 - 1 and parse_image_id("") is None


@pytest.mark.parametrize("body", [b"[" + b"9" * 5000 + b"]", b'{"boxes": [[1, 2, 3, ' + b"7" * 4400 + b"]]}"])
def test_integers_over_the_int_string_limit_are_malformed_json(body) -> None:
    with pytest.raises(InputError) as err:
        parse_json(body, "boxes")
    assert err.value.status == 400 and err.value.code == "malformed_json"


@pytest.mark.parametrize(
    ("header", "limit", "exceeds"),
    [("²", 10, False), ("9" * 5000, 10, True), ("00012", 10, True), ("10", 10, False), (None, 10, False)],
)
def test_declared_content_length(header, limit, exceeds) -> None:
    assert declared_length_exceeds(header, limit) is exceeds


# ---------------------------------------------------------------------- decompression bombs (refused from the header)
def png_1bit(side: int) -> bytes:
    """A valid side×side 1-bit greyscale PNG, all black (~51 kB for 6300: decodes to 119 MB as RGB)."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def rle_bmp(width: int, height: int) -> bytes:
    """An 8-bit RLE BMP (BI_RLE8) of width×height whose pixel data is one end-of-bitmap code (~1 KB)."""
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    pixels = b"\x00\x01"  # end of bitmap: every pixel is palette entry 0
    offset = 14 + 40 + len(palette)
    dib = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + dib + palette + pixels


@pytest.mark.parametrize(("data", "what"), [(rle_bmp(6000, 6000), "bmp"), (png_1bit(6300), "png")])
def test_sparse_giant_images_are_refused_from_the_header(data, what, tmp_path) -> None:
    assert len(data) < 60_000
    with pytest.raises(InputError) as err:
        check_image(data, 40_000_000)  # both are under the 40 MP max_pixels
    assert err.value.status == 413 and err.value.code == "decompression_bomb" and what in err.value.message
    store = UploadStore(tmp_path)  # the unlabeled pool applies the same checks
    with pytest.raises(InputError):
        store.add(data, f"bomb.{what}", None, "test", "attacker")
    assert store.max_seq() == 0


def test_small_flat_images_are_not_bombs() -> None:
    flat = cv2.imencode(".png", np.zeros((480, 640, 3), np.uint8))[1].tobytes()  # ~1000 pixels per byte, 0.3 MP
    assert check_image(flat, 40_000_000).width == 640


# ---------------------------------------------------------------------- EXIF orientation (WebP like JPEG/PNG)
def tiff_orientation(value: int) -> bytes:
    return b"II*\x00" + struct.pack("<IHHHIHHI", 8, 1, 0x0112, 3, 1, value, 0, 0)


def webp_with_exif(bgr: np.ndarray, orientation: int) -> bytes:
    """A lossless WebP (VP8X container) of `bgr` carrying an EXIF chunk with `orientation`."""
    lossless = cv2.imencode(".webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes()
    assert lossless[12:16] == b"VP8L"
    h, w = bgr.shape[:2]
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x08\x00\x00\x00" + (w - 1).to_bytes(3, "little")
    vp8x += (h - 1).to_bytes(3, "little")
    exif = tiff_orientation(orientation)
    body = b"WEBP" + vp8x + lossless[12:] + b"EXIF" + struct.pack("<I", len(exif)) + exif + b"\x00" * (len(exif) & 1)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def png_with_exif(bgr: np.ndarray, orientation: int) -> bytes:
    png = cv2.imencode(".png", bgr)[1].tobytes()
    return png[:33] + png_chunk(b"eXIf", tiff_orientation(orientation)) + png[33:]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_webp_exif_orientation_is_applied_like_png(orientation) -> None:
    rng = np.random.default_rng(orientation)
    bgr = rng.integers(0, 255, (12, 20, 3), np.uint8)  # non-square: a rotation changes the shape
    expected = decode_image(png_with_exif(bgr, orientation), 10_000)  # OpenCV's own EXIF handling (PNG)
    got = decode_image(webp_with_exif(bgr, orientation), 10_000)
    assert got.shape == expected.shape and np.array_equal(got, expected)
    if orientation >= 5:
        assert got.shape[:2] == (20, 12)


# ---------------------------------------------------------------------- HTTP connections (real `poseloop serve`)
def raw_request(base: str, data: bytes, timeout: float = 30.0) -> bytes:
    """Send `data` on a fresh connection and read until the server closes it (socket timeout = the deadline)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture(scope="module")
def timeouts_server(tmp_path_factory):
    """`poseloop serve` with 1 s header/body timeouts and an upload index that cannot be opened (a 500)."""
    root = tmp_path_factory.mktemp("http_limits")
    (root / "data" / "uploads").mkdir(parents=True)
    (root / "data" / "uploads" / "index.sqlite").write_bytes(b"this is not an SQLite database" * 100)
    env = {
        "POSELOOP_REGISTRY_DIR": str(root / "registry"),
        "POSELOOP_DATA_DIR": str(root / "data"),
        "POSELOOP_REGISTRY_POLL_S": "0",
        "POSELOOP_HTTP_HEADER_TIMEOUT_S": "1",
        "POSELOOP_HTTP_BODY_TIMEOUT_S": "1",
        "POSELOOP_TOKENS": json.dumps({UPLOAD_TOKEN: ["upload"]}),
    }
    with process_server(env) as (base, proc):
        yield base, proc


UPLOAD_TOKEN = "u" * 24


def test_a_500_leaves_the_keep_alive_connection_usable(timeouts_server) -> None:
    base, _proc = timeouts_server
    conn = http.client.HTTPConnection(*base.removeprefix("http://").split(":"), timeout=30)
    try:
        conn.request("GET", "/v1/unlabeled/stats", headers={"Authorization": f"Bearer {UPLOAD_TOKEN}"})
        first = conn.getresponse()
        body = json.loads(first.read())
        assert first.status == 500 and body["error"]["code"] == "internal_error"
        assert "/" not in body["error"]["message"].split("request id")[0]  # no server path in the body
        conn.request("GET", "/healthz")  # the same connection: must not be reset
        second = conn.getresponse()
        assert second.status == 200 and json.loads(second.read()) == {"status": "ok"}
    finally:
        conn.close()


def test_half_sent_headers_are_answered_408_and_closed(timeouts_server) -> None:
    base, proc = timeouts_server
    answer = raw_request(base, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n")  # never ends the headers
    assert answer.startswith(b"HTTP/1.1 408") and b"headers" in answer
    assert proc.poll() is None


def test_a_silent_body_is_answered_408_and_closed(timeouts_server) -> None:
    base, _proc = timeouts_server
    head = (
        f"POST /v1/unlabeled HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {UPLOAD_TOKEN}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n"
    ).encode()
    answer = raw_request(base, head)  # 100 kB announced, a few bytes sent, then silence
    assert answer.startswith(b"HTTP/1.1 408") and b"body" in answer
    assert httpx.get(base + "/healthz").status_code == 200


def test_connections_over_the_cap_are_refused_and_start_up_sweeps_uploads(tmp_path) -> None:
    uploads = UploadStore(tmp_path / "data" / "uploads")
    kept = uploads.add(cv2.imencode(".png", np.full((20, 30, 3), 90, np.uint8))[1].tobytes(), "a", None, "t", "t")
    shard = tmp_path / "data" / "uploads" / "images" / "ab"
    shard.mkdir(parents=True)
    leftovers = [shard / ".ab12.png.123.456.tmp", shard / ("ab" + "0" * 62 + ".png")]  # a temp file, unindexed
    for path in leftovers:
        path.write_bytes(b"left by kill -9")
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    env = {
        "POSELOOP_REGISTRY_DIR": str(tmp_path / "registry"),
        "POSELOOP_DATA_DIR": str(tmp_path / "data"),
        "POSELOOP_REGISTRY_POLL_S": "0",
        "POSELOOP_HTTP_MAX_CONNECTIONS": "3",
        "POSELOOP_TOKENS": json.dumps({UPLOAD_TOKEN: ["upload"]}),
    }
    with process_server(env) as (base, _proc):
        host, port = base.removeprefix("http://").split(":")
        idle = [socket.create_connection((host, int(port)), timeout=30) for _ in range(3)]
        try:
            answer = raw_request(base, b"")  # answered on connect, before any request
            assert answer.startswith(b"HTTP/1.1 503") and b"retry-after" in answer.lower()
        finally:
            for sock in idle:
                sock.close()
        wait_for(lambda: httpx.get(base + "/healthz").status_code == 200, 30, "the cap to free up")
    assert not any(path.exists() for path in leftovers)
    assert uploads.snapshot()[0].sha256 == kept.sha256 and uploads.snapshot()[0].path.exists()
