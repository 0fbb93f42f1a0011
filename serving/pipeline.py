"""Top-down pose pipeline around any InferenceBackend: [detector →] boxes → crops → one batched call → keypoints.

Coordinates: boxes are [x, y, w, h] and keypoints (x, y) in source-image pixels (pixel centres at integers,
OpenCV's convention, see models.geometry). Crop, normalisation and decode use exactly the functions training
uses (models.geometry, models.codec), parameterised by the model's metadata.
Boxes come from the request, from the person detector (serving.detection; `PoseOptions.detect` and no boxes),
or are the whole image (no boxes and no detection: the pre-detector behaviour the CLI and health probe keep).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from core.inputs import DecodedInput, ImageHeader, PoseInput, decode_pose_input
from models.geometry import normalize_crop, person_crop_affine, warp_image
from serving.backends import InferenceBackend
from serving.detection import PersonDetector

BoxSource = Literal["request", "detector", "whole_image"]


@dataclass(frozen=True)
class PersonPose:
    """One person: box [x, y, w, h]; keypoints (K, 2) image pixels; keypoint_scores (K,) heatmap peaks;
    det_score: the detector's person score for its box (None when the box did not come from the detector)."""

    box: tuple[float, float, float, float]
    score: float  # pose score: mean of keypoint_scores
    keypoints: np.ndarray
    keypoint_scores: np.ndarray
    names: tuple[str, ...]
    det_score: float | None = None

    def rescaled(self, sx: float, sy: float) -> PersonPose:
        """This pose in an image `sx` × `sy` times larger (pixel centres kept: x = (x' + 0.5) · sx - 0.5), e.g.
        back from a reduced JPEG decode to the full-resolution image."""
        x, y, w, h = self.box
        points = (np.asarray(self.keypoints, np.float64) + 0.5) * (sx, sy) - 0.5
        box = ((x + 0.5) * sx - 0.5, (y + 0.5) * sy - 0.5, w * sx, h * sy)
        return replace(self, box=box, keypoints=points)


def full_resolution(poses: Sequence[PersonPose], decoded: DecodedInput) -> list[PersonPose]:
    """Poses found in a (possibly reduced) decoded image, in the request's full-resolution pixels."""
    if decoded.reduction == 1:
        return list(poses)
    sx, sy = decoded.scale
    return [pose.rescaled(sx, sy) for pose in poses]


@dataclass(frozen=True)
class PoseOptions:
    """Per-request choices. detect: without boxes, run the person detector (True) or use the whole image;
    det_threshold: person score a detection needs; max_persons: most detections kept (best first);
    flip: flip test (also run mirrored crops and average), None = the pipeline's `flip_test`."""

    detect: bool = False
    det_threshold: float = 0.35
    max_persons: int = 20
    flip: bool | None = None


@dataclass(frozen=True)
class PreparedCrops:
    """One image's network inputs plus what decoding needs to map results back to image pixels."""

    crops: np.ndarray  # (M, 3, H, W) float32 normalised; M = N, or 2N with flip test (crops[N:] mirror crops[:N])
    affines: np.ndarray  # (N, 2, 3) image → crop
    boxes: np.ndarray  # (N, 4) [x, y, w, h], image pixels
    flipped: bool
    det_scores: np.ndarray | None = None  # (N,) detector scores when the boxes came from the detector
    source: BoxSource = "request"
    detect_ms: float = 0.0  # time the detector took on this image

    @property
    def persons(self) -> int:
        return len(self.boxes)


class PosePipeline:
    """image (H×W×3 RGB uint8) + person boxes → list[PersonPose], one backend call per image.

    flip_test: also run the horizontally mirrored crops (in the same call) and average the flipped-back heatmaps.
    refinement: "none" / "quarter" / "dark"; None = the decode mode stored in the model's metadata.
    detector: finds the boxes of a request without boxes when its options say `detect` (None = whole image).
    `predict` = `prepare` → `backend.infer(prepared.crops)` → `decode`; the steps are public so a micro-batcher
    can run several images' crops in one call.
    """

    def __init__(
        self,
        backend: InferenceBackend,
        flip_test: bool = False,
        refinement: str | None = None,
        detector: PersonDetector | None = None,
    ) -> None:
        self.backend = backend
        self.flip_test = flip_test
        self.detector = detector
        meta = backend.metadata
        self.codec = meta.codec(refinement)
        self.flip_index = meta.schema.flip_index
        self.names = meta.schema.keypoints
        self._mean = np.asarray(meta.mean, np.float32)
        self._std = np.asarray(meta.std, np.float32)
        self._padding = meta.padding

    def decode_request(
        self, pose_input: PoseInput, max_pixels: int, max_boxes: int, header: ImageHeader, min_side: int = 0
    ) -> DecodedInput:
        """A request's image decoded only as large as this pipeline needs: a large JPEG is reduced while its long
        side stays ≥ `min_side` (0 = full decode) and no box gets smaller than this model's crop."""
        crop = self.codec.input_size
        return decode_pose_input(pose_input, max_pixels, max_boxes, header, min_side=min_side, min_box=(crop.w, crop.h))

    def predict(
        self,
        image: np.ndarray,
        boxes: Sequence[Sequence[float]] | np.ndarray | None = None,
        options: PoseOptions | None = None,
    ) -> list[PersonPose]:
        """Poses for each box (None = detected persons, or one box covering the whole image, see `prepare`);
        [] for an empty box list or when the detector finds nobody."""
        prepared = self.prepare(image, boxes, options)
        if prepared.persons == 0:
            return []
        return self.decode(self.backend.infer(prepared.crops), prepared)

    __call__ = predict

    def prepare(
        self,
        image: np.ndarray,
        boxes: Sequence[Sequence[float]] | np.ndarray | None = None,
        options: PoseOptions | None = None,
    ) -> PreparedCrops:
        """The crops of every person: the given boxes; without boxes, the detector's (options.detect and a
        detector) or the whole image. With flip test, the mirrored crops are appended."""
        image = _check_image(image)
        options = options or PoseOptions()
        flip = self.flip_test if options.flip is None else options.flip
        if boxes is not None:
            return self.crop(image, _check_boxes(boxes), flip)
        if options.detect and self.detector is not None:
            started = time.perf_counter()
            found = self.detector.detect(image, options.det_threshold, options.max_persons)
            detect_ms = (time.perf_counter() - started) * 1e3
            return self.crop(image, found.boxes, flip, found.scores, "detector", detect_ms)
        h, w = image.shape[:2]
        return self.crop(image, _check_boxes([[0.0, 0.0, float(w), float(h)]]), flip, None, "whole_image")

    def predict_with_flip_gap(
        self, image: np.ndarray, boxes: Sequence[Sequence[float]] | np.ndarray | None = None
    ) -> tuple[list[PersonPose], np.ndarray]:
        """The plain poses (as `predict` without flip test) and, per person, how far the keypoints of the mirrored
        crop (flipped back) lie from them: the mean joint distance in units of the crop height. One backend call.
        The flip-TTA teacher of a retrain averages exactly these two views, so where they disagree its
        pseudo-labels are least trustworthy: the active-learning export's "disagreement" score."""
        prepared = self.prepare(image, boxes, PoseOptions(flip=True))
        n = prepared.persons
        if n == 0:
            return [], np.zeros(0)
        heatmaps = np.asarray(self.backend.infer(prepared.crops), np.float32)
        mirrored, _ = self.codec.decode(self.codec.flip_back(heatmaps[n:], self.flip_index))
        straight, scores = self.codec.decode(heatmaps[:n])
        gaps = np.linalg.norm(straight - mirrored, axis=-1).mean(axis=1) / self.codec.input_size.h
        return self._poses(straight, scores, prepared), gaps

    def recrop(self, image: np.ndarray, prepared: PreparedCrops) -> PreparedCrops:
        """`prepared`'s persons cropped for this pipeline's model (after a promotion changed preprocessing)."""
        return self.crop(
            image, prepared.boxes, prepared.flipped, prepared.det_scores, prepared.source, prepared.detect_ms
        )

    def crop(
        self,
        image: np.ndarray,
        boxes: np.ndarray,
        flip: bool,
        det_scores: np.ndarray | None = None,
        source: BoxSource = "request",
        detect_ms: float = 0.0,
    ) -> PreparedCrops:
        """Crop and normalise (N, 4) checked boxes [x, y, w, h]; flip: append the mirrored crops."""
        image = _check_image(image)
        boxes_arr = np.asarray(boxes, np.float64).reshape(-1, 4)
        size = self.codec.input_size
        affines = np.array([person_crop_affine(b, size, self._padding) for b in boxes_arr]).reshape(-1, 2, 3)
        crops = np.empty((len(affines), 3, size.h, size.w), np.float32)
        for i, affine in enumerate(affines):
            crops[i] = normalize_crop(warp_image(image, affine, size), self._mean, self._std)
        if flip:
            # Normalisation is per channel, so mirroring the normalised crop == normalising the mirrored crop.
            crops = np.concatenate([crops, crops[..., ::-1]])
        scores = None if det_scores is None else np.asarray(det_scores, np.float64).reshape(-1)
        return PreparedCrops(np.ascontiguousarray(crops), affines, boxes_arr, flip, scores, source, detect_ms)

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
        return self._poses(crop_keypoints, scores, prepared)

    def _poses(self, crop_keypoints: np.ndarray, scores: np.ndarray, prepared: PreparedCrops) -> list[PersonPose]:
        """Decoded crop keypoints (N, K, 2) and scores (N, K) of `prepared`'s persons → PersonPoses in image pixels."""
        keypoints = self.codec.to_image(crop_keypoints, prepared.affines)
        det = [None] * prepared.persons if prepared.det_scores is None else [float(d) for d in prepared.det_scores]
        return [
            PersonPose(
                box=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
                score=float(s.mean()),
                keypoints=k,
                keypoint_scores=s,
                names=self.names,
                det_score=d,
            )
            for box, k, s, d in zip(prepared.boxes, keypoints, scores, det)
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


def to_json(
    poses: Sequence[PersonPose],
    model_version: str,
    kpt_threshold: float = 0.0,
    image_size: tuple[int, int] | None = None,
) -> dict:
    """JSON-ready response: {"model_version", "persons": [{"box", "det_score", "pose_score", "score",
    "keypoints": [{name, x, y, score, in_image, valid}]}]}.

    Keypoints are never clipped: one outside the image keeps its coordinates and is flagged `in_image: false`
    (the image spans [-0.5, W - 0.5] × [-0.5, H - 0.5] with pixel centres at integers; image_size = (W, H),
    None = not checked). `valid` = score ≥ kpt_threshold and in_image (MMPose's kpt_thr). `score` is the pose
    score again (the field predates `pose_score`).
    """
    persons = []
    for pose in poses:
        points = np.asarray(pose.keypoints, np.float64)
        inside, valid = keypoint_flags(pose, kpt_threshold, image_size)
        keypoints = [
            {
                "name": name,
                "x": float(x),
                "y": float(y),
                "score": float(s),
                "in_image": bool(ok),
                "valid": bool(v),
            }
            for name, (x, y), s, ok, v in zip(pose.names, points, pose.keypoint_scores, inside, valid)
        ]
        persons.append(
            {
                "box": [float(v) for v in pose.box],
                "det_score": pose.det_score,
                "pose_score": float(pose.score),
                "score": float(pose.score),
                "keypoints": keypoints,
            }
        )
    return {"model_version": model_version, "persons": persons}


def keypoint_flags(
    pose: PersonPose, kpt_threshold: float = 0.0, image_size: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(in_image, valid), each (K,) bool: in_image = inside [-0.5, W - 0.5] × [-0.5, H - 0.5] (image_size = (W, H),
    None = not checked); valid = in_image and score ≥ kpt_threshold (a NaN score is never valid).
    The one definition behind the JSON flags and the overlay (serving.render draws only valid keypoints)."""
    points = np.asarray(pose.keypoints, np.float64).reshape(-1, 2)
    scores = np.asarray(pose.keypoint_scores, np.float64).reshape(-1)
    inside = np.ones(len(points), bool)
    if image_size is not None:
        w, h = image_size
        inside = (points[:, 0] >= -0.5) & (points[:, 0] <= w - 0.5) & (points[:, 1] >= -0.5)
        inside &= points[:, 1] <= h - 0.5
    return inside, inside & (scores >= kpt_threshold)


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
