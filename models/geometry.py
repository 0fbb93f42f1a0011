"""Pure top-down geometry: boxes → crop regions → 2x3 affine matrices, and warps of images and points.

Conventions (used everywhere in PoseLoop):
- Points are (x, y) = (column, row) in pixels; pixel (i, j) has its centre at x=j, y=i (OpenCV's convention).
- Sizes are `Size(w, h)`; array shapes are read only as `h, w = a.shape[:2]` (images) / `a.shape[-2:]` (maps).
- A crop is (centre, region size in source pixels, rotation in degrees counter-clockwise); its affine maps source
  pixels to crop pixels. Nothing here mutates its inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import cv2
import numpy as np


class Size(NamedTuple):
    """Width, height in pixels: the one size type (never (h, w))."""

    w: int
    h: int

    @property
    def aspect(self) -> float:
        return self.w / self.h


def box_to_center_scale(box_xywh: np.ndarray, aspect: float, padding: float = 1.25) -> tuple[np.ndarray, np.ndarray]:
    """Crop region for a person box: centre (2,) and size (2,) = (w, h) in source pixels.

    The box is grown to the model's aspect ratio (w / h) keeping its centre, then padded by `padding`.
    """
    x, y, w, h = (float(v) for v in box_xywh)
    center = np.array([x + 0.5 * w, y + 0.5 * h], np.float32)
    if w > aspect * h:
        h = w / aspect
    else:
        w = h * aspect
    return center, np.array([w * padding, h * padding], np.float32)


def crop_affine(center: np.ndarray, size: np.ndarray, rotation: float, out: Size) -> np.ndarray:
    """2x3 matrix mapping source pixels to the crop: `centre` → crop centre, `size` → (out.w, out.h).

    The crop's content appears rotated by `rotation` degrees counter-clockwise (on screen, y pointing down).
    """
    sx, sy = out.w / float(size[0]), out.h / float(size[1])
    theta = np.deg2rad(rotation)
    cos, sin = np.cos(theta), np.sin(theta)
    # crop = S · R · (p − centre) + out_centre
    rot = np.array([[cos, sin], [-sin, cos]])
    linear = np.diag([sx, sy]) @ rot
    offset = np.array([out.w * 0.5, out.h * 0.5]) - linear @ np.asarray(center, np.float64)
    return np.hstack([linear, offset[:, None]]).astype(np.float64)


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine (or a batch (N, 2, 3))."""
    m = np.asarray(matrix, np.float64)
    linear, offset = m[..., :2], m[..., 2:]
    inv = np.linalg.inv(linear)
    return np.concatenate([inv, -inv @ offset], axis=-1)


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """outer ∘ inner for 2x3 matrices: first apply `inner`, then `outer`."""
    o = np.vstack([outer, [0, 0, 1]])
    i = np.vstack([inner, [0, 0, 1]])
    return (o @ i)[:2]


def flip_affine(width: int) -> np.ndarray:
    """Horizontal mirror of an image `width` pixels wide: x → width − 1 − x (as cv2.flip does)."""
    return np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0]])


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine to points (..., 2); a batch of matrices (N, 2, 3) maps points (N, K, 2)."""
    p = np.asarray(points, np.float64)
    m = np.asarray(matrix, np.float64)
    if m.ndim == 3:
        return (np.einsum("nij,nkj->nki", m[:, :, :2], p) + m[:, None, :, 2]).astype(np.float32)
    return (p @ m[:, :2].T + m[:, 2]).astype(np.float32)


def warp_image(
    image: np.ndarray, matrix: np.ndarray, out: Size, border_value: float | Sequence[float] = 0
) -> np.ndarray:
    """Crop/warp an HxWxC image with a 2x3 affine (bilinear, constant border).

    border_value is an OpenCV Scalar: per-channel values, or one number that fills the first channel only (the
    others get 0), exactly as cv2.warpAffine treats a bare number."""
    border = tuple(border_value) if isinstance(border_value, Sequence) else (float(border_value),)
    return cv2.warpAffine(
        image,
        matrix.astype(np.float64),
        (out.w, out.h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=border,
    )


def flip_keypoints(keypoints: np.ndarray, visibility: np.ndarray, width: int, flip_index: np.ndarray):
    """Mirror keypoints (K, 2) of an image `width` wide; left/right joints swap via `flip_index`."""
    mirrored = transform_points(keypoints, flip_affine(width))
    return mirrored[flip_index], np.asarray(visibility)[flip_index]


def person_crop_affine(
    box_xywh: np.ndarray, out: Size, padding: float = 1.25, scale: float = 1.0, rotation: float = 0.0
) -> np.ndarray:
    """Affine from image pixels to the model-input crop of one person box (optionally rescaled/rotated)."""
    center, size = box_to_center_scale(box_xywh, out.aspect, padding)
    return crop_affine(center, size * scale, rotation, out)


def normalize_crop(crop_rgb: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """HxWx3 RGB 0–255 crop → (3, H, W) float32 network input ((x − mean) / std per channel)."""
    x = (crop_rgb.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))
