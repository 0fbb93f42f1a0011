"""Skeleton overlay for humans: one colour per limb, keypoint score as opacity (OpenCV only)."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import cv2
import numpy as np

from serving.pipeline import PersonPose, keypoint_flags


def limb_colours(count: int) -> list[tuple[int, int, int]]:
    """`count` distinct, saturated RGB colours (evenly spaced hues)."""
    hsv = (colorsys.hsv_to_rgb(i / max(count, 1), 0.9, 1.0) for i in range(count))
    return [(int(255 * r), int(255 * g), int(255 * b)) for r, g, b in hsv]


def render_poses(
    image_rgb: np.ndarray,
    poses: Sequence[PersonPose],
    skeleton: Sequence[Sequence[int]],
    kpt_threshold: float = 0.0,
) -> np.ndarray:
    """A copy of `image_rgb` (H×W×3 uint8) with each person's limbs and joints drawn.

    Only `valid` keypoints are drawn (score ≥ kpt_threshold and inside the image, as the JSON's `valid` flag,
    serving.pipeline.keypoint_flags), and a limb only when both its joints are valid: the overlay never shows a
    joint the JSON calls invalid. Limb i of `skeleton` (pairs of keypoint indices) always has colour i; a limb's
    opacity is the lower of its two joint scores, a joint's is its own score (clipped to [0, 1]), so doubtful
    joints fade out.
    """
    out = np.array(image_rgb, dtype=np.uint8, copy=True)
    h, w = out.shape[:2]
    thickness = max(1, round(min(h, w) / 150))
    radius = thickness + 1
    colours = limb_colours(len(skeleton))
    for pose in poses:
        points = np.asarray(pose.keypoints, np.float64)
        alpha = np.clip(np.nan_to_num(np.asarray(pose.keypoint_scores, np.float64)), 0.0, 1.0)
        _, valid = keypoint_flags(pose, kpt_threshold, (w, h))
        alpha = np.where(valid, alpha, 0.0)
        for (a, b), colour in zip(skeleton, colours):
            _blend(
                out,
                lambda img, o, p=points[a], q=points[b], c=colour: cv2.line(
                    img, _pt(p, o), _pt(q, o), c, thickness, cv2.LINE_AA
                ),
                np.stack([points[a], points[b]]),
                thickness,
                min(alpha[a], alpha[b]),
            )
        for j, point in enumerate(points):
            _blend(
                out,
                lambda img, o, p=point: cv2.circle(img, _pt(p, o), radius, (255, 255, 255), -1, cv2.LINE_AA),
                point[None],
                radius,
                alpha[j],
            )
    return out


def _pt(point: np.ndarray, origin: tuple[int, int]) -> tuple[int, int]:
    return int(round(point[0])) - origin[0], int(round(point[1])) - origin[1]


def _blend(image: np.ndarray, draw, points: np.ndarray, margin: int, alpha: float) -> None:
    """Draw into the bounding region of `points` (+ margin) on a copy and alpha-blend it back, in place."""
    if alpha <= 0 or not np.all(np.isfinite(points)):
        return
    h, w = image.shape[:2]
    x0, y0 = np.floor(points.min(0)).astype(int) - margin - 1
    x1, y1 = np.ceil(points.max(0)).astype(int) + margin + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x0 >= x1 or y0 >= y1:
        return
    region = image[y0:y1, x0:x1]
    drawn = region.copy()
    draw(drawn, (x0, y0))
    cv2.addWeighted(drawn, alpha, region, 1.0 - alpha, 0.0, dst=region)
