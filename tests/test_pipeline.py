"""Serving pipeline over ONNX Runtime: parity with PyTorch on the same crops, coordinate mapping, flip test,
JSON shape, image loading (EXIF), rendering, and the no-torch rule for serving/."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from torch import nn

from models.codec import HeatmapCodec
from models.export import export_onnx
from models.geometry import Size, flip_keypoints, normalize_crop, person_crop_affine, warp_image
from models.metadata import MetadataError, ModelMetadata
from models.schemas import LSP14
from serving.backends import InferenceBackend
from serving.backends.onnxruntime import OnnxRuntimeBackend
from serving.pipeline import PersonPose, PosePipeline, load_image_rgb, to_json
from serving.render import render_poses
from training.inference import predict_heatmaps

REPO = Path(__file__).resolve().parent.parent
from tests.model_fixtures import realistic_posenet as realistic_model  # noqa: E402

INPUT = Size(96, 128)  # w, h: non-square on purpose
CODEC = HeatmapCodec.for_input(INPUT, 4, sigma=2.0, refinement="quarter")
IMAGE_H, IMAGE_W = 240, 320
BOXES = [[40.0, 30.0, 90.0, 160.0], [150.0, 40.0, 60.0, 150.0], [-20.0, 150.0, 100.0, 120.0]]  # last leaves the image


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return realistic_model(seed=1)


@pytest.fixture(scope="module")
def onnx_path(model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pipeline") / "pose.onnx"
    return export_onnx(model, CODEC, LSP14, out, version="pipe-1", trained_on="t", exporter="torchscript").path


@pytest.fixture(scope="module")
def backend(onnx_path):
    with OnnxRuntimeBackend(onnx_path, intra_op_threads=2) as b:
        yield b


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A smooth, non-square RGB test image (deterministic)."""
    rng = np.random.default_rng(0)
    low = rng.uniform(0, 255, (6, 8, 3)).astype(np.float32)
    img = cv2.resize(low, (IMAGE_W, IMAGE_H), interpolation=cv2.INTER_CUBIC) + rng.normal(0, 10, (IMAGE_H, IMAGE_W, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


class CountingBackend:
    """Wraps a backend, recording the batch size of every infer call."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, []

    @property
    def metadata(self) -> ModelMetadata:
        return self.inner.metadata

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(len(batch))
        return self.inner.infer(batch)

    def close(self) -> None:
        pass


def torch_reference(model, image, boxes, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints (N, K, 2) image pixels and scores the training-side way: PyTorch on the same crops."""
    affines = np.stack([person_crop_affine(np.asarray(b), INPUT, 1.25) for b in boxes])
    crops = np.stack([normalize_crop(warp_image(image, a, INPUT), model.mean, model.std) for a in affines])
    heatmaps = predict_heatmaps(model, torch.from_numpy(crops), LSP14.flip_index if flip else None, CODEC)
    keypoints, scores = CODEC.decode(heatmaps)
    return CODEC.to_image(keypoints, affines), scores


@pytest.mark.parametrize("flip", [False, True])
def test_matches_pytorch_in_one_batched_call(backend, model, image, flip) -> None:
    counting = CountingBackend(backend)
    poses = PosePipeline(counting, flip_test=flip).predict(image, BOXES)
    assert counting.calls == ([6] if flip else [3])  # all boxes (and their mirrors) in one call
    expected_kp, expected_scores = torch_reference(model, image, BOXES, flip)
    assert len(poses) == 3
    for pose, kp, scores, box in zip(poses, expected_kp, expected_scores, BOXES):
        assert pose.box == tuple(box) and pose.names == LSP14.keypoints
        assert pose.keypoints.shape == (14, 2) and pose.keypoint_scores.shape == (14,)
        assert np.abs(pose.keypoints - kp).max() <= 0.5
        assert np.abs(pose.keypoint_scores - scores).max() <= 1e-4
        assert pose.score == pytest.approx(float(scores.mean()), abs=1e-4)


def test_flip_test_changes_result_and_stays_in_crop(backend, image) -> None:
    plain = PosePipeline(backend).predict(image, BOXES[:2])
    flipped = PosePipeline(backend, flip_test=True).predict(image, BOXES[:2])
    assert any(np.abs(a.keypoints - b.keypoints).max() > 1 for a, b in zip(plain, flipped))
    for pose in flipped:  # these boxes' padded crops lie inside the image, so the keypoints do too
        assert np.all(pose.keypoints >= -0.5) and np.all(pose.keypoints <= [IMAGE_W - 0.5, IMAGE_H - 0.5])


class GaussianBackend:
    """Fake model: codec-encoded heatmaps of known crop keypoints for every crop, except that where the batch's
    second half is the exact mirror of its first half (flip test), that half gets what an ideal
    flip-equivariant network would output."""

    def __init__(self, metadata: ModelMetadata, crop_keypoints: np.ndarray) -> None:
        self._metadata, self.crop_keypoints = metadata, crop_keypoints
        self.codec = metadata.codec()

    @property
    def metadata(self) -> ModelMetadata:
        return self._metadata

    def infer(self, batch: np.ndarray) -> np.ndarray:
        kp, ones = self.crop_keypoints, np.ones(len(self.crop_keypoints))
        mirrored_kp, _ = flip_keypoints(kp, ones, INPUT.w, LSP14.flip_index)
        n = len(batch) // 2
        has_mirrors = len(batch) % 2 == 0 and np.array_equal(batch[n:], batch[:n, ..., ::-1])
        return np.stack(
            [self.codec.encode(mirrored_kp if has_mirrors and i >= n else kp, ones)[0] for i in range(len(batch))]
        )

    def close(self) -> None:
        pass


def test_whole_image_box_maps_keypoints_back(backend) -> None:
    """Default box = whole image. For an image of the crop's aspect (w/h = 96/128), the crop is the image
    scaled by 1 / (k * 1.25) about its centre: x_img = (x_crop - 48) * 1.25 * k + W / 2 (hand-derived)."""
    k = 3
    image = np.zeros((128 * k, 96 * k, 3), np.uint8)
    crop_kp = np.random.default_rng(2).uniform([24, 24], [72, 104], (14, 2))  # ≥ 6 heatmap px from the border
    fake = GaussianBackend(backend.metadata, crop_kp)
    (pose,) = PosePipeline(fake, refinement="dark").predict(image)
    assert pose.box == (0.0, 0.0, 96.0 * k, 128.0 * k)
    expected = (crop_kp - [48, 64]) * 1.25 * k + [96 * k / 2, 128 * k / 2]
    assert np.abs(pose.keypoints - expected).max() <= 0.25 * 1.25 * k  # DARK: within 0.25 crop px


def test_flip_test_recovers_an_asymmetric_pose(backend) -> None:
    """With an ideal flip-equivariant model, flip test must give back the pose: catches a missing mirror of
    the input, of the heatmaps, or of the left/right channels (each moves joints by many pixels)."""
    crop_kp = np.random.default_rng(3).uniform([24, 24], [72, 104], (14, 2))  # ≥ 6 heatmap px from the border
    fake = GaussianBackend(backend.metadata, crop_kp)
    image = np.random.default_rng(4).integers(0, 255, (128, 96, 3), dtype=np.uint8)
    box = [[96 / 2 - 96 / 2.5, 128 / 2 - 128 / 2.5, 96 / 1.25, 128 / 1.25]]  # crop == image
    (pose,) = PosePipeline(fake, flip_test=True, refinement="dark").predict(image, box)
    # flip_back shifts one heatmap pixel where the exact shift is 1 - 1/stride: ≤ 0.5 input px bias in x
    assert np.abs(pose.keypoints - crop_kp).max() <= 1.0


class MirrorBlindBackend(GaussianBackend):
    """Fake model that outputs the same crop keypoints for a mirrored crop: maximally flip-inconsistent."""

    def infer(self, batch: np.ndarray) -> np.ndarray:
        ones = np.ones(len(self.crop_keypoints))
        return np.stack([self.codec.encode(self.crop_keypoints, ones)[0] for _ in range(len(batch))])


def test_flip_gap_is_small_for_a_flip_equivariant_model_and_large_otherwise(backend) -> None:
    """The active-learning disagreement: the plain poses come back unchanged, and the gap (mean joint distance
    between the plain and the flipped-back mirrored view, in crop heights) separates a model that is consistent
    under mirroring from one that is not."""
    crop_kp = np.random.default_rng(3).uniform([24, 24], [72, 104], (14, 2))
    image = np.random.default_rng(4).integers(0, 255, (128, 96, 3), dtype=np.uint8)
    box = [[96 / 2 - 96 / 2.5, 128 / 2 - 128 / 2.5, 96 / 1.25, 128 / 1.25]]  # crop == image
    ideal = PosePipeline(GaussianBackend(backend.metadata, crop_kp), refinement="dark")
    (pose,), gaps = ideal.predict_with_flip_gap(image, box)
    (plain,) = ideal.predict(image, box)
    assert np.array_equal(pose.keypoints, plain.keypoints) and gaps.shape == (1,)
    assert gaps[0] <= 1.0 / 128  # the flip-back's one-pixel shift bias: ≤ 1 input px
    blind = PosePipeline(MirrorBlindBackend(backend.metadata, crop_kp), refinement="dark")
    _, blind_gaps = blind.predict_with_flip_gap(image, box)
    mirrored, _ = flip_keypoints(crop_kp, np.ones(14), INPUT.w, LSP14.flip_index)  # where its flip-back lands
    expected = np.linalg.norm(crop_kp - mirrored, axis=-1).mean() / 128
    assert blind_gaps[0] == pytest.approx(expected, abs=1.5 / 128) and blind_gaps[0] > 10 * gaps[0]


def test_flip_gap_on_a_real_model_returns_one_gap_per_person(backend, image) -> None:
    pipeline = PosePipeline(backend)
    poses, gaps = pipeline.predict_with_flip_gap(image, BOXES)
    assert gaps.shape == (3,) and np.all(np.isfinite(gaps)) and np.all(gaps >= 0)
    for got, want in zip(poses, pipeline.predict(image, BOXES), strict=True):
        assert np.array_equal(got.keypoints, want.keypoints)
    nobody, no_gaps = pipeline.predict_with_flip_gap(image, [])
    assert nobody == [] and no_gaps.shape == (0,)


def test_prepare_infer_decode_steps(backend, image) -> None:
    """The public steps a micro-batcher uses: crops of two images in one call, decoded per image."""
    pipeline = PosePipeline(backend, flip_test=True)
    first, second = pipeline.prepare(image, BOXES[:2]), pipeline.prepare(image[::-1].copy())
    assert first.crops.shape == (4, 3, 128, 96) and first.persons == 2 and first.flipped
    assert np.array_equal(first.crops[2:], first.crops[:2, ..., ::-1])
    heatmaps = backend.infer(np.concatenate([first.crops, second.crops]))
    poses = pipeline.decode(heatmaps[:4], first) + pipeline.decode(heatmaps[4:], second)
    expected = pipeline.predict(image, BOXES[:2]) + pipeline.predict(image[::-1].copy())
    for got, want in zip(poses, expected, strict=True):
        assert np.abs(got.keypoints - want.keypoints).max() <= 1e-3
    with pytest.raises(ValueError, match="heatmaps"):
        pipeline.decode(heatmaps[:3], first)
    empty = pipeline.prepare(image, [])
    assert empty.crops.shape == (0, 3, 128, 96) and pipeline.decode(np.zeros((0, 14, 32, 24)), empty) == []


def test_empty_and_invalid_inputs(backend, image) -> None:
    pipeline = PosePipeline(backend)
    assert pipeline.predict(image, []) == []
    for bad in ([[0, 0, 0, 10]], [[0, 0, 10]], [[0, 0, np.nan, 10]]):
        with pytest.raises(ValueError, match="boxes"):
            pipeline.predict(image, bad)
    with pytest.raises(ValueError, match="RGB uint8"):
        pipeline.predict(image.astype(np.float32))
    with pytest.raises(ValueError, match="batch shape"):
        backend.infer(np.zeros((1, 3, 64, 64), np.float32))


def test_to_json_shape(backend, image) -> None:
    poses = PosePipeline(backend).predict(image, BOXES[:2])
    doc = to_json(poses, backend.metadata.version)
    assert json.loads(json.dumps(doc)) == doc  # plain JSON types only
    assert doc["model_version"] == "pipe-1" and len(doc["persons"]) == 2
    person = doc["persons"][0]
    assert set(person) == {"box", "det_score", "pose_score", "score", "keypoints"} and person["box"] == BOXES[0]
    assert person["det_score"] is None and person["pose_score"] == person["score"]  # boxes given: no detector
    assert [kp["name"] for kp in person["keypoints"]] == list(LSP14.keypoints)
    assert set(person["keypoints"][0]) == {"name", "x", "y", "score", "in_image", "valid"}
    assert person["keypoints"][3]["x"] == pytest.approx(float(poses[0].keypoints[3, 0]))


def test_to_json_flags_keypoints_outside_the_image_and_below_the_threshold() -> None:
    """Keypoints are never clipped: outside the image (pixel centres at integers, edges at -0.5 and W - 0.5)
    they keep their coordinates and are flagged; `valid` also needs score ≥ kpt_threshold."""
    kp = np.array([[-0.6, 5.0], [-0.4, 5.0], [99.4, 49.4], [99.6, 10.0], [10.0, 49.6], [10.0, 10.0]])
    scores = np.array([0.9, 0.9, 0.9, 0.9, 0.9, 0.2])
    pose = PersonPose((0, 0, 100, 50), float(scores.mean()), kp, scores, tuple("abcdef"), det_score=0.8)
    (person,) = to_json([pose], "v", kpt_threshold=0.3, image_size=(100, 50))["persons"]
    points = person["keypoints"]
    assert [k["in_image"] for k in points] == [False, True, True, False, False, True]
    assert [k["valid"] for k in points] == [False, True, True, False, False, False]  # the last: score 0.2 < 0.3
    assert [k["x"] for k in points] == pytest.approx(kp[:, 0].tolist())  # not clipped
    assert person["det_score"] == 0.8
    (unchecked,) = to_json([pose], "v")["persons"]  # no size, threshold 0: everything valid
    assert all(k["valid"] and k["in_image"] for k in unchecked["keypoints"])


def test_backend_contract(backend, onnx_path, tmp_path) -> None:
    assert isinstance(backend, InferenceBackend)
    assert backend.providers[-1] == "CPUExecutionProvider"
    out = backend.infer(np.zeros((2, 3, 128, 96), np.float32))
    assert out.shape == (2, 14, 32, 24) and out.dtype == np.float32
    proto = onnx.load(str(onnx_path))
    del proto.metadata_props[:]
    stripped = tmp_path / "no_meta.onnx"
    onnx.save(proto, str(stripped))
    with pytest.raises(MetadataError, match="poseloop.keypoints"):
        OnnxRuntimeBackend(stripped)


def jpeg_with_orientation(bgr: np.ndarray, orientation: int) -> bytes:
    """JPEG bytes with an APP1 EXIF segment holding only the Orientation tag (0x0112)."""
    tiff = b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + b"\0" * 4
    payload = b"Exif\x00\x00" + tiff
    jpeg = cv2.imencode(".jpg", bgr)[1].tobytes()
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def test_load_image_rgb_honours_exif_and_returns_rgb(tmp_path) -> None:
    bgr = np.zeros((40, 60, 3), np.uint8)
    bgr[:10, :20] = (0, 0, 255)  # red block, top-left
    upright = load_image_rgb(jpeg_with_orientation(bgr, 1))
    assert upright.shape == (40, 60, 3) and upright[5, 5, 0] > 200 and upright[5, 5, 2] < 60  # RGB order
    path = tmp_path / "rotated.jpg"
    path.write_bytes(jpeg_with_orientation(bgr, 6))  # 6 = display rotated 90° clockwise
    for source in (path, str(path), path.read_bytes()):
        rotated = load_image_rgb(source)
        assert rotated.shape == (60, 40, 3)
        assert rotated[5, 35, 0] > 200 and rotated[50, 5, 0] < 60  # red block now top-right
    with pytest.raises(ValueError, match="decode"):
        load_image_rgb(b"not an image")


def test_render_poses(image) -> None:
    kp = np.array([[50.0, 40.0], [120.0, 60.0], [200.0, 180.0]])
    pose = PersonPose((0, 0, 1, 1), 1.0, kp, np.array([1.0, 1.0, 0.0]), ("a", "b", "c"))
    before = image.copy()
    out = render_poses(image, [pose], [(0, 1), (1, 2)])
    assert np.array_equal(image, before) and out.shape == image.shape and out.dtype == np.uint8
    assert np.any(out[54, 100] != image[54, 100])  # on the confident limb 0-1
    assert np.array_equal(out[150:175, 150:190], image[150:175, 150:190])  # limb 1-2 has opacity 0
    invisible = PersonPose((0, 0, 1, 1), 0.0, kp, np.zeros(3), ("a", "b", "c"))
    assert np.array_equal(render_poses(image, [invisible], [(0, 1), (1, 2)]), image)


def test_render_draws_only_valid_keypoints(image) -> None:
    """The overlay shows what the JSON calls `valid`: a joint below kpt_threshold or outside the image (here
    0.2 px past the right edge, x > W - 0.5) is not drawn, nor is any limb touching it."""
    w = image.shape[1]
    kp = np.array([[40.0, 40.0], [120.0, 40.0], [w - 0.3, 100.0]])
    pose = PersonPose((0, 0, 1, 1), 0.7, kp, np.array([0.9, 0.2, 0.9]), ("a", "b", "c"))
    skeleton = [(0, 1), (0, 2)]
    out = render_poses(image, [pose], skeleton, kpt_threshold=0.3)
    assert np.any(out[38:43, 38:43] != image[38:43, 38:43])  # joint a: valid, drawn
    assert np.array_equal(out[30:50, 60:130], image[30:50, 60:130])  # b (0.2 < 0.3) and limb a-b: not drawn
    assert np.array_equal(out[95:106, w - 8 :], image[95:106, w - 8 :])  # c is outside the image: not drawn
    assert np.array_equal(out[:, 45:], image[:, 45:])  # nor limb a-c (nor b, nor c)
    lower = render_poses(image, [pose], skeleton, kpt_threshold=0.1)  # b now valid: it and limb a-b appear
    assert np.any(lower[38:43, 118:123] != image[38:43, 118:123]) and np.any(lower[40, 60:100] != image[40, 60:100])


def test_serving_never_imports_torch() -> None:
    """Import every module under serving/ in a fresh interpreter; torch must not get loaded. Modules that need a
    runtime only present elsewhere (triton_python_backend_utils inside tritonserver) are skipped."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import serving, models.metadata, serving.pipeline, serving.render, serving.backends.onnxruntime\n"
        "for info in pkgutil.walk_packages(serving.__path__, 'serving.'):\n"
        "    try:\n"
        "        importlib.import_module(info.name)\n"
        "    except ModuleNotFoundError as err:\n"
        "        if err.name == 'torch' or err.name.startswith('serving'):\n"
        "            raise\n"
        "        print('skipped', info.name, 'needs', err.name)\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "print('torch modules:', bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
