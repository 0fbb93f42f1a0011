"""Large photos are decoded only as large as the detector and the crops need (libjpeg DCT scaling), and every
result still comes back in full-resolution pixels of the displayed (EXIF-oriented) image."""

from __future__ import annotations

import json
import secrets

import cv2
import httpx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from continual.settings import Settings
from core.exif import jpeg_orientation
from core.inputs import InputError, PoseInput, check_image, decode_pose_input, displayed_size, reduction_for
from models.registry import ModelRegistry
from serving.app import create_app
from serving.backends.detector import embedded_detector
from serving.backends.onnxruntime import OnnxRuntimeBackend
from serving.pipeline import PersonPose, PosePipeline
from tests.data_paths import data_path
from tests.serving_fixtures import auth, thread_server
from tests.test_pipeline import jpeg_with_orientation

CROP = (96, 128)  # the bundled model's crop (w, h)


def jpeg(w: int, h: int, orientation: int = 1) -> bytes:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    bgr = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return jpeg_with_orientation(bgr, orientation)


def pose_input(data: bytes, boxes: object = None) -> PoseInput:
    return PoseInput(data, boxes, False, None)


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_jpeg_orientation_is_read_from_the_header(orientation) -> None:
    data = jpeg(64, 48, orientation)
    assert jpeg_orientation(data) == orientation
    assert displayed_size(data, check_image(data, 10**8)) == ((48, 64) if orientation >= 5 else (64, 48))


def test_no_exif_is_orientation_1() -> None:
    plain = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    assert jpeg_orientation(plain) == 1


@pytest.mark.parametrize(
    ("size", "boxes", "expected"),
    [
        ((4000, 3000), None, 4),  # 1000 px long side ≥ 800; 1/8 would be 500
        ((1920, 1080), None, 2),
        ((1598, 1200), None, 1),  # ⌈1598 / 2⌉ = 799 < 800
        ((1599, 1200), None, 2),  # ⌈1599 / 2⌉ = 800
        ((4000, 3000), [[0, 0, 500, 1000]], 4),  # 125 × 250 px at 1/4 ≥ the 96 × 128 crop
        ((4000, 3000), [[0, 0, 300, 1000], [9, 9, 900, 300]], 2),  # 300 px at 1/4 = 75 < 96 wide; 1/2 is fine
        ((4000, 3000), [[0, 0, 100, 100]], 1),  # a box smaller than the crop: full resolution
    ],
)
def test_reduction_keeps_the_detector_input_and_every_crop_sharp(size, boxes, expected) -> None:
    header = check_image(jpeg(*size), 10**8)
    arr = None if boxes is None else np.asarray(boxes, np.float64)
    assert reduction_for(header, size, arr, 800, CROP) == expected
    assert reduction_for(header, size, arr, 0, CROP) == 1  # 0 = always full


def test_other_formats_are_always_decoded_whole() -> None:
    png = cv2.imencode(".png", np.zeros((1200, 2000, 3), np.uint8))[1].tobytes()
    header = check_image(png, 10**8)
    assert reduction_for(header, (2000, 1200), None, 400, CROP) == 1
    decoded = decode_pose_input(pose_input(png), 10**8, 8, min_side=400)
    assert decoded.reduction == 1 and decoded.image.shape == (1200, 2000, 3)


def test_reduced_decode_maps_boxes_into_the_small_image_and_checks_them_at_full_size() -> None:
    data = jpeg(1920, 1080)
    decoded = decode_pose_input(pose_input(data, [[1000.0, 100.0, 400.0, 800.0]]), 10**8, 8, min_side=800, min_box=CROP)
    assert decoded.reduction == 2 and decoded.image.shape == (540, 960, 3) and decoded.size == (1920, 1080)
    assert decoded.scale == (2.0, 2.0)
    np.testing.assert_allclose(decoded.boxes, [[499.75, 49.75, 200.0, 400.0]])
    full = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    area = cv2.resize(full, (960, 540), interpolation=cv2.INTER_AREA)
    assert np.abs(area.astype(int) - decoded.image).mean() < 2  # the same picture, at half size
    with pytest.raises(InputError, match="outside"):  # checked against 1920 × 1080, not 960 × 540
        decode_pose_input(pose_input(data, [[1950.0, 0.0, 10.0, 10.0]]), 10**8, 8, min_side=800, min_box=CROP)
    small = decode_pose_input(pose_input(data, [[1500.0, 900.0, 200.0, 170.0]]), 10**8, 8, min_side=800, min_box=CROP)
    assert small.reduction == 1 and small.boxes is not None and small.boxes[0].tolist() == [1500, 900, 200, 170]


def test_rotated_jpeg_is_checked_and_reduced_in_its_displayed_orientation() -> None:
    data = jpeg(1920, 1080, orientation=6)  # stored landscape, displayed portrait 1080 × 1920
    decoded = decode_pose_input(pose_input(data, [[100.0, 1500.0, 600.0, 400.0]]), 10**8, 8, min_side=800)
    assert decoded.size == (1080, 1920) and decoded.image.shape == (960, 540, 3) and decoded.reduction == 2
    with pytest.raises(InputError):  # x = 1500 lies outside a 1080-wide image
        decode_pose_input(pose_input(data, [[1500.0, 100.0, 100.0, 100.0]]), 10**8, 8, min_side=800)


@given(
    st.floats(-100, 4000),
    st.floats(-100, 3000),
    st.floats(1, 2000),
    st.floats(1, 2000),
    st.sampled_from([2.0, 4.0, 8.0, 1.5]),
)
def test_rescaled_undoes_the_box_mapping_into_a_reduced_image(x, y, w, h, s) -> None:
    reduced = ((x + 0.5) / s - 0.5, (y + 0.5) / s - 0.5, w / s, h / s)
    points = np.array([[reduced[0], reduced[1]], [reduced[0] + reduced[2], reduced[1] + reduced[3]]])
    pose = PersonPose(reduced, 1.0, points, np.ones(2), ("a", "b")).rescaled(s, s)
    np.testing.assert_allclose(pose.box, (x, y, w, h), rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(pose.keypoints, [[x, y], [x + w, y + h]], rtol=1e-9, atol=1e-6)


@pytest.mark.data
def test_api_answers_a_large_photo_in_full_resolution_pixels(tmp_path) -> None:
    """An LSP photo enlarged to 2000 px and sent as JPEG: decoded at 1/2, yet the keypoints match the local
    pipeline on the full-resolution image (same box), the detector's best box is where the detector finds the
    person at full resolution, and the response says what was decoded."""
    from tests.test_bundled_model import ONNX

    bgr = cv2.imread(str(data_path("lsp", "images", "im0802.jpg")))
    scale = 2000 / max(bgr.shape[:2])
    big = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    data = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
    full = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    h, w = full.shape[:2]
    box = [0.1 * w, 0.05 * h, 0.8 * w, 0.9 * h]
    with OnnxRuntimeBackend(ONNX, intra_op_threads=1) as backend:
        (local,) = PosePipeline(backend).predict(full, [box])

    token = secrets.token_urlsafe(16)
    registry = ModelRegistry(tmp_path / "registry")
    registry.register(ONNX, metrics={}, actor="test")
    registry.set_active("1", actor="test")
    settings = Settings(registry_dir=tmp_path / "registry", ort_threads=1, registry_poll_s=0, tokens={token: ["infer"]})
    with thread_server(create_app(settings)) as base, httpx.Client(base_url=base, timeout=60) as client:
        files = {"image": ("big.jpg", data), "boxes": (None, json.dumps([box]))}
        r = client.post("/v1/pose", files=files, headers=auth(token))
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["image"] == {"width": w, "height": h, "id": None, "decoded_scale": 0.5}
        got = np.array([[k["x"], k["y"]] for k in doc["persons"][0]["keypoints"]])
        errors = np.linalg.norm(got - local.keypoints, axis=1)
        assert np.median(errors) < 0.02 * box[3], errors  # the same joints, to within 2% of the person's height
        np.testing.assert_allclose(doc["persons"][0]["box"], box, atol=1e-6)
        r = client.post("/v1/pose", files={"image": ("big.jpg", data)}, headers=auth(token))
        assert r.status_code == 200 and r.json()["boxes_from"] == "detector"
        best = max(r.json()["persons"], key=lambda p: p["det_score"])
        found = embedded_detector(Settings().inference.detector_path, 1, 0.6).detect(full, 0.5, 1)
        assert _iou(best["box"], found.boxes[0]) > 0.9  # where the detector finds them at full resolution


def _iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    return iw * ih / (aw * ah + bw * bh - iw * ih)
