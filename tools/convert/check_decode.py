#!/usr/bin/env python3
"""Reference decode check for the converted ONNX models (numpy + onnxruntime + OpenCV only).

NOT PoseLoop code: a one-off sanity check that the converted models behave, to be read by whoever
writes the runtime decode. Run from the repo root or anywhere:

    tools/convert/.venv/bin/python tools/convert/check_decode.py

- NanoDet-g: letterbox 416 (BGR, mean/std), GFL decode (softmax over 11 bins, expectation x stride,
  anchor points at (i + 0.5) * stride), person class only, NMS; on messi5.jpg and basketball1.png.
- MoveNet Thunder (and Lightning, for comparison): on LSP validation images, crop around the NanoDet
  person box (square, 1.25x), run, map the 17 keypoints back to the image.
- Draws everything to tools/convert/work/decode_*.png and times each ONNX (2 threads, median of 20).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
from models.schemas import COCO17 as _COCO17

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
WORK = HERE / "work"

MODEL_PATHS = {
    "nanodet": [REPO / "artifacts/detector-nanodet-g-416/model.onnx", WORK / "onnx/nanodet.onnx"],
    "movenet-thunder": [REPO / "artifacts/teachers/movenet-thunder/model.onnx", WORK / "onnx/movenet-thunder.onnx"],
    "movenet-lightning": [
        REPO / "artifacts/teachers/movenet-lightning/model.onnx",
        WORK / "onnx/movenet-lightning.onnx",
    ],
}

COCO17 = list(_COCO17.keypoints)  # MoveNet's output order is COCO-17, defined once in models.schemas
SKELETON = [
    (0, 1),
    (0, 2),
    (1, 3),
    (2, 4),
    (5, 6),
    (5, 7),
    (7, 9),
    (6, 8),
    (8, 10),
    (5, 11),
    (6, 12),
    (11, 12),
    (11, 13),
    (13, 15),
    (12, 14),
    (14, 16),
]

NANODET_SIZE = 416
NANODET_STRIDES = (8, 16, 32)
NANODET_REG_BINS = 11  # reg_max = 10
MEAN_BGR = np.array([103.53, 116.28, 123.675], np.float32)
STD_BGR = np.array([57.375, 57.12, 58.395], np.float32)


def find_model(name: str) -> Path:
    for p in MODEL_PATHS[name]:
        if p.is_file():
            return p
    sys.exit(
        f"check_decode: no ONNX for {name} (looked in {[str(p) for p in MODEL_PATHS[name]]}); run convert.py first"
    )


def datasets() -> Path:
    for cand in (Path("/work/shared/datasets"), REPO.parent / "shared" / "datasets"):
        if cand.is_dir():
            return cand
    sys.exit("check_decode: ../shared/datasets not found (relative to the repo root); nothing to check")


def session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------------------- NanoDet
def letterbox(img: np.ndarray, size: int):
    h, w = img.shape[:2]
    s = min(size / w, size / h)
    nw, nh = int(round(w * s)), int(round(h * s))
    dx, dy = (size - nw) // 2, (size - nh) // 2
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[dy : dy + nh, dx : dx + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return canvas, s, dx, dy


def nanodet_input(img_bgr: np.ndarray):
    canvas, s, dx, dy = letterbox(img_bgr, NANODET_SIZE)
    x = ((canvas.astype(np.float32) - MEAN_BGR) / STD_BGR).transpose(2, 0, 1)[None]
    return np.ascontiguousarray(x), (s, dx, dy)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thr: float) -> list[int]:
    order = np.argsort(-scores)
    keep: list[int] = []
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    while order.size:
        i = order[0]
        keep.append(int(i))
        xx1 = np.maximum(boxes[i, 0], boxes[order[1:], 0])
        yy1 = np.maximum(boxes[i, 1], boxes[order[1:], 1])
        xx2 = np.minimum(boxes[i, 2], boxes[order[1:], 2])
        yy2 = np.minimum(boxes[i, 3], boxes[order[1:], 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        iou = inter / (area[i] + area[order[1:]] - inter + 1e-9)
        order = order[1:][iou <= iou_thr]
    return keep


def nanodet_persons(
    sess: ort.InferenceSession, img_bgr: np.ndarray, score_thr: float = 0.35, iou_thr: float = 0.6
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (boxes Kx4 [x1,y1,x2,y2] in original image pixels, scores K), best first."""
    x, (s, dx, dy) = nanodet_input(img_bgr)
    names = [f"cls_s{k}" for k in NANODET_STRIDES] + [f"reg_s{k}" for k in NANODET_STRIDES]
    outs = dict(zip(names, sess.run(names, {"input": x})))
    all_boxes, all_scores = [], []
    for stride in NANODET_STRIDES:
        cls = outs[f"cls_s{stride}"][0]  # (N, 80) already sigmoided
        reg = outs[f"reg_s{stride}"][0]  # (N, 44) = 4 sides x 11 bins, logits
        w = NANODET_SIZE // stride
        idx = np.nonzero(cls[:, 0] > score_thr)[0]  # person = class 0
        if idx.size == 0:
            continue
        dist = (softmax(reg[idx].reshape(-1, 4, NANODET_REG_BINS)) * np.arange(NANODET_REG_BINS)).sum(-1) * stride
        cx = (idx % w + 0.5) * stride
        cy = (idx // w + 0.5) * stride
        b = np.stack([cx - dist[:, 0], cy - dist[:, 1], cx + dist[:, 2], cy + dist[:, 3]], 1)
        all_boxes.append(b)
        all_scores.append(cls[idx, 0])
    if not all_boxes:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
    boxes, scores = np.concatenate(all_boxes), np.concatenate(all_scores)
    keep = nms(boxes, scores, iou_thr)
    boxes, scores = boxes[keep], scores[keep]
    # undo the letterbox, clip to the image
    boxes = (boxes - np.array([dx, dy, dx, dy], np.float32)) / s
    h, wimg = img_bgr.shape[:2]
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, wimg)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    return boxes, scores


# ---------------------------------------------------------------------------------------- MoveNet
def movenet_on_box(sess: ort.InferenceSession, img_bgr: np.ndarray, box: np.ndarray, scale: float = 1.25):
    """Square crop around box (scale x the longer side), resized to the model input; returns (17,3) x,y,score
    in image pixels."""
    size = sess.get_inputs()[0].shape[1]
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    side = max(x2 - x1, y2 - y1) * scale
    k = size / side
    m = np.array([[k, 0, size / 2 - k * cx], [0, k, size / 2 - k * cy]], np.float32)
    crop = cv2.warpAffine(img_bgr, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    inp = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB).astype(np.int32)[None]
    out = sess.run(["keypoints"], {"input": inp})[0][0, 0]  # (17, 3) y, x, score (normalised)
    xs = (out[:, 1] * size - m[0, 2]) / k
    ys = (out[:, 0] * size - m[1, 2]) / k
    return np.stack([xs, ys, out[:, 2]], 1)


# ------------------------------------------------------------------------------------------ draw
def draw_boxes(img, boxes, scores):
    vis = img.copy()
    for b, s in zip(boxes.astype(int), scores):
        cv2.rectangle(vis, (b[0], b[1]), (b[2], b[3]), (0, 255, 0), 2)
        cv2.putText(
            vis,
            f"person {s:.2f}",
            (b[0], max(12, b[1] - 4)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            (0, 255, 0),
            1,
            cv2.LINE_AA,
        )
    return vis


def draw_pose(img, kps, box=None, up=1, thr=0.2):
    vis = cv2.resize(img, None, fx=up, fy=up, interpolation=cv2.INTER_CUBIC) if up != 1 else img.copy()
    if box is not None:
        b = (box * up).astype(int)
        cv2.rectangle(vis, (b[0], b[1]), (b[2], b[3]), (0, 255, 0), 1)
    p = kps.copy()
    p[:, :2] *= up
    for a, b in SKELETON:
        if p[a, 2] > thr and p[b, 2] > thr:
            cv2.line(vis, tuple(p[a, :2].astype(int)), tuple(p[b, :2].astype(int)), (255, 200, 0), 2, cv2.LINE_AA)
    for i, (x, y, s) in enumerate(p):
        if s > thr:
            # left = red, right = blue, face = yellow (BGR)
            col = (0, 255, 255) if i < 5 else ((0, 0, 255) if i % 2 == 1 else (255, 0, 0))
            cv2.circle(vis, (int(x), int(y)), 4, col, -1, cv2.LINE_AA)
    return vis


def timing(sess: ort.InferenceSession, feed: dict, n: int = 20) -> float:
    for _ in range(3):
        sess.run(None, feed)
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        sess.run(None, feed)
        ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1000)


def main() -> int:
    WORK.mkdir(parents=True, exist_ok=True)
    ds = datasets()
    det = session(find_model("nanodet"))
    thunder = session(find_model("movenet-thunder"))
    lightning = session(find_model("movenet-lightning"))
    print("ONNX I/O:")
    for name, s in (("nanodet", det), ("movenet-thunder", thunder), ("movenet-lightning", lightning)):
        print(f"  {name}: in {[(i.name, i.shape, i.type) for i in s.get_inputs()]}")
        print(f"  {' ' * len(name)}  out {[(o.name, o.shape, o.type) for o in s.get_outputs()]}")

    print("\nNanoDet person detections (score > 0.35, NMS IoU 0.6), boxes x1,y1,x2,y2 in image pixels:")
    for fname in ("messi5.jpg", "basketball1.png"):
        img = cv2.imread(str(ds / "wild" / fname), cv2.IMREAD_COLOR)
        boxes, scores = nanodet_persons(det, img)
        print(f"  {fname} ({img.shape[1]}x{img.shape[0]}): {len(boxes)} person(s)")
        for b, s in zip(boxes, scores):
            print(f"    score {s:.3f}  box [{b[0]:.0f}, {b[1]:.0f}, {b[2]:.0f}, {b[3]:.0f}]")
        vis = draw_boxes(img, boxes, scores)
        for b in boxes[:3]:  # Thunder on the detected people too (teacher use case)
            vis = draw_pose(vis, movenet_on_box(thunder, img, b), thr=0.3)
        out = WORK / f"decode_{Path(fname).stem}.png"
        cv2.imwrite(str(out), vis)
        print(f"    -> {out}")

    print("\nMoveNet Thunder on LSP validation images (crop = NanoDet top person box, square x1.25):")
    tiles = []
    for i in (801, 802, 803, 804, 805, 806):
        fname = f"im0{i}.jpg"
        img = cv2.imread(str(ds / "lsp" / "images" / fname), cv2.IMREAD_COLOR)
        boxes, scores = nanodet_persons(det, img, score_thr=0.2)
        if len(boxes) == 0:
            h, w = img.shape[:2]
            box, src = np.array([0, 0, w, h], np.float32), "whole image (no detection)"
        else:
            box, src = boxes[0], f"det {scores[0]:.2f}"
        kt = movenet_on_box(thunder, img, box)
        kl = movenet_on_box(lightning, img, box)
        both = (kt[:, 2] > 0.3) & (kl[:, 2] > 0.3)
        agree = float(np.median(np.linalg.norm(kt[both, :2] - kl[both, :2], axis=1))) if both.any() else float("nan")
        print(
            f"  {fname} ({img.shape[1]}x{img.shape[0]}), crop from {src}, box {np.round(box).astype(int).tolist()}; "
            f"mean score thunder {kt[:, 2].mean():.2f} lightning {kl[:, 2].mean():.2f}; "
            f"median |thunder - lightning| {agree:.1f} px"
        )
        if i == 801:
            for n, (x, y, s) in zip(COCO17, kt):
                print(f"      {n:15s} x={x:6.1f} y={y:6.1f} score={s:.2f}")
        up = 3
        tile = draw_pose(img, kt, box, up=up)
        cv2.putText(tile, fname, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(tile)
    hmax = max(t.shape[0] for t in tiles)
    tiles = [cv2.copyMakeBorder(t, 0, hmax - t.shape[0], 0, 6, cv2.BORDER_CONSTANT, value=(40, 40, 40)) for t in tiles]
    out = WORK / "decode_thunder_lsp.png"
    cv2.imwrite(str(out), np.hstack(tiles))
    print(f"    -> {out}")

    print("\nTiming (onnxruntime CPU, 2 intra-op threads, median of 20 runs after 3 warm-ups):")
    img = cv2.imread(str(ds / "wild" / "messi5.jpg"), cv2.IMREAD_COLOR)
    x, _ = nanodet_input(img)
    print(f"  nanodet            {timing(det, {'input': x}):7.2f} ms")
    for name, s in (("movenet-thunder", thunder), ("movenet-lightning", lightning)):
        size = s.get_inputs()[0].shape[1]
        inp = cv2.cvtColor(cv2.resize(img, (size, size)), cv2.COLOR_BGR2RGB).astype(np.int32)[None]
        print(f"  {name:18s} {timing(s, {'input': inp}):7.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
