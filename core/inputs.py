"""Untrusted request input → a decoded image and checked boxes, or an InputError naming the problem (4xx).

Images: the type is decided by magic bytes (JPEG, PNG, WebP, BMP; anything else is 415), then the header is
parsed in pure Python to get the decoded size *before* any pixel is decoded, so a decompression bomb (e.g. a
30000×30000 single-colour PNG of 110 kB) is refused with 413 without allocating its 2.7 GB of pixels. The
same walk over the file's structure (PNG chunks up to IEND, JPEG segments and entropy-coded data up to EOI,
the RIFF size of WebP, the pixel array size of BMP) refuses truncated files, which decoders would otherwise
half-decode (libjpeg fills a truncated JPEG with grey and only warns). A large image declared in very few
bytes (over BOMB_MIN_PIXELS pixels and BOMB_PIXELS_PER_BYTE pixels per byte: a 51 KB 6300×6300 1-bit PNG, a 1 KB
RLE BMP of 6000×6000) is a decompression bomb, refused from the header as well; photos are far denser. OpenCV then
decodes with IMREAD_COLOR: EXIF orientation applied (JPEG, PNG; for WebP, whose EXIF chunk OpenCV ignores, here),
grey/alpha/16-bit converted to 8-bit RGB.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import struct
import threading
from dataclasses import dataclass
from typing import cast

import cv2
import numpy as np

from core.exif import apply_orientation, jpeg_orientation, webp_orientation

MAX_COORDINATE = 1e6  # |x|, |y|, w, h of a box, pixels (keeps every derived number finite)
# Smallest usable box side, pixels: a crop affine from a box of 1e-300 px (which passes `> 0`) divides by zero.
MIN_BOX_SIDE = 1.0
BOMB_MIN_PIXELS = 16_000_000  # the pixels-per-byte rule applies above this size (smaller images are cheap)
BOMB_PIXELS_PER_BYTE = 256  # a JPEG photo has < 10, a flat black JPEG ~60, a 1-bit flat PNG ~8000
MAX_IMAGE_ID = 2**63 - 1  # SQLite / COCO tools store ids as signed 64-bit integers
_ASCII_INT = re.compile(r"[0-9]{1,19}")  # str.isdigit() also accepts "²" and "①", which int() refuses
_JPEG_REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7]")  # a marker in entropy-coded data (not stuffing/RST)


class InputError(ValueError):
    """Bad client input: HTTP `status`, machine-readable `code`, human `message`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class PoseInput:
    """One request's raw input: encoded image bytes, boxes (JSON text if `boxes_text`, else parsed JSON)."""

    data: bytes
    boxes: object
    boxes_text: bool
    image_id: int | None


@dataclass(frozen=True)
class ImageHeader:
    format: str  # "jpeg" | "png" | "webp" | "bmp"
    width: int
    height: int
    truncated: str | None = None  # what is missing, when the size is known but the file is incomplete


def sniff_image(data: bytes) -> ImageHeader:
    """Type and size from the header, and whether the file is complete; InputError (400/415) if no size."""
    if not data:
        raise InputError(400, "empty_image", "the image is empty (0 bytes)")
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png(data)
    if data.startswith(b"\xff\xd8\xff"):
        return _jpeg(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp(data)
    if data.startswith(b"BM"):
        return _bmp(data)
    raise InputError(
        415, "unsupported_image_type", f"not a JPEG, PNG, WebP or BMP image (starts with {data[:8].hex()})"
    )


def check_image(data: bytes, max_pixels: int) -> ImageHeader:
    """The header of an image that may be decoded: known type, positive size ≤ max_pixels (413), complete."""
    header = sniff_image(data)
    if header.width <= 0 or header.height <= 0:
        raise InputError(
            400, "invalid_image", f"{header.format} header declares a {header.width}×{header.height} image"
        )
    if header.width * header.height > max_pixels:
        raise InputError(
            413,
            "image_too_large",
            f"{header.format} image is {header.width}×{header.height} = "
            f"{header.width * header.height} pixels, limit {max_pixels}",
        )
    pixels = header.width * header.height
    if pixels > BOMB_MIN_PIXELS and pixels > BOMB_PIXELS_PER_BYTE * len(data):
        raise InputError(
            413,
            "decompression_bomb",
            f"{header.format} image declares {header.width}×{header.height} = {pixels} pixels in {len(data)} "
            f"bytes (over {BOMB_PIXELS_PER_BYTE} pixels per byte above {BOMB_MIN_PIXELS} pixels); refused "
            "before decoding",
        )
    if header.truncated:
        raise _truncated(header.format.upper(), header.truncated)
    return header


def decode_image(data: bytes, max_pixels: int, header: ImageHeader | None = None, reduction: int = 1) -> np.ndarray:
    """Encoded bytes → H×W×3 RGB uint8; 413 if width × height > max_pixels (decided before decoding).

    `header`: the result of check_image(data, max_pixels) when the caller already has it. `reduction` 2, 4 or 8
    decodes a JPEG at that fraction of its size by libjpeg's DCT scaling (⌈W/f⌉ × ⌈H/f⌉, several times faster
    than a full decode); see reduction_for."""
    header = header or check_image(data, max_pixels)
    if reduction != 1 and (header.format != "jpeg" or reduction not in _JPEG_REDUCED):
        raise ValueError(f"reduced decoding is for JPEG at 1/2, 1/4 or 1/8, not {header.format} at 1/{reduction}")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), _JPEG_REDUCED.get(reduction, cv2.IMREAD_COLOR))
    if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.size == 0:
        raise InputError(400, "undecodable_image", f"the {header.format} image could not be decoded (corrupt data)")
    expected = (-(-header.height // reduction), -(-header.width // reduction))
    if sorted(bgr.shape[:2]) != sorted(expected):
        raise InputError(
            400,
            "invalid_image",
            f"{header.format} decoded to {bgr.shape[1]}×{bgr.shape[0]} at 1/{reduction}, header says "
            f"{header.width}×{header.height}",
        )
    if header.format == "webp":
        bgr = apply_orientation(bgr, webp_orientation(data))
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def displayed_size(data: bytes, header: ImageHeader) -> tuple[int, int]:
    """(W, H) of the image as decoded, i.e. after EXIF orientation (a JPEG tagged 5–8 is displayed transposed)."""
    if header.format == "jpeg" and jpeg_orientation(data) >= 5:
        return header.height, header.width
    return header.width, header.height


def reduction_for(
    header: ImageHeader, size: tuple[int, int], boxes: np.ndarray | None, min_side: int, min_box: tuple[int, int]
) -> int:
    """The largest JPEG decode reduction f ∈ {1, 2, 4, 8} that keeps what the pipeline needs: the long side
    ≥ `min_side` pixels (the detector's input and the crops of the people it finds), and every given box at
    least `min_box` = (w, h) pixels (the model's crop size, so no crop is upsampled from fewer pixels than it
    has). `size` = displayed (W, H); min_side 0 = always 1 (full decode); other formats are always decoded whole."""
    if header.format != "jpeg" or min_side <= 0:
        return 1
    for f in (8, 4, 2):
        if -(-max(size) // f) < min_side:
            continue
        if (
            boxes is not None
            and len(boxes)
            and (np.min(boxes[:, 2]) / f < min_box[0] or np.min(boxes[:, 3]) / f < min_box[1])
        ):
            continue
        return f
    return 1


@dataclass(frozen=True)
class DecodedInput:
    """A request's image as decoded (at 1/`reduction` of its displayed size for a large JPEG), its boxes in that
    image's pixels (None = not given), and the displayed size the results are mapped back to."""

    image: np.ndarray
    boxes: np.ndarray | None
    size: tuple[int, int]  # (W, H) displayed, full resolution
    reduction: int = 1

    @property
    def scale(self) -> tuple[float, float]:
        """(sx, sy): full-resolution pixels per decoded pixel, along x and y."""
        h, w = self.image.shape[:2]
        return self.size[0] / w, self.size[1] / h


def decode_pose_input(
    pose_input: PoseInput,
    max_pixels: int,
    max_boxes: int,
    header: ImageHeader | None = None,
    *,
    min_side: int = 0,
    min_box: tuple[int, int] = (0, 0),
) -> DecodedInput:
    """The decoded image and checked boxes of a PoseInput; InputError for anything wrong. Boxes are checked
    against the displayed full-resolution size; when a large JPEG is decoded reduced (reduction_for with
    `min_side`, `min_box`) they are mapped into the reduced image (pixel centres: x' = (x + 0.5) / s - 0.5)."""
    header = header or check_image(pose_input.data, max_pixels)
    size = displayed_size(pose_input.data, header)
    boxes = _pose_boxes(pose_input, size, max_boxes)
    reduction = reduction_for(header, size, boxes, min_side, min_box)
    image = decode_image(pose_input.data, max_pixels, header, reduction)
    if image.shape[1::-1] != (-(-size[0] // reduction), -(-size[1] // reduction)):
        size = size[::-1]  # the decoder read the orientation differently (e.g. a second EXIF segment): trust it
        boxes = _pose_boxes(pose_input, size, max_boxes)
    decoded = DecodedInput(image, boxes, size, reduction)
    if boxes is None or reduction == 1:
        return decoded
    sx, sy = decoded.scale
    scaled = np.column_stack(
        [(boxes[:, 0] + 0.5) / sx - 0.5, (boxes[:, 1] + 0.5) / sy - 0.5, boxes[:, 2] / sx, boxes[:, 3] / sy]
    )
    return DecodedInput(image, scaled, size, reduction)


def _pose_boxes(pose_input: PoseInput, size: tuple[int, int], max_boxes: int) -> np.ndarray | None:
    if pose_input.boxes_text:  # then `boxes` is the raw text (or None), see PoseInput
        return parse_boxes_text(cast("str | None", pose_input.boxes), size[0], size[1], max_boxes)
    return parse_boxes(pose_input.boxes, size[0], size[1], max_boxes)


class PixelBudget:
    """Caps the decoded pixels that requests hold at once, so many concurrent large images cannot exhaust
    memory (a 40 MP image is ~240 MB while OpenCV decodes and converts it). One image larger than the whole
    budget is still admitted when nothing else is held."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._cond = threading.Condition()

    def acquire(self, pixels: int, timeout: float) -> None:
        """Wait until `pixels` fit; TimeoutError after `timeout` seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.used == 0 or self.used + pixels <= self.limit, timeout):
                raise TimeoutError(f"{self.used} decoded pixels in flight (budget {self.limit})")
            self.used += pixels

    def release(self, pixels: int) -> None:
        with self._cond:
            self.used -= pixels
            self._cond.notify_all()


def parse_boxes(value, width: int, height: int, max_boxes: int) -> np.ndarray | None:
    """[[x, y, w, h], ...] (pixels) → (N, 4) float64; None = no boxes given (the whole image is one person).

    Each box must be finite, |value| ≤ 1e6, w > 0 and h > 0, and overlap the image (partly outside is fine).
    """
    if value is None:
        return None
    if not isinstance(value, list):
        raise InputError(422, "invalid_boxes", f"boxes must be a JSON list of [x, y, w, h], got {_kind(value)}")
    if len(value) > max_boxes:
        raise InputError(422, "too_many_boxes", f"{len(value)} boxes, at most {max_boxes} per image")
    boxes = np.zeros((len(value), 4), np.float64)
    for i, box in enumerate(value):
        if not isinstance(box, list) or len(box) != 4:
            raise InputError(422, "invalid_boxes", f"box {i} must be [x, y, w, h] (4 numbers), got {_short(box)}")
        for j, v in enumerate(box):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise InputError(422, "invalid_boxes", f"box {i} value {j} is {_kind(v)}, not a number")
            if not math.isfinite(v) or abs(v) > MAX_COORDINATE:
                raise InputError(
                    422, "invalid_boxes", f"box {i} value {j} = {v} is not a finite number within ±{MAX_COORDINATE:g}"
                )
            boxes[i, j] = v
        x, y, w, h = boxes[i]
        if w <= 0 or h <= 0:
            raise InputError(422, "invalid_boxes", f"box {i} has width {w} and height {h}; both must be > 0")
        if w < MIN_BOX_SIDE or h < MIN_BOX_SIDE:
            raise InputError(
                422,
                "box_too_small",
                f"box {i} is {w:g}×{h:g} px; width and height must be at least {MIN_BOX_SIDE:g} px",
            )
        if x >= width or y >= height or x + w <= 0 or y + h <= 0:
            raise InputError(
                422, "box_outside_image", f"box {i} {box} lies entirely outside the {width}×{height} image"
            )
    return boxes


def parse_boxes_text(text: str | None, width: int, height: int, max_boxes: int) -> np.ndarray | None:
    """Boxes given as a JSON string (multipart field or query parameter)."""
    if text is None or text.strip() == "":
        return None
    return parse_boxes(parse_json(text.encode(errors="replace"), "boxes"), width, height, max_boxes)


def parse_json(body: bytes, what: str = "request body"):
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError, ints over 4,300 digits
        raise InputError(400, "malformed_json", f"{what} is not valid JSON: {_short(str(err), 120)}") from None


def decode_base64_image(text, max_bytes: int) -> bytes:
    """Base64 (optionally a data: URL) → bytes; 413 when the decoded size would exceed max_bytes."""
    if not isinstance(text, str):
        raise InputError(422, "invalid_image_field", f"'image' must be a base64 string, got {_kind(text)}")
    if text.startswith("data:"):
        head, sep, text = text.partition(",")
        if not sep or not head.endswith(";base64"):
            raise InputError(400, "malformed_base64", "a data: URL image must be ';base64,'-encoded")
    if len(text) // 4 * 3 > max_bytes + 3:
        raise InputError(413, "image_too_large", f"image is about {len(text) // 4 * 3} bytes, limit {max_bytes}")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise InputError(400, "malformed_base64", f"'image' is not valid base64: {err}") from None
    if len(data) > max_bytes:
        raise InputError(413, "image_too_large", f"image is {len(data)} bytes, limit {max_bytes}")
    return data


def declared_length_exceeds(header: str | None, limit: int) -> bool:
    """Whether a Content-Length header declares more than `limit` bytes. Only plain ASCII digits count (uvicorn
    rejects a malformed header itself); a value longer than the limit's digits exceeds it without int()."""
    if header is None or not header.isascii() or not header.isdigit():
        return False
    digits = header.lstrip("0") or "0"
    return len(digits) > len(str(limit)) or int(digits) > limit


def parse_image_id(value) -> int | None:
    """A COCO image id: a non-negative 64-bit integer, as a JSON number or ASCII decimal text."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and _ASCII_INT.fullmatch(value.strip()):
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_IMAGE_ID:
        raise InputError(422, "invalid_image_id", f"image_id must be a non-negative integer, got {_short(value)}")
    return value


# ---------------------------------------------------------------------- header parsers
def _truncated(fmt: str, detail: str) -> InputError:
    return InputError(400, "truncated_image", f"the {fmt} image is truncated or corrupt ({detail})")


def _png(data: bytes) -> ImageHeader:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise _truncated("PNG", "no IHDR chunk")
    width, height = struct.unpack(">II", data[16:24])
    pos, seen_idat = 8, False
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        pos += 12 + length
        if pos > len(data):
            break
        seen_idat |= kind == b"IDAT"
        if kind == b"IEND":
            return ImageHeader("png", width, height, None if seen_idat else "no image data")
    return ImageHeader("png", width, height, "ends before the IEND chunk")


def _jpeg(data: bytes) -> ImageHeader:
    """Walk the segments (and scans) to EOI; the frame size is the largest SOF's."""
    try:
        return _jpeg_walk(data, [0, 0])
    except _Truncated as err:
        if err.size[0] and err.size[1]:
            return ImageHeader("jpeg", err.size[0], err.size[1], str(err))
        raise _truncated("JPEG", str(err)) from None


class _Truncated(Exception):
    def __init__(self, detail: str, size: list[int]) -> None:
        super().__init__(detail)
        self.size = size


def _jpeg_walk(data: bytes, size: list[int]) -> ImageHeader:
    pos, n = 2, len(data)
    while True:
        while pos < n and data[pos] == 0xFF and pos + 1 < n and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes
        if pos + 2 > n:
            raise _Truncated("ends before the EOI marker", size)
        if data[pos] != 0xFF:
            raise _Truncated(f"expected a marker at byte {pos}", size)
        marker = data[pos + 1]
        if marker == 0xD9:
            if not (size[0] and size[1]):
                raise _Truncated("no frame header", size)
            return ImageHeader("jpeg", size[0], size[1])
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        if pos + 4 > n:
            raise _Truncated("segment header cut off", size)
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if length < 2 or pos + 2 + length > n:
            raise _Truncated(f"segment 0x{marker:02X} runs past the end", size)
        if marker in _JPEG_SOF:
            if length < 7:
                raise _Truncated("short frame header", size)
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            size[0], size[1] = max(size[0], width), max(size[1], height)
            if height == 0:
                raise InputError(400, "invalid_image", "JPEG frame height 0 (DNL) is not supported")
        pos += 2 + length
        if marker == 0xDA:  # start of scan: skip the entropy-coded data to the next marker
            if not (size[0] and size[1]):
                raise _Truncated("scan before the frame header", size)
            match = _JPEG_NEXT_MARKER.search(data, pos)
            if match is None:
                raise _Truncated("ends inside the scan data", size)
            pos = match.start()


def _webp(data: bytes) -> ImageHeader:
    if len(data) < 30:
        raise _truncated("WebP", f"{len(data)} bytes is shorter than any WebP header")
    (riff_size,) = struct.unpack("<I", data[4:8])
    chunk = data[12:16]
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise _truncated("WebP", "bad VP8 start code")
        width, height = struct.unpack("<HH", data[26:30])
        width, height = width & 0x3FFF, height & 0x3FFF
    elif chunk == b"VP8L":
        if data[20] != 0x2F:
            raise _truncated("WebP", "bad VP8L signature")
        (bits,) = struct.unpack("<I", data[21:25])
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    elif chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
    else:
        raise _truncated("WebP", f"unknown chunk {chunk!r}")
    short = riff_size + 8 > len(data)
    return ImageHeader("webp", width, height, f"RIFF size {riff_size + 8} bytes, got {len(data)}" if short else None)


def _bmp(data: bytes) -> ImageHeader:
    if len(data) < 26:
        raise _truncated("BMP", "header cut off")
    offset, dib = struct.unpack("<II", data[10:18])
    if dib == 12:
        width, height = struct.unpack("<HH", data[18:22])
        bpp, compression = struct.unpack("<H", data[24:26])[0], 0
    elif dib >= 40 and len(data) >= 34:
        width, height, _, bpp, compression = struct.unpack("<iiHHI", data[18:34])
    else:
        raise _truncated("BMP", f"unsupported DIB header size {dib}")
    height = abs(height)  # negative = top-down rows
    problem = None
    if compression in (0, 3) and width > 0 and bpp > 0:
        needed = offset + ((bpp * width + 31) // 32) * 4 * height
        if len(data) < needed:
            problem = f"pixel data needs {needed} bytes, got {len(data)}"
    return ImageHeader("bmp", width, height, problem)


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
