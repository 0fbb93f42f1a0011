"""Heatmap codec: keypoints ⇄ Gaussian heatmaps (numpy only, shared by training, export and serving).

Coordinates in and out are crop-input pixels (x = column, y = row); heatmap pixel u covers input x = u * stride.
Encoding is unbiased (the Gaussian is centred at the exact sub-pixel location, not a rounded one), so decoding
with DARK recovers the location to a small fraction of a heatmap pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from models.geometry import Size, invert_affine, transform_points

Refinement = Literal["none", "quarter", "dark"]


@dataclass(frozen=True)
class HeatmapCodec:
    """Encodes (K, 2) keypoints into (K, h, w) heatmaps and decodes (N, K, h, w) heatmaps back to points."""

    input_size: Size
    heatmap_size: Size
    sigma: float = 2.0
    refinement: Refinement = "quarter"
    dark_kernel: int = 11  # Gaussian blur size before DARK's Taylor step (from the DARK paper)

    @classmethod
    def for_input(cls, input_size: Size, stride: int = 4, sigma: float = 2.0, refinement: Refinement = "quarter"):
        input_size = Size(*input_size)
        return cls(input_size, Size(input_size.w // stride, input_size.h // stride), sigma, refinement)

    @property
    def stride(self) -> np.ndarray:
        """(sx, sy): input pixels per heatmap pixel."""
        return np.array([self.input_size.w / self.heatmap_size.w, self.input_size.h / self.heatmap_size.h])

    # ---------------------------------------------------------------- encode
    def encode(self, keypoints: np.ndarray, labeled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Targets for one person.

        keypoints: (K, 2) input pixels; labeled: (K,) truthy where the joint has a usable label.
        Returns heatmaps (K, h, w) float32 peaking at 1, and target weights (K,) float32: 0 for unlabeled joints
        and for joints whose Gaussian lies entirely outside the heatmap (3σ rule).
        """
        w, h = self.heatmap_size
        k = len(keypoints)
        heatmaps = np.zeros((k, h, w), np.float32)
        weights = np.asarray(labeled, np.float32).reshape(k).copy()
        mu = np.asarray(keypoints, np.float64) / self.stride
        xs, ys = np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)
        radius = 3 * self.sigma
        for j in range(k):
            if weights[j] <= 0 or not np.all(np.isfinite(mu[j])):
                weights[j] = 0
                continue
            mx, my = mu[j]
            if mx + radius < 0 or my + radius < 0 or mx - radius > w - 1 or my - radius > h - 1:
                weights[j] = 0
                continue
            gx = np.exp(-((xs - mx) ** 2) / (2 * self.sigma**2))
            gy = np.exp(-((ys - my) ** 2) / (2 * self.sigma**2))
            heatmaps[j] = np.outer(gy, gx)
        return heatmaps, weights

    # ---------------------------------------------------------------- decode
    def decode(self, heatmaps: np.ndarray, refinement: Refinement | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Heatmaps (N, K, h, w) → keypoints (N, K, 2) in input pixels and scores (N, K) = peak values."""
        hm = np.asarray(heatmaps, np.float32)
        n, k, _, w = hm.shape
        flat = hm.reshape(n, k, -1)
        idx = flat.argmax(-1)
        scores = np.take_along_axis(flat, idx[..., None], -1)[..., 0]
        coords = np.stack([idx % w, idx // w], -1).astype(np.float64)
        mode = refinement or self.refinement
        if mode == "quarter":
            coords += 0.25 * self._neighbour_sign(hm, coords)
        elif mode == "dark":
            coords = self._dark(hm, coords)
        return (coords * self.stride).astype(np.float32), scores.astype(np.float32)

    @staticmethod
    def _neighbour_sign(hm: np.ndarray, coords: np.ndarray) -> np.ndarray:
        """sign of (right − left, down − up) around each argmax; 0 at borders."""
        n, k, h, w = hm.shape
        x = coords[..., 0].astype(int)
        y = coords[..., 1].astype(int)
        ni, ki = np.meshgrid(np.arange(n), np.arange(k), indexing="ij")
        inner_x = (x > 0) & (x < w - 1)
        inner_y = (y > 0) & (y < h - 1)
        dx = hm[ni, ki, y, np.clip(x + 1, 0, w - 1)] - hm[ni, ki, y, np.clip(x - 1, 0, w - 1)]
        dy = hm[ni, ki, np.clip(y + 1, 0, h - 1), x] - hm[ni, ki, np.clip(y - 1, 0, h - 1), x]
        return np.stack([np.sign(dx) * inner_x, np.sign(dy) * inner_y], -1)

    def _dark(self, hm: np.ndarray, coords: np.ndarray) -> np.ndarray:
        """DARK (Zhang et al. CVPR'20): blur, log, one Newton step on the log-heatmap at the argmax."""
        n, k, _, _ = hm.shape
        blurred = np.empty_like(hm)
        for i in range(n):
            for j in range(k):
                m = hm[i, j]
                peak = m.max()
                b = cv2.GaussianBlur(m, (self.dark_kernel, self.dark_kernel), 0, borderType=cv2.BORDER_CONSTANT)
                blurred[i, j] = b * (peak / max(b.max(), 1e-12))  # keep the original peak height
        logs = np.log(np.maximum(blurred, 1e-10))
        padded = np.pad(logs, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
        x = coords[..., 0].astype(int) + 1
        y = coords[..., 1].astype(int) + 1
        ni, ki = np.meshgrid(np.arange(n), np.arange(k), indexing="ij")

        def at(dy: int, dx: int) -> np.ndarray:
            return padded[ni, ki, y + dy, x + dx]

        c = at(0, 0)
        dx = 0.5 * (at(0, 1) - at(0, -1))
        dy = 0.5 * (at(1, 0) - at(-1, 0))
        dxx = at(0, 1) - 2 * c + at(0, -1)
        dyy = at(1, 0) - 2 * c + at(-1, 0)
        dxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
        det = dxx * dyy - dxy**2
        ok = (np.abs(det) > 1e-12) & (dxx < 0) & (dyy < 0)
        safe = np.where(ok, det, 1.0)
        off_x = -(dyy * dx - dxy * dy) / safe
        off_y = -(dxx * dy - dxy * dx) / safe
        offsets = np.stack([off_x, off_y], -1)
        offsets = np.where(ok[..., None], np.clip(offsets, -1.0, 1.0), 0.0)
        return coords + offsets

    # ---------------------------------------------------------------- flip test
    @staticmethod
    def flip_back(flipped: np.ndarray, flip_index: np.ndarray, shift: bool = True) -> np.ndarray:
        """Heatmaps predicted on a mirrored crop → the original crop's frame.

        Mirrors columns, swaps left/right channels, and (SimpleBaseline's fix for stride misalignment) shifts
        one heatmap pixel to the right. Input (N, K, h, w); returns a new array.
        """
        out = np.asarray(flipped)[:, flip_index, :, ::-1].copy()
        if shift:
            out[..., 1:] = out[..., :-1].copy()
        return out

    # ---------------------------------------------------------------- to image pixels
    def to_image(self, keypoints: np.ndarray, crop_affines: np.ndarray) -> np.ndarray:
        """Crop-input keypoints (N, K, 2) → source-image pixels, through each crop's inverse affine (N, 2, 3)."""
        return transform_points(keypoints, invert_affine(crop_affines))

    def to_metadata(self) -> dict[str, str]:
        return {
            "poseloop.input_size": f"{self.input_size.h},{self.input_size.w}",
            "poseloop.heatmap_stride": f"{int(round(self.stride[0]))}",
            "poseloop.sigma": f"{self.sigma}",
        }
