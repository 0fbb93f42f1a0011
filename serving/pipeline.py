"""Top-down pose pipeline around any InferenceBackend: boxes → crops → one batched call → keypoints.

Coordinates: boxes are [x, y, w, h] and keypoints (x, y) in source-image pixels (pixel centres at integers,
OpenCV's convention, see models.geometry). Crop, normalisation and decode use exactly the functions training
uses (models.geometry, models.codec), parameterised by the model's metadata.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from models.geometry import normalize_crop, person_crop_affine, warp_image
from serving.backends import InferenceBackend


@dataclass(frozen=True)
class PersonPose:
    """One person: box [x, y, w, h]; keypoints (K, 2) image pixels; keypoint_scores (K,) heatmap peaks."""

    box: tuple[float, float, float, float]
    score: float  # mean of keypoint_scores
    keypoints: np.ndarray
    keypoint_scores: np.ndarray
    names: tuple[str, ...]


@dataclass(frozen=True)
class PreparedCrops:
    """One image's network inputs plus what decoding needs to map results back to image pixels."""

    crops: np.ndarray  # (M, 3, H, W) float32 normalised; M = N, or 2N with flip test (crops[N:] mirror crops[:N])
    affines: np.ndarray  # (N, 2, 3) image → crop
    boxes: np.ndarray  # (N, 4) [x, y, w, h], image pixels
    flipped: bool

    @property
    def persons(self) -> int:
        return len(self.boxes)


class PosePipeline:
    """image (H×W×3 RGB uint8) + person boxes → list[PersonPose], one backend call per image.

    flip_test: also run the horizontally mirrored crops (in the same call) and average the flipped-back heatmaps.
    refinement: "none" / "quarter" / "dark"; None = the decode mode stored in the model's metadata.
    `predict` = `prepare` → `backend.infer(prepared.crops)` → `decode`; the steps are public so a micro-batcher
    can run several images' crops in one call.
    """

    def __init__(self, backend: InferenceBackend, flip_test: bool = False, refinement: str | None = None) -> None:
        self.backend = backend
        self.flip_test = flip_test
        meta = backend.metadata
        self.codec = meta.codec(refinement)
        self.flip_index = meta.schema.flip_index
        self.names = meta.schema.keypoints
        self._mean = np.asarray(meta.mean, np.float32)
        self._std = np.asarray(meta.std, np.float32)
        self._padding = meta.padding

    def predict(
        self, image: np.ndarray, boxes: Sequence[Sequence[float]] | np.ndarray | None = None
    ) -> list[PersonPose]:
        """Poses for each box (None = one box covering the whole image); [] for an empty box list."""
        prepared = self.prepare(image, boxes)
        if prepared.persons == 0:
            return []
        return self.decode(self.backend.infer(prepared.crops), prepared)

    __call__ = predict

    def prepare(self, image: np.ndarray, boxes: Sequence[Sequence[float]] | np.ndarray | None = None) -> PreparedCrops:
        """Crop and normalise every box (None = the whole image); with flip test, append the mirrored crops."""
        image = _check_image(image)
        h, w = image.shape[:2]
        boxes_arr = _check_boxes([[0.0, 0.0, float(w), float(h)]] if boxes is None else boxes)
        size = self.codec.input_size
        affines = np.array([person_crop_affine(b, size, self._padding) for b in boxes_arr]).reshape(-1, 2, 3)
        crops = np.empty((len(affines), 3, size.h, size.w), np.float32)
        for i, affine in enumerate(affines):
            crops[i] = normalize_crop(warp_image(image, affine, size), self._mean, self._std)
        if self.flip_test:
            # Normalisation is per channel, so mirroring the normalised crop == normalising the mirrored crop.
            crops = np.concatenate([crops, crops[..., ::-1]])
        return PreparedCrops(np.ascontiguousarray(crops), affines, boxes_arr, self.flip_test)

    def decode(self, heatmaps: np.ndarray, prepared: PreparedCrops) -> list[PersonPose]:
        """Backend output for `prepared.crops`, (M, K, h, w) → one PersonPose per box, in image pixels."""
        heatmaps = np.asarray(heatmaps, np.float32)
        if len(heatmaps) != len(prepared.crops):
            raise ValueError(f"{len(heatmaps)} heatmaps for {len(prepared.crops)} crops")
        n = prepared.persons
        if n == 0:
            return []
        if prepared.flipped:
            heatmaps = 0.5 * (heatmaps[:n] + self.codec.flip_back(heatmaps[n:], self.flip_index))
        crop_keypoints, scores = self.codec.decode(heatmaps)
        keypoints = self.codec.to_image(crop_keypoints, prepared.affines)
        return [
            PersonPose(
                box=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
                score=float(s.mean()),
                keypoints=k,
                keypoint_scores=s,
                names=self.names,
            )
            for box, k, s in zip(prepared.boxes, keypoints, scores)
        ]


def load_image_rgb(source: str | Path | bytes | bytearray | memoryview) -> np.ndarray:
    """Decode an image file (path or encoded bytes) to H×W×3 RGB uint8.

    cv2.imdecode with IMREAD_COLOR applies the JPEG EXIF orientation (verified by tests/test_pipeline.py
    with OpenCV 4.11), converts grey/alpha/16-bit inputs to 8-bit 3-channel. Raises ValueError if undecodable.
    """
    if isinstance(source, (str, Path)):
        data = Path(source).read_bytes()
        name = str(source)
    else:
        data = bytes(source)
        name = f"<{len(data)} bytes>"
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if bgr is None:
        raise ValueError(f"cannot decode image {name}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def to_json(poses: Sequence[PersonPose], model_version: str) -> dict:
    """JSON-ready response: {"model_version", "persons": [{"box", "score", "keypoints": [{name, x, y, score}]}]}."""
    return {
        "model_version": model_version,
        "persons": [
            {
                "box": [float(v) for v in pose.box],
                "score": float(pose.score),
                "keypoints": [
                    {"name": name, "x": float(x), "y": float(y), "score": float(s)}
                    for name, (x, y), s in zip(pose.names, pose.keypoints, pose.keypoint_scores)
                ],
            }
            for pose in poses
        ],
    }


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an H×W×3 RGB uint8 image, got {image.shape} {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"empty image {image.shape}")
    return image


def _check_boxes(boxes) -> np.ndarray:
    arr = np.asarray(boxes, np.float64) if len(boxes) else np.zeros((0, 4))
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must be a list of [x, y, w, h], got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr[:, 2:] <= 0):
        raise ValueError("boxes must be finite [x, y, w, h] with w > 0 and h > 0")
    return arr
