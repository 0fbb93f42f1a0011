"""Person detection geometry (numpy + OpenCV only): letterbox in, GFL boxes out, person-class NMS.

The detector is NanoDet-g 416 (artifacts/detector-nanodet-g-416, converted from the TFJS graph by
tools/convert): one fixed (1, 3, 416, 416) float32 input, BGR, normalised with the BGR mean/std below, and per
stride s ∈ {8, 16, 32} two outputs over the (416/s)² grid cells in row-major order:
  cls_s{s}  (1, N, 80)  class scores, already sigmoided (COCO-80; person = class 0);
  reg_s{s}  (1, N, 44)  4 sides × 11 bins of logits (side-major: left, top, right, bottom); GFL's integral
                        regression: softmax over the bins, expectation × s = the distance from the cell centre
                        ((col + 0.5)·s, (row + 0.5)·s) to that side of the box, in letterbox pixels.

Coordinates: boxes are continuous pixel coordinates with the image spanning [0, W] × [0, H] (a pixel's centre
at integer + 0.5 in this edge convention is the same point as OpenCV's integer centre in models.geometry;
a box [0, 0, W, H] is the whole image, as the pose pipeline's default box). Returned boxes are [x, y, w, h] in
source-image pixels. Nothing here mutates its inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np

from models.geometry import Size


@dataclass(frozen=True)
class DetectorSpec:
    """The I/O contract of one detector ONNX (names, sizes, normalisation, head layout)."""

    input_size: int = 416  # square letterbox side, pixels
    mean_bgr: tuple[float, float, float] = (103.53, 116.28, 123.675)
    std_bgr: tuple[float, float, float] = (57.375, 57.12, 58.395)
    strides: tuple[int, ...] = (8, 16, 32)
    reg_bins: int = 11  # GFL reg_max + 1
    num_classes: int = 80
    person_class: int = 0
    input_name: str = "input"

    def cls_name(self, stride: int) -> str:
        return f"cls_s{stride}"

    def reg_name(self, stride: int) -> str:
        return f"reg_s{stride}"

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(self.cls_name(s) for s in self.strides) + tuple(self.reg_name(s) for s in self.strides)

    def output_shapes(self) -> dict[str, tuple[int, int, int]]:
        """Every output's (1, cells, channels)."""
        shapes = {}
        for s in self.strides:
            cells = (self.input_size // s) ** 2
            shapes[self.cls_name(s)] = (1, cells, self.num_classes)
            shapes[self.reg_name(s)] = (1, cells, 4 * self.reg_bins)
        return shapes

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, 3, self.input_size, self.input_size)


NANODET_G_416 = DetectorSpec()


@dataclass(frozen=True)
class Letterbox:
    """Where the image sits inside the square detector input: image pixel p ↦ p · scale + pad (per axis)."""

    scale_x: float
    scale_y: float
    pad_x: int
    pad_y: int

    def to_image(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """(N, 4) [x1, y1, x2, y2] letterbox pixels → the same boxes in source-image pixels (new array)."""
        boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
        scale = np.array([self.scale_x, self.scale_y, self.scale_x, self.scale_y])
        pad = np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y], np.float64)
        return (boxes - pad) / scale


@dataclass(frozen=True)
class Detections:
    """Persons in one image, best first: boxes (N, 4) [x, y, w, h] source-image pixels; scores (N,) in [0, 1]."""

    boxes: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.boxes)


def letterbox(image: np.ndarray, side: int) -> tuple[np.ndarray, Letterbox]:
    """Resize `image` (H×W×C uint8) to fit a side×side canvas keeping its aspect, centred on black.

    The resized image is round(W·s) × round(H·s) with s = min(side/W, side/H); the per-axis scale is that
    rounded size over the original, so the mapping back is exact for the pixels actually drawn.
    """
    h, w = image.shape[:2]
    s = min(side / w, side / h)
    nw, nh = max(1, min(side, round(w * s))), max(1, min(side, round(h * s)))
    pad_x, pad_y = (side - nw) // 2, (side - nh) // 2
    canvas = np.zeros((side, side, image.shape[2]), np.uint8)
    canvas[pad_y : pad_y + nh, pad_x : pad_x + nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return canvas, Letterbox(nw / w, nh / h, pad_x, pad_y)


def detector_input(image_rgb: np.ndarray, spec: DetectorSpec = NANODET_G_416) -> tuple[np.ndarray, Letterbox]:
    """H×W×3 RGB uint8 → ((1, 3, S, S) float32 BGR normalised network input, its Letterbox)."""
    canvas, box = letterbox(image_rgb, spec.input_size)  # resized per channel, so RGB → BGR after (S² pixels, not H×W)
    mean, std = np.asarray(spec.mean_bgr, np.float32), np.asarray(spec.std_bgr, np.float32)
    x = ((canvas[..., ::-1].astype(np.float32) - mean) / std).transpose(2, 0, 1)[None]
    return np.ascontiguousarray(x), box


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def decode_level(
    cls: np.ndarray, reg: np.ndarray, stride: int, side: int, score_threshold: float, class_index: int, bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """One stride's outputs (N, C) scores and (N, 4·bins) logits → candidates of `class_index` above the threshold:
    (M, 4) [x1, y1, x2, y2] letterbox pixels and (M,) scores."""
    cells_w = side // stride
    if cls.shape[0] != cells_w * cells_w or reg.shape != (cls.shape[0], 4 * bins):
        raise ValueError(f"stride {stride}: outputs {cls.shape} / {reg.shape} do not fit a {cells_w}² grid")
    scores = cls[:, class_index]
    idx = np.nonzero(scores > score_threshold)[0]
    if idx.size == 0:
        return np.zeros((0, 4)), np.zeros((0,))
    dist = (_softmax(reg[idx].reshape(-1, 4, bins).astype(np.float64)) * np.arange(bins)).sum(-1) * stride
    cx = (idx % cells_w + 0.5) * stride
    cy = (idx // cells_w + 0.5) * stride
    boxes = np.stack([cx - dist[:, 0], cy - dist[:, 1], cx + dist[:, 2], cy + dist[:, 3]], axis=1)
    return boxes, scores[idx].astype(np.float64)


def box_iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one [x1, y1, x2, y2] box with each of (N, 4) boxes."""
    w = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = w * h
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def nms(boxes_xyxy: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int | None = None) -> np.ndarray:
    """Greedy non-maximum suppression: indices of the kept boxes, best score first (ties: lower index first)."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep: list[int] = []
    while order.size and (max_keep is None or len(keep) < max_keep):
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        order = rest[box_iou(boxes_xyxy[i], boxes_xyxy[rest]) <= iou_threshold]
    return np.asarray(keep, np.int64)


def decode_detections(
    outputs: Mapping[str, np.ndarray],
    letterbox_: Letterbox,
    image_size: Size,
    *,
    score_threshold: float,
    iou_threshold: float = 0.6,
    max_detections: int = 100,
    min_side: float = 1.0,
    spec: DetectorSpec = NANODET_G_416,
) -> Detections:
    """Raw outputs of one image → persons: threshold, GFL decode, NMS, back to image pixels, clipped.

    Boxes are clipped to the image; a clipped box narrower or shorter than `min_side` pixels is dropped.
    At most `max_detections` are returned, best first.
    """
    boxes, scores = [], []
    for stride in spec.strides:
        cls = np.asarray(outputs[spec.cls_name(stride)]).reshape(-1, spec.num_classes)
        reg = np.asarray(outputs[spec.reg_name(stride)]).reshape(-1, 4 * spec.reg_bins)
        b, s = decode_level(cls, reg, stride, spec.input_size, score_threshold, spec.person_class, spec.reg_bins)
        boxes.append(b)
        scores.append(s)
    all_boxes, all_scores = np.concatenate(boxes), np.concatenate(scores)
    if len(all_boxes) == 0:
        return Detections(np.zeros((0, 4)), np.zeros((0,)))
    image_boxes = letterbox_.to_image(all_boxes)
    image_boxes[:, [0, 2]] = image_boxes[:, [0, 2]].clip(0, image_size.w)
    image_boxes[:, [1, 3]] = image_boxes[:, [1, 3]].clip(0, image_size.h)
    sizes = image_boxes[:, 2:] - image_boxes[:, :2]
    ok = np.all(sizes >= min_side, axis=1)
    image_boxes, all_scores = image_boxes[ok], all_scores[ok]
    keep = nms(image_boxes, all_scores, iou_threshold, max_detections)
    kept = image_boxes[keep]
    xywh = np.concatenate([kept[:, :2], kept[:, 2:] - kept[:, :2]], axis=1)
    return Detections(xywh.reshape(-1, 4), all_scores[keep])
