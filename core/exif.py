"""EXIF orientation: applied for decoders that ignore it (OpenCV applies it to JPEG and PNG, not to WebP), and read
from a JPEG's header to know its displayed size before decoding. No domain."""

from __future__ import annotations

import struct

import cv2
import numpy as np


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """The stored (H, W, C) pixels as displayed under EXIF `orientation` 1–8 (others: unchanged), as OpenCV
    and Pillow's exif_transpose do for JPEG."""
    if orientation == 2:
        return cv2.flip(image, 1)
    if orientation == 3:
        return cv2.rotate(image, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(image, 0)
    if orientation == 5:
        return cv2.transpose(image)
    if orientation == 6:
        return cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.rotate(cv2.transpose(image), cv2.ROTATE_180)
    if orientation == 8:
        return cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return image


def webp_orientation(data: bytes) -> int:
    """The EXIF orientation tag (1–8) of a WebP's EXIF chunk; 1 when there is none or it cannot be read."""
    pos, end = 12, min(len(data), 8 + struct.unpack("<I", data[4:8])[0])
    while pos + 8 <= end:
        kind, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if kind == b"EXIF":
            return _tiff_orientation(data[pos + 8 : pos + 8 + size])
        pos += 8 + size + (size & 1)  # chunks are padded to an even size
    return 1


def jpeg_orientation(data: bytes) -> int:
    """The EXIF orientation tag (1–8) of a JPEG's APP1 segment; 1 when there is none or it cannot be read.
    Only the segments before the first scan are read (EXIF must precede the image data)."""
    pos, n = 2, len(data)
    while pos + 4 <= n and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:  # start of scan: no EXIF after this
            break
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker == 0xE1 and data[pos + 4 : pos + 10] == b"Exif\x00\x00":
            return _tiff_orientation(data[pos + 4 : pos + 2 + length])
        pos += 2 + length
    return 1


def _tiff_orientation(exif: bytes) -> int:
    """Tag 0x0112 of IFD0 of TIFF-structured EXIF data (optionally after an "Exif\\0\\0" prefix)."""
    if exif.startswith(b"Exif\x00\x00"):
        exif = exif[6:]
    order = {b"II": "<", b"MM": ">"}.get(exif[:2])
    if order is None or len(exif) < 8:
        return 1
    (ifd,) = struct.unpack(order + "I", exif[4:8])
    if ifd + 2 > len(exif):
        return 1
    (count,) = struct.unpack(order + "H", exif[ifd : ifd + 2])
    for i in range(min(count, 512)):
        entry = exif[ifd + 2 + 12 * i : ifd + 14 + 12 * i]
        if len(entry) < 12:
            break
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag == 0x0112 and kind == 3:  # SHORT
            (value,) = struct.unpack(order + "H", entry[8:10])
            return value if 1 <= value <= 8 else 1
    return 1
