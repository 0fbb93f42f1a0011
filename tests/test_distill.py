"""Offline data distillation: schema mapping, TTA geometry, MoveNet, filter calibration, the pseudo-label cache,
pseudo records in the data pipeline, occlusion noise, and one tiny round on real data."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.codec import HeatmapCodec
from models.geometry import Size, invert_affine, normalize_crop, transform_points, warp_image
from models.schemas import COCO17, LSP14, MPII16, SCHEMAS
from training.config import AugmentConfig, DataConfig, TrainConfig, config_with, load_config
from training.data import load_pseudo_labels
from training.datasets.records import PersonRecord
from training.datasets.topdown import CropParams, TopDownDataset, sample_affine
from training.distill import (
    NAME_ALIASES,
    EnsembleTeacher,
    FilterSpec,
    TeacherOutput,
    Thresholds,
    TTAConfig,
    calibrate,
    joint_map,
    keep_mask,
    label_pool,
    map_joints,
    pck_correct,
)
from training.distill.members import HeatmapMember, MoveNetMember

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "artifacts" / "lsp14-mbv2-128x96" / "v1" / "checkpoint.pt"
BOX = np.array([80, 50, 90, 150], np.float32)  # inside a 256 x 256 image at every TTA scale


# ---------------------------------------------------------------------- schema mapping
def test_coco_to_lsp_maps_the_twelve_limb_joints_by_name():
    mapping = joint_map(COCO17, LSP14)
    # LSP: r/l ankle, knee, hip; r/l wrist, elbow, shoulder; neck and head_top have no COCO joint
    assert mapping.tolist() == [16, 14, 12, 11, 13, 15, 10, 8, 6, 5, 7, 9, -1, -1]
    values = np.arange(2 * 17 * 2, dtype=float).reshape(2, 17, 2)
    mapped = map_joints(values, mapping, axis=1)
    assert mapped.shape == (2, 14, 2) and np.isnan(mapped[:, 12:]).all()
    assert np.array_equal(mapped[:, LSP14.index("left_wrist")], values[:, COCO17.index("left_wrist")])


def test_mpii_neck_alias_and_every_alias_names_real_joints():
    mapping = joint_map(MPII16, LSP14)
    assert mapping[LSP14.index("neck")] == MPII16.index("upper_neck")
    assert mapping[LSP14.index("head_top")] == MPII16.index("head_top")
    assert (mapping >= 0).all()
    for (source, target), aliases in NAME_ALIASES.items():
        for target_name, source_name in aliases.items():
            assert target_name in SCHEMAS[target].keypoints and source_name in SCHEMAS[source].keypoints
    assert (joint_map(LSP14, COCO17)[:5] == -1).all()  # no face joints in LSP


# ---------------------------------------------------------------------- TTA geometry
def _coordinate_image(tmp_path: Path) -> Path:
    """256 x 256 image whose pixel (x, y) holds R = x, G = y, B = 255: a crop tells where it came from."""
    xs, ys = np.meshgrid(np.arange(256), np.arange(256))
    rgb = np.stack([xs, ys, np.full_like(xs, 255)], -1).astype(np.uint8)
    path = tmp_path / "coords.png"
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def _oracle_member(points: np.ndarray, schema, codec: HeatmapCodec, shift=(0.0, 0.0)) -> HeatmapMember:
    """A perfect 'network': it reads the crop → image map off the coordinate image, and puts each joint's Gaussian
    where `points` (image pixels, + `shift`) fall in the crop; on a mirrored crop it labels as a real pose network
    does (channel j = joint flip_index[j] of the original person)."""

    def run(images: np.ndarray) -> np.ndarray:
        out = []
        for image in images:  # (3, H, W) normalised with mean 0, std 1: raw pixel values
            inside = image[2] == 255
            v, u = np.nonzero(inside)
            design = np.stack([u, v, np.ones_like(u)], 1).astype(np.float64)
            crop_to_image = np.linalg.lstsq(design, np.stack([image[0][inside], image[1][inside]], 1), rcond=None)[0]
            crop_to_image = crop_to_image.T  # (2, 3)
            flipped = np.linalg.det(crop_to_image[:, :2]) < 0
            source = points[schema.flip_index] if flipped else points
            crop_points = transform_points(source + np.asarray(shift), invert_affine(crop_to_image))
            out.append(codec.encode(crop_points, np.ones(len(points), bool))[0])
        return np.stack(out)

    return HeatmapMember(schema, codec, (0.0,) * 3, (1.0,) * 3, 1.25, run, {"kind": "oracle", "path": "-"})


def test_tta_views_map_back_to_the_image_points(tmp_path):
    record = PersonRecord(_coordinate_image(tmp_path), BOX, None, None, "lsp14", "synthetic/0")
    points = np.random.default_rng(0).uniform([90, 60], [160, 190], (14, 2))
    codec = HeatmapCodec.for_input(Size(96, 128), refinement="dark")
    teacher = EnsembleTeacher([_oracle_member(points, LSP14, codec)], "lsp14", TTAConfig((0.9, 1.0, 1.1), True))
    views, _ = teacher.predict_views([record])
    assert views.shape == (6, 1, 14, 2)
    assert np.abs(views[:, 0] - points).max() < 1.0  # every view, flipped or not, at every scale
    out = teacher.predict([record])
    assert np.abs(out.keypoints[0] - points).max() < 1.0
    assert np.nanmax(out.spread) < 1.0 / 150 and np.allclose(out.scores, 1.0, atol=0.05)


def test_ensemble_maps_schemas_and_spread_measures_disagreement(tmp_path):
    record = PersonRecord(_coordinate_image(tmp_path), BOX, None, None, "lsp14", "synthetic/0")
    lsp_points = np.random.default_rng(1).uniform([90, 60], [160, 190], (14, 2))
    coco_points = np.random.default_rng(2).uniform([90, 60], [160, 190], (17, 2))
    mapping = joint_map(COCO17, LSP14)
    coco_points[mapping[:12]] = lsp_points[:12]
    lsp_codec = HeatmapCodec.for_input(Size(96, 128), refinement="dark")
    coco_codec = HeatmapCodec.for_input(Size(128, 128), refinement="dark")
    members = [
        _oracle_member(lsp_points, LSP14, lsp_codec),
        _oracle_member(coco_points, COCO17, coco_codec, shift=(12.0, 0.0)),  # disagrees by 12 px in x
    ]
    out = EnsembleTeacher(members, "lsp14", TTAConfig((1.0,), False)).predict([record])
    limbs, head = slice(0, 12), slice(12, 14)
    assert np.abs(out.keypoints[0, limbs, 0] - (lsp_points[limbs, 0] + 6.0)).max() < 1.0  # equal scores: midpoint
    assert np.abs(out.keypoints[0, head] - lsp_points[head]).max() < 1.0  # only the LSP member has these
    assert np.allclose(out.spread[0, limbs], 6.0 / 150, atol=1.0 / 150)
    assert np.all(out.spread[0, head] < 1.0 / 150) and out.known.all()


# ---------------------------------------------------------------------- MoveNet (a synthetic ONNX with its I/O)
def _fake_movenet(path: Path, side: int, dtype: str) -> None:
    """MoveNet's interface ((1, S, S, 3) NHWC → (1, 1, 17, 3) = (y, x, score) normalised): every joint at the
    centre of the brightest pixel, score 1."""
    import onnx
    from onnx import TensorProto, helper

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    consts = {
        "axes": [3],
        "flat": [1, side * side],
        "side": [side],
        "zero": [0],
        "tile": [17, 1],
        "shape": [1, 1, 17, 3],
    }
    nodes = [
        helper.make_node("Constant", [], [k], value=helper.make_tensor(k, i64, [len(v)], v)) for k, v in consts.items()
    ]
    for name, value in {"side_f": float(side), "half": 0.5, "one": 1.0}.items():
        nodes.append(helper.make_node("Constant", [], [name], value=helper.make_tensor(name, f32, [1], [value])))
    steps = [
        ("Cast", ["input"], "f", {"to": f32}),
        ("ReduceSum", ["f", "axes"], "gray", {"keepdims": 0}),
        ("Reshape", ["gray", "flat"], "flat_gray", {}),
        ("ArgMax", ["flat_gray"], "idx", {"axis": 1, "keepdims": 0}),
        ("Div", ["idx", "side"], "row", {}),  # integer division
        ("Mod", ["idx", "side"], "col", {}),
        ("Concat", ["row", "col"], "rc", {"axis": 0}),
        ("Cast", ["rc"], "rc_f", {"to": f32}),
        ("Add", ["rc_f", "half"], "centre", {}),
        ("Div", ["centre", "side_f"], "yx", {}),
        ("Concat", ["yx", "one"], "yxs", {"axis": 0}),
        ("Unsqueeze", ["yxs", "zero"], "row_of_3", {}),
        ("Tile", ["row_of_3", "tile"], "tiled", {}),
        ("Reshape", ["tiled", "shape"], "output_0", {}),
    ]
    nodes += [helper.make_node(op, inputs, [out], **attrs) for op, inputs, out, attrs in steps]
    elem = TensorProto.INT32 if dtype == "int32" else f32
    graph = helper.make_graph(
        nodes,
        "fake_movenet",
        [helper.make_tensor_value_info("input", elem, [1, side, side, 3])],
        [helper.make_tensor_value_info("output_0", f32, [1, 1, 17, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.mark.parametrize("dtype", ["int32", "float32"])
def test_movenet_member_letterboxes_and_maps_back(tmp_path, dtype):
    dot = np.array([131.3, 97.6])
    xs, ys = np.meshgrid(np.arange(256), np.arange(256))
    blob = 250 * np.exp(-((xs - dot[0]) ** 2 + (ys - dot[1]) ** 2) / (2 * 3.0**2))
    path = tmp_path / "blob.png"
    cv2.imwrite(str(path), np.repeat(blob[..., None], 3, -1).astype(np.uint8))
    model = tmp_path / "movenet-lightning.onnx"
    _fake_movenet(model, 192, dtype)
    member = MoveNetMember(model, threads=1)
    assert member.input_size == Size(192, 192) and member.input_name == "input"
    record = PersonRecord(path, np.array([100, 20, 60, 200], np.float32), None, None, "lsp14", "blob/0")
    teacher = EnsembleTeacher([member], "lsp14", TTAConfig((0.9, 1.0, 1.1), True))
    views, _ = teacher.predict_views([record])
    limbs = views[:, 0, :12]
    assert np.abs(limbs - dot).max() < 1.0  # square crop + letterbox + flip + scale, and back
    assert np.isnan(views[:, 0, 12:]).all()  # MoveNet (COCO-17) has no LSP neck / head top


@pytest.mark.parametrize("variant", ["thunder", "lightning"])
def test_real_movenet_teacher_labels_lsp(variant, data_root):
    model = REPO / "artifacts" / "teachers" / f"movenet-{variant}" / "model.onnx"
    if not model.exists():
        pytest.skip(f"{model} not converted yet")
    from training.datasets.lsp import lsp_split
    from training.distill import build_teacher

    records = lsp_split(data_root, "val")[:8]
    out = build_teacher(model, "lsp14", TTAConfig((1.0,), True), threads=1).predict(records)
    gt = np.stack([r.keypoints for r in records])
    correct, counted = pck_correct(out.keypoints, gt, np.stack([r.visibility for r in records]), LSP14)
    assert correct[:, :12].sum() / counted[:, :12].sum() > 0.5 and not out.known[:, 12:].any()


def test_onnx_and_checkpoint_teachers_agree_on_real_images(data_root):
    from training.datasets.lsp import lsp_split
    from training.distill import build_teacher

    records = lsp_split(data_root, "val")[:3]
    tta = TTAConfig((1.0,), True)
    onnx_out = build_teacher(BUNDLED.with_name("model.onnx"), "lsp14", tta, threads=1).predict(records)
    torch_out = build_teacher(BUNDLED, "lsp14", tta).predict(records)
    assert np.median(np.abs(onnx_out.keypoints - torch_out.keypoints)) < 0.5  # float16 ONNX weights: ~0.4 px
    assert np.allclose(onnx_out.scores, torch_out.scores, atol=0.05)


# ---------------------------------------------------------------------- filter and calibration
def test_calibration_picks_the_loosest_score_reaching_the_precision():
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]])
    correct = np.array([[1, 1, 0, 1, 0]], bool)
    cal = calibrate(scores, np.zeros_like(scores), correct, np.ones_like(correct), precision=0.75)
    assert cal.thresholds.score == 0.6 and cal.precision == 0.75 and cal.kept_fraction == 0.8
    ties = calibrate(np.array([[0.9, 0.6, 0.6]]), np.zeros((1, 3)), np.array([[1, 1, 0]], bool), np.ones((1, 3)), 0.7)
    assert ties.thresholds.score == 0.9  # 0.6 would keep both tied joints: 2/3 < 0.7
    never = calibrate(scores, np.zeros_like(scores), np.zeros_like(correct), np.ones_like(correct), 0.5)
    assert never.thresholds.score == math.inf and never.kept_fraction == 0 and math.isnan(never.precision)


def test_calibration_on_synthetic_scores_is_loosest_and_uses_spread():
    rng = np.random.default_rng(0)
    scores = rng.uniform(0, 1, (400, 14))
    spread = rng.uniform(0, 0.1, (400, 14))
    correct = (rng.random((400, 14)) < scores) & (spread < 0.06)  # wide spread: always wrong
    counted = rng.random((400, 14)) < 0.95
    no_spread = calibrate(scores, spread, correct, counted, 0.8)
    kept = counted & (scores >= no_spread.thresholds.score)
    assert correct[kept].mean() >= 0.8 and no_spread.precision == pytest.approx(correct[kept].mean())
    lower = np.unique(scores[counted & (scores < no_spread.thresholds.score)])[::-1]
    assert all(correct[counted & (scores >= t)].mean() < 0.8 for t in lower)  # nothing looser reaches 0.8
    with_spread = calibrate(scores, spread, correct, counted, 0.8, spread_grid=(0.06, math.inf))
    assert with_spread.thresholds.spread == 0.06 and with_spread.kept_fraction > no_spread.kept_fraction
    assert with_spread.precision >= 0.8


def test_keep_mask_drops_unknown_joints_and_thin_persons():
    scores = np.array([[0.9] * 6 + [0.1] * 8, [0.9] * 5 + [np.nan] * 9])
    spread = np.where(np.isnan(scores), np.nan, 0.01)
    kept, persons = keep_mask(scores, spread, Thresholds(0.5, 0.05, min_joints=6))
    assert kept.sum(1).tolist() == [6, 5] and persons.tolist() == [True, False]
    assert not keep_mask(scores, spread + 0.1, Thresholds(0.5, 0.05, 1))[0].any()


def test_pck_correct_uses_the_torso_and_an_inclusive_bound():
    gt = np.zeros((1, 14, 2))
    gt[0, LSP14.index("right_hip")] = (0, 100)  # torso = 100 px: PCK@0.2 = 20 px
    pred = gt.copy()
    pred[0, 0] += (19, 0)
    pred[0, 1] += (20, 0)
    pred[0, 4] += (21, 0)
    pred[0, 5] = np.nan
    visibility = np.full((1, 14), 2)
    visibility[0, 6] = 0
    correct, counted = pck_correct(pred, gt, visibility, LSP14)
    assert correct[0, [0, 1]].all() and not correct[0, [4, 5]].any()
    assert not counted[0, 6] and counted.sum() == 13


# ---------------------------------------------------------------------- cache
class _FixedTeacher:
    """A Teacher whose predictions are given: keypoints = each record's box corner + offsets, fixed scores."""

    schema = LSP14

    def __init__(self, sha: str = "a" * 64, path: str = "/models/best.pt"):
        self.sha, self.path, self.calls = sha, path, 0

    def provenance(self) -> dict:
        member = {"kind": "checkpoint", "path": self.path, "sha256": self.sha, "decode": "dark"}
        return {"schema": "lsp14", "tta": TTAConfig().to_json(), "members": [member]}

    def predict(self, records) -> TeacherOutput:
        self.calls += 1
        n = len(records)
        keypoints = np.stack([np.asarray(r.box[:2], np.float64) + np.arange(28).reshape(14, 2) for r in records])
        scores = np.tile(np.linspace(0.2, 0.95, 14), (n, 1))
        scores[:, 13] = np.nan  # a joint this teacher cannot predict
        keypoints[:, 13] = np.nan
        return TeacherOutput(keypoints, scores, np.where(np.isnan(scores), np.nan, 0.01))


def _pool(n: int, image: Path = Path("/pool/img.jpg")) -> list[PersonRecord]:
    return [PersonRecord(image, np.array([10 * i, 5, 50, 100]), None, None, "lsp14", f"pool/{i}") for i in range(n)]


def _dev(teacher: _FixedTeacher, n: int = 10) -> list[PersonRecord]:
    """Dev persons where the teacher is right on its high-score joints (index ≥ 7) and 50 px off below."""
    records = []
    for i in range(n):
        box = np.array([3.0 * i, 0, 60, 120])
        kpts = box[:2] + np.arange(28).reshape(14, 2).astype(float)
        kpts[LSP14.index("right_hip")] += (0, 80)  # a 70+ px torso
        kpts[:7] += (50, 0)
        kpts[LSP14.index("right_hip")] -= (50, 0)
        records.append(PersonRecord(Path("/dev.jpg"), box, kpts, np.full(14, 2), "lsp14", f"dev/{i}"))
    return records


def test_cache_round_trip_reuse_and_provenance(tmp_path):
    teacher = _FixedTeacher()
    spec = FilterSpec(precision=0.8, min_joints=6, spread_grid=(0.05, math.inf))
    pool, dev = _pool(5), _dev(teacher)
    first = label_pool(teacher, pool, tmp_path, spec, dev)
    assert not first.reused and teacher.calls == 2  # dev calibration + the pool
    payload = json.loads(first.path.read_text())
    prov = payload["provenance"]
    assert first.path.parent.name == payload["key"] and first.path.parent.parent == tmp_path
    assert prov["teacher"]["members"][0]["sha256"] == "a" * 64 and prov["filter"]["precision"] == 0.8
    assert prov["calibration"]["precision"] >= 0.8 and prov["calibration"]["dev_records"] == 10
    assert prov["thresholds"]["min_joints"] == 6 and prov["counts"]["persons"] == 5 and prov["created"]
    cal_score = prov["thresholds"]["score"]
    records = first.records()
    assert len(records) == prov["counts"]["persons_kept"] == 5
    expected_kept = np.r_[np.linspace(0.2, 0.95, 14)[:13] >= cal_score, False]
    for record, person in zip(records, pool):
        assert record.record_id == f"pseudo/{person.record_id}" and record.visibility is not None
        assert np.array_equal(record.visibility > 0, expected_kept) and set(record.visibility) <= {0, 2}
        assert record.keypoints is not None and (record.keypoints[~expected_kept] == 0).all()
        assert np.allclose(
            record.keypoints[expected_kept], (person.box[:2] + np.arange(28).reshape(14, 2))[expected_kept]
        )

    again = label_pool(_FixedTeacher(path="/moved/best.pt"), pool, tmp_path, spec, dev)
    assert again.reused and again.path == first.path  # same file sha256: the path does not matter
    other = label_pool(_FixedTeacher(sha="b" * 64), pool, tmp_path, spec, dev)
    assert not other.reused and other.path != first.path
    fixed = label_pool(teacher, pool[:3], tmp_path, FilterSpec(thresholds=Thresholds(0.7, min_joints=2)))
    assert fixed.provenance["calibration"] is None and len(fixed.records()) == 3
    with pytest.raises(ValueError, match="dev records"):
        label_pool(teacher, pool, tmp_path / "x", spec)


def test_min_joints_drops_persons_from_the_training_records(tmp_path):
    labels = label_pool(_FixedTeacher(), _pool(2), tmp_path, FilterSpec(thresholds=Thresholds(0.5, min_joints=13)))
    assert labels.provenance["counts"]["persons_kept"] == 0 and labels.records() == []
    assert len(json.loads(labels.path.read_text())["persons"]) == 2  # dropped persons stay in the file


# ---------------------------------------------------------------------- pseudo records in the data pipeline
def _synthetic_cache(tmp_path: Path) -> Path:
    image = tmp_path / "person.png"
    cv2.imwrite(str(image), np.full((240, 200, 3), 120, np.uint8))
    pool = [PersonRecord(image, np.array([50, 40, 100, 160]), None, None, "lsp14", f"synthetic/{i}") for i in range(3)]
    teacher = _FixedTeacher()
    return label_pool(teacher, pool, tmp_path / "cache", FilterSpec(thresholds=Thresholds(0.5, min_joints=1))).path


def test_pseudo_records_get_zero_target_weight_where_dropped(tmp_path):
    records = load_pseudo_labels(_synthetic_cache(tmp_path))
    codec = HeatmapCodec.for_input(Size(96, 128))
    item = TopDownDataset(records, codec, (0.0,) * 3, (1.0,) * 3, augment=None)[0]
    dropped = records[0].visibility == 0
    assert dropped.any() and (~dropped).any()
    assert (item["target_weight"].numpy()[dropped] == 0).all()
    assert (item["heatmaps"].numpy()[dropped] == 0).all() and (item["target_weight"].numpy()[~dropped] > 0).any()


def test_build_splits_appends_pseudo_labels_after_the_budget(tmp_path, data_root):
    from training.data import build_splits

    cache = _synthetic_cache(tmp_path)
    splits = build_splits(DataConfig(label_budget=4, pseudo_labels=str(cache)))
    assert [r.record_id for r in splits.train[:4]] == [f"lsp/im000{i}" for i in range(1, 5)]
    assert [r.record_id for r in splits.train[4:]] == [f"pseudo/synthetic/{i}" for i in range(3)]
    assert "+ 3 pseudo-labelled persons" in splits.description
    assert len(build_splits(DataConfig(label_budget=4)).train) == 4
    # a pseudo share of 0.5 with 1 label and 3 pseudo-labels: the label enters 3 times, the pseudo-labels once
    shared = build_splits(DataConfig(label_budget=1, pseudo_labels=str(cache), pseudo_share=0.5))
    assert [r.record_id for r in shared.train] == ["lsp/im0001"] * 3 + [f"pseudo/synthetic/{i}" for i in range(3)]
    assert "labeled records ×3 for a pseudo share of 0.5" in shared.description


@pytest.mark.parametrize(
    ("labeled", "pseudo", "share", "repeat"),
    [(800, 4859, 0.5, 6), (800, 4859, None, 1), (800, 400, 0.5, 1), (100, 4859, 0.8, 12), (0, 10, 0.5, 1)],
)
def test_labeled_repeat_reaches_the_pseudo_share(labeled, pseudo, share, repeat):
    from training.data import labeled_repeat

    assert labeled_repeat(labeled, pseudo, share) == repeat


# ---------------------------------------------------------------------- occlusion noise
def _flat_record(tmp_path: Path) -> PersonRecord:
    image = tmp_path / "flat.png"
    cv2.imwrite(str(image), np.full((400, 400, 3), 200, np.uint8))
    return PersonRecord(image, np.array([150, 100, 90, 150]), None, None, "lsp14", "flat/0")


@pytest.mark.parametrize("size", [Size(96, 128), Size(64, 96)])
def test_occlusion_covers_the_expected_area(tmp_path, size):
    record = _flat_record(tmp_path)
    codec = HeatmapCodec.for_input(size)
    still = AugmentConfig(scale_factor=0.0, rotation_prob=0.0, flip_prob=0.0)
    occluded = still.model_copy(update={"occlusion_prob": 1.0, "occlusion_size": (0.25, 0.25)})
    mean = (100.0, 100.0, 100.0)
    plain = TopDownDataset([record], codec, mean, (1.0,) * 3, augment=still)[0]["image"].numpy()
    for epoch in range(3):
        dataset = TopDownDataset([record], codec, mean, (1.0,) * 3, augment=occluded)
        dataset.set_epoch(epoch)
        image = dataset[0]["image"].numpy()
        covered = (image != plain).any(0)
        side = round(0.25 * min(size))
        assert covered.mean() == pytest.approx(side * side / (size.w * size.h))
        assert (image[:, covered] == 0).all()  # the normalisation mean


def test_occlusion_is_off_by_default_and_keeps_config_hashes(tmp_path):
    assert AugmentConfig().occlusion_prob == 0.0
    record = _flat_record(tmp_path)
    codec = HeatmapCodec.for_input(Size(96, 128))
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    dataset = TopDownDataset([record], codec, mean, std, augment=AugmentConfig(), seed=3)
    dataset.set_epoch(2)
    params = CropParams.sample(np.random.default_rng([3, 2, 0]), AugmentConfig())  # the draws as before
    assert dataset.crop_params(0) == params
    affine = sample_affine(record.box, codec.input_size, 1.25, params)
    expected = normalize_crop(
        warp_image(cv2.cvtColor(cv2.imread(str(record.image_path)), cv2.COLOR_BGR2RGB), affine, codec.input_size),
        np.asarray(mean),
        np.asarray(std),
    )
    assert np.array_equal(dataset[0]["image"].numpy(), expected)
    assert TrainConfig(name="x").config_hash() == hashlib.sha256(b'{"name": "x"}').hexdigest()[:12]
    dumped = json.dumps(load_config(REPO / "configs" / "lsp_mbv2_128x96.yaml").model_dump(exclude_defaults=True))
    assert "occlusion" not in dumped and "pseudo_labels" not in dumped


def test_occlusion_probability_and_box_count(tmp_path):
    from training.datasets.topdown import sample_occlusion

    cfg = AugmentConfig(occlusion_prob=0.5, occlusion_boxes=3, occlusion_size=(0.1, 0.4))
    draws = [sample_occlusion(np.random.default_rng(i), cfg, Size(96, 128)) for i in range(400)]
    assert 150 < sum(bool(d) for d in draws) < 250 and all(len(d) in (0, 3) for d in draws)
    for x0, y0, x1, y1 in (b for d in draws for b in d):
        assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 128 and 9 <= x1 - x0 <= 39
    with pytest.raises(ValueError):
        AugmentConfig(occlusion_size=(0.5, 0.2))


# ---------------------------------------------------------------------- one tiny round on real data
def test_two_tiny_rounds_on_real_data_and_resume(tmp_path, data_root):
    from poseloop.distill import run_distillation
    from training.data import build_splits
    from training.datasets.lsp import lsp_split

    config = load_config(
        REPO / "configs" / "distill" / "lsp_distill.yaml",
        [
            *("name=tiny", f"output_dir={tmp_path}", "model.pretrained=false", "eval.flip_test=false"),
            f"init_checkpoint={BUNDLED}",  # the student starts near the teacher, so round 1's teacher is usable
            *("data.label_budget=4", "data.unlabeled_limit=6", "optim.batch_size=4", "optim.iterations=2"),
            *("optim.lr=1e-6", "schedule.log_every=1", "schedule.val_every=2", "schedule.checkpoint_every=2"),
        ],
    )
    dev = lsp_split(data_root, "val", protocol="v2")[:8]
    tta = TTAConfig((0.9, 1.1), True)
    out = tmp_path / "distill"
    results = run_distillation(config, BUNDLED, 2, out, dev_records=dev, precision=0.8, min_joints=4, tta=tta)
    assert [r.round for r in results] == [0, 1]
    assert (
        results[1].teacher["members"][0]["sha256"]
        == hashlib.sha256(results[0].best_checkpoint.read_bytes()).hexdigest()
    )
    for result in results:
        assert result.best_checkpoint.exists() and result.cache.exists() and math.isfinite(result.val_metric)
        assert result.calibration is not None and result.calibration["precision"] >= 0.8
        assert result.counts["persons_kept"] > 0
        trained = build_splits(
            load_config(
                REPO / "configs" / "distill" / "lsp_distill.yaml",
                [f"data.pseudo_labels={result.cache}", "data.label_budget=4"],
            ).data
        )
        assert sum(r.record_id.startswith("pseudo/lspet/") for r in trained.train) == result.counts["persons_kept"]
    stamps = [(r.run_dir / "metrics.jsonl").stat().st_mtime_ns for r in results]
    again = run_distillation(config, BUNDLED, 2, out, dev_records=dev, precision=0.8, min_joints=4, tta=tta)
    assert again == results and [(r.run_dir / "metrics.jsonl").stat().st_mtime_ns for r in again] == stamps
    with pytest.raises(ValueError, match="other inputs"):
        run_distillation(config, BUNDLED, 1, out, dev_records=dev, precision=0.9, min_joints=4, tta=tta)
    # another student of the same teacher, filter, pool and dev records (another label budget) finds the labels
    other = config_with(config.model_dump(mode="json"), {"name": "tiny_n6", "data": {"label_budget": 6}})
    shared = run_distillation(
        other,
        BUNDLED,
        1,
        tmp_path / "other",
        dev_records=dev,
        precision=0.8,
        min_joints=4,
        tta=tta,
        cache_root=out / "pseudo_labels",
    )
    assert shared[0].reused_cache and shared[0].cache == results[0].cache
    assert shared[0].run_dir.parent == tmp_path / "other"
