"""Person detection: letterbox and GFL decode geometry (synthetic, exact), and the shipped NanoDet-g ONNX on real
images (the shared wild/ frames and LSP validation images; skipped when ../shared/datasets is absent)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from models.detection import (
    NANODET_G_416,
    Letterbox,
    decode_detections,
    decode_level,
    detector_input,
    letterbox,
    nms,
)
from models.geometry import Size
from serving.backends import BackendLoadError
from serving.backends.detector import OnnxDetectorRunner, embedded_detector
from serving.backends.onnxruntime import OnnxRuntimeBackend
from serving.pipeline import PoseOptions, PosePipeline
from tests.data_paths import data_path
from tests.serving_fixtures import tiny_pose_onnx

DETECTOR = Path(__file__).resolve().parents[1] / "artifacts" / "detector-nanodet-g-416" / "model.onnx"
SPEC = NANODET_G_416


@pytest.fixture(scope="module")
def detector():
    if not DETECTOR.exists():
        pytest.skip(f"{DETECTOR} not found (the shipped detector artifact)")
    return embedded_detector(DETECTOR, intra_op_threads=1)


def rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


# ---------------------------------------------------------------- geometry (no model)


def test_letterbox_maps_boxes_back_exactly_on_a_non_square_image() -> None:
    image = np.zeros((120, 300, 3), np.uint8)  # h=120, w=300
    image[30:90, 100:160] = 255  # a white block: x 100..160, y 30..90 (edges)
    canvas, box = letterbox(image, 416)
    assert canvas.shape == (416, 416, 3) and box.scale_x == pytest.approx(416 / 300)
    assert box.pad_x == 0 and box.pad_y == (416 - round(120 * 416 / 300)) // 2
    ys, xs = np.nonzero(canvas[..., 0] > 127)
    found = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float64)  # edges in the canvas
    np.testing.assert_allclose(box.to_image(found), [[100, 30, 160, 90]], atol=1.0)
    tall = np.zeros((500, 200, 3), np.uint8)  # portrait: padding on x
    _, portrait = letterbox(tall, 416)
    assert portrait.pad_y == 0 and portrait.pad_x == (416 - round(200 * 416 / 500)) // 2


def test_detector_input_is_bgr_normalised() -> None:
    image = np.zeros((416, 416, 3), np.uint8)
    image[..., 0] = 200  # red in RGB
    x, box = detector_input(image)
    assert x.shape == SPEC.input_shape and x.dtype == np.float32 and box == Letterbox(1.0, 1.0, 0, 0)
    # channel 2 of the network input is R (BGR order), normalised with the R statistics
    assert x[0, 2, 5, 5] == pytest.approx((200 - 123.675) / 58.395, abs=1e-5)
    assert x[0, 0, 5, 5] == pytest.approx((0 - 103.53) / 57.375, abs=1e-5)


def one_hot_reg(bins: list[int], n: int = 11) -> np.ndarray:
    """Logits whose softmax is (almost) one-hot at `bins` for the four sides (left, top, right, bottom)."""
    reg = np.full((4, n), -50.0)
    for side, b in enumerate(bins):
        reg[side, b] = 50.0
    return reg.reshape(-1)


def test_gfl_decode_distances_from_the_cell_centre() -> None:
    stride, side = 16, 416
    cells = (side // stride) ** 2
    cls = np.zeros((cells, 80), np.float32)
    reg = np.zeros((cells, 44), np.float32)
    row, col = 7, 3
    cell = row * (side // stride) + col
    cls[cell, 0], cls[cell, 1] = 0.9, 0.99  # a person, and a stronger non-person at the same cell
    reg[cell] = one_hot_reg([1, 2, 3, 4])
    boxes, scores = decode_level(cls, reg, stride, side, 0.5, 0, 11)
    cx, cy = (col + 0.5) * stride, (row + 0.5) * stride
    np.testing.assert_allclose(boxes, [[cx - 16, cy - 32, cx + 48, cy + 64]], atol=1e-6)
    assert scores.tolist() == pytest.approx([0.9])
    assert len(decode_level(cls, reg, stride, side, 0.95, 0, 11)[0]) == 0  # below the threshold
    with pytest.raises(ValueError, match="grid"):
        decode_level(cls[:-1], reg[:-1], stride, side, 0.5, 0, 11)


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.5]], np.float64)
    scores = np.array([0.5, 0.9, 0.7, 0.3])
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.99).tolist() == [1, 2, 0, 3]
    assert nms(boxes, scores, 0.5, max_keep=1).tolist() == [1]


def synthetic_outputs(persons: list[tuple[int, int, float, list[int]]]) -> dict[str, np.ndarray]:
    """Detector outputs with persons at stride-8 cells (row, col, score, bins); everything else scores 0."""
    out = {}
    for name, shape in SPEC.output_shapes().items():
        out[name] = np.zeros(shape, np.float32)
    for row, col, score, bins in persons:
        cell = row * (416 // 8) + col
        out["cls_s8"][0, cell, 0] = score
        out["reg_s8"][0, cell] = one_hot_reg(bins)
    return out


def test_decode_detections_maps_to_image_pixels_clips_and_caps() -> None:
    box = Letterbox(0.5, 0.5, 0, 52)  # an 832×624 image letterboxed to 416 (pad 52 on y)
    outputs = synthetic_outputs(
        [(20, 10, 0.9, [3, 3, 3, 3]), (20, 11, 0.8, [3, 3, 3, 3]), (30, 50, 0.6, [1, 1, 10, 1]), (5, 5, 0.2, [1] * 4)]
    )
    found = decode_detections(outputs, box, Size(832, 624), score_threshold=0.35, iou_threshold=0.6)
    # cell (20, 10): centre (84, 164) in the letterbox, ±24 → x 60..108, y 140..188 → image x/0.5, (y - 52)/0.5
    np.testing.assert_allclose(found.boxes[0], [120, 176, 96, 96], atol=1e-3)
    assert found.scores.tolist() == pytest.approx([0.9, 0.6])  # (20, 11) overlaps (IoU 0.71) and goes; 0.2 is low
    # cell (30, 50): x1 = 404 - 8 = 396 → 792 px, x2 = 404 + 80 = 484 → 968 px: clipped at the image edge 832
    np.testing.assert_allclose(found.boxes[1][[0, 2]], [792, 40], atol=1e-3)
    capped = decode_detections(outputs, box, Size(832, 624), score_threshold=0.35, max_detections=1)
    assert len(capped) == 1 and capped.scores[0] == pytest.approx(0.9)
    empty = decode_detections(synthetic_outputs([]), box, Size(832, 624), score_threshold=0.35)
    assert empty.boxes.shape == (0, 4) and len(empty.scores) == 0


# ---------------------------------------------------------------- the shipped ONNX


def test_runner_checks_the_onnx_contract(tmp_path) -> None:
    if not DETECTOR.exists():
        pytest.skip(f"{DETECTOR} not found")
    runner = OnnxDetectorRunner(DETECTOR, intra_op_threads=1)
    outputs = runner.run(np.zeros(SPEC.input_shape, np.float32))
    assert {k: v.shape for k, v in outputs.items()} == SPEC.output_shapes()
    assert all(v.min() >= 0 and v.max() <= 1 for k, v in outputs.items() if k.startswith("cls"))  # sigmoided
    with pytest.raises(BackendLoadError, match="I/O"):  # a pose model is not a detector
        OnnxDetectorRunner(tiny_pose_onnx(tmp_path / "pose.onnx"), intra_op_threads=1)
    with pytest.raises(BackendLoadError, match="person detector"):
        OnnxDetectorRunner(tmp_path / "missing.onnx", intra_op_threads=1)


@pytest.mark.parametrize("kind", ["flat", "noise"])
def test_no_person_in_a_flat_or_noise_image(detector, kind) -> None:
    rng = np.random.default_rng(0)
    image = (
        np.full((360, 500, 3), 128, np.uint8) if kind == "flat" else rng.integers(0, 256, (360, 500, 3), dtype=np.uint8)
    )
    assert len(detector.detect(image, 0.35, 20)) == 0


def test_wild_images_give_every_player(detector) -> None:
    """basketball1/2: the two players (left ~x 35..170, right ~x 425..640); messi5: the player in front."""
    for name in ("basketball1.png", "basketball2.png"):
        image = rgb(data_path("wild", name))
        found = detector.detect(image, 0.5, 20)
        assert len(found) == 2, (name, found)
        boxes = sorted(found.boxes.tolist())
        left, right = boxes[0], boxes[1]
        assert left[0] < 60 and left[0] + left[2] > 150 and left[3] > 300  # a whole standing person
        assert right[0] > 380 and right[3] > 400
        assert np.all(found.boxes[:, :2] >= 0) and np.all(found.boxes[:, 0] + found.boxes[:, 2] <= image.shape[1])
    messi = rgb(data_path("wild", "messi5.jpg"))
    found = detector.detect(messi, 0.35, 20)
    _, _, w, h = found.boxes[0]
    assert found.scores[0] > 0.6 and w > 300 and h > 200  # the kicking player spans most of the frame
    assert found.scores.tolist() == sorted(found.scores.tolist(), reverse=True)


def test_lsp_boxes_cover_the_labeled_person(detector) -> None:
    """LSP validation images im0801–0830: the best detection holds ≥ 90 % of the 14 labeled joints (±5 px)."""
    from scipy.io import loadmat

    joints = loadmat(str(data_path("lsp", "joints.mat")))["joints"]  # (3, 14, 1000): x, y, flag
    covered = 0
    for i in range(801, 831):
        image = rgb(data_path("lsp", "images", f"im{i:04d}.jpg"))
        found = detector.detect(image, 0.35, 20)
        points = joints[:2, :, i - 1].T
        for x, y, w, h in found.boxes:
            inside = (points[:, 0] >= x - 5) & (points[:, 0] <= x + w + 5)
            inside &= (points[:, 1] >= y - 5) & (points[:, 1] <= y + h + 5)
            if inside.mean() >= 0.9:
                covered += 1
                break
    assert covered >= 26, f"{covered}/30 LSP persons covered"  # measured 0.905 recall at 0.35 on im0801–1000


def test_pipeline_poses_each_detected_person_in_one_call(detector, tmp_path) -> None:
    image = rgb(data_path("wild", "basketball1.png"))
    calls: list[int] = []
    with OnnxRuntimeBackend(tiny_pose_onnx(tmp_path / "pose.onnx"), intra_op_threads=1) as backend:

        class Counting:
            metadata = backend.metadata

            def infer(self, batch):
                calls.append(len(batch))
                return backend.infer(batch)

            def close(self) -> None:
                pass

        pipeline = PosePipeline(Counting(), detector=detector)
        poses = pipeline.predict(image, None, PoseOptions(detect=True, det_threshold=0.5, flip=True))
        assert len(poses) == 2 and calls == [4]  # two persons, flipped: one call with 4 crops
        assert all(p.det_score is not None and p.det_score >= 0.5 for p in poses)
        found = detector.detect(image, 0.5, 20)
        np.testing.assert_allclose([p.box for p in poses], found.boxes)
        (whole,) = pipeline.predict(image)  # no options: the whole image, as before the detector
        assert whole.box == (0.0, 0.0, 640.0, 480.0) and whole.det_score is None
        given = pipeline.predict(image, [[10, 10, 100, 200]], PoseOptions(detect=True))
        assert len(given) == 1 and given[0].det_score is None  # boxes given: the detector does not run
        nobody = pipeline.predict(np.full((200, 300, 3), 90, np.uint8), None, PoseOptions(detect=True))
        assert nobody == []
