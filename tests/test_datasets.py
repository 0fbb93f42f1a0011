"""Dataset loaders and records. Data tests read ../shared/datasets and skip when it is absent."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.io import loadmat

from tests.data_paths import DATA, data_path
from training.datasets import (
    PersonRecord,
    box_from_keypoints,
    default_data_root,
    load_coco_keypoints,
    load_image_folder,
    load_lsp,
    load_lspet_unlabeled,
    load_mpii,
    lsp_split,
    read_image_size,
)

# ---------------------------------------------------------------- records and boxes


def test_box_from_keypoints_extent_plus_margin_ignores_unlabeled():
    kpts = np.array([[10, 20], [30, 60], [500, 500]], np.float32)
    vis = np.array([2, 1, 0])
    np.testing.assert_allclose(box_from_keypoints(kpts, vis), [7, 14, 26, 52], atol=1e-5)
    np.testing.assert_allclose(box_from_keypoints(kpts, vis, margin=0.0), [10, 20, 20, 40])
    # clipped to the image (w, h) = (32, 70): x1 = 33 -> 32, y1 = 66 stays
    np.testing.assert_allclose(box_from_keypoints(kpts, vis, image_size=(32, 70)), [7, 14, 25, 52], atol=1e-5)
    with pytest.raises(ValueError):
        box_from_keypoints(kpts, np.zeros(3))


def test_person_record_validates_and_freezes():
    rec = PersonRecord("a.jpg", [0, 0, 4, 4], np.zeros((14, 2)), np.full(14, 2), "lsp14", "x/1")
    assert rec.keypoints.dtype == np.float32 and rec.visibility.dtype == np.int8
    assert isinstance(rec.image_path, Path)
    with pytest.raises(ValueError):
        rec.keypoints[0, 0] = 1.0  # read-only
    with pytest.raises(ValueError):
        PersonRecord("a.jpg", [0, 0, 4, 4], np.zeros((17, 2)), np.full(17, 2), "lsp14", "x/2")
    with pytest.raises(ValueError):
        PersonRecord("a.jpg", [0, 0, 4, 4], np.zeros((14, 2)), None, "lsp14", "x/3")
    with pytest.raises(ValueError):
        PersonRecord("a.jpg", [0, 0, 4, 4], np.zeros((14, 2)), np.full(14, 3), "lsp14", "x/4")
    with pytest.raises(KeyError):
        PersonRecord("a.jpg", [0, 0, 4, 4], None, None, "nope", "x/5")


def test_default_data_root_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("POSELOOP_DATA", str(tmp_path))
    assert default_data_root() == tmp_path
    monkeypatch.delenv("POSELOOP_DATA")
    assert default_data_root().parts[-2:] == ("shared", "datasets")


# ---------------------------------------------------------------- COCO

# Hand count from fixtures/coco/test_coco.json: 4 images, 14 annotations, none crowd, all area > 0;
# 1202706 (image 40083) and 508900 (image 196141) have num_keypoints 0 -> 12 instances, in this order.
COCO_FIXTURE_IDS = [
    442619,
    198196,
    230195,
    460541,
    488308,
    1717641,
    1724673,
    437295,
    467657,
    531914,
    533949,
    543117,
]


@pytest.mark.data
def test_coco_fixture_filtering_and_order():
    ann = data_path("fixtures", "coco", "test_coco.json")
    records = load_coco_keypoints(ann, ann.parent)
    assert [r.record_id for r in records] == [f"coco/{i}" for i in COCO_FIXTURE_IDS]
    raw = {a["id"]: a for a in json.loads(ann.read_text())["annotations"]}
    for rec in records:
        a = raw[int(rec.record_id.split("/")[1])]
        flat = np.asarray(a["keypoints"], np.float32).reshape(17, 3)
        np.testing.assert_array_equal(rec.keypoints, flat[:, :2])
        np.testing.assert_array_equal(rec.visibility, flat[:, 2])
        np.testing.assert_allclose(rec.box, a["bbox"], rtol=1e-6)
        assert rec.image_id == a["image_id"] and rec.area == pytest.approx(a["area"])
        assert rec.schema == "coco17" and rec.image_path.exists()
        assert (rec.visibility > 0).sum() == a["num_keypoints"]


@pytest.mark.data
def test_coco_fixture_budget_is_deterministic_prefix():
    ann = data_path("fixtures", "coco", "test_coco.json")
    full = [r.record_id for r in load_coco_keypoints(ann, ann.parent)]
    for n in (0, 1, 5, 12, 100):
        first = [r.record_id for r in load_coco_keypoints(ann, ann.parent, max_instances=n)]
        assert first == full[:n]
        assert first == [r.record_id for r in load_coco_keypoints(ann, ann.parent, max_instances=n)]


def _coco_ann(ann_id, image_id, num_keypoints=2, area=100.0, iscrowd=0):
    kpts = [0.0] * 51
    for j in range(num_keypoints):
        kpts[3 * j : 3 * j + 3] = [10.0 + j, 20.0 + j, 2]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": 1,
        "iscrowd": iscrowd,
        "area": area,
        "bbox": [5, 5, 40, 60],
        "num_keypoints": num_keypoints,
        "keypoints": kpts,
    }


def test_coco_synthetic_filters_crowd_empty_and_zero_area(tmp_path):
    # images listed 20 then 10; annotations interleaved: order must follow the images list
    data = {
        "images": [
            {"id": 20, "file_name": "b.jpg", "width": 64, "height": 96},
            {"id": 10, "file_name": "a.jpg", "width": 64, "height": 96},
        ],
        "categories": [{"id": 1, "name": "person", "keypoints": [f"k{i}" for i in range(17)], "skeleton": []}],
        "annotations": [
            _coco_ann(1, 10),
            _coco_ann(2, 20),
            _coco_ann(3, 10, iscrowd=1),
            _coco_ann(4, 20, num_keypoints=0),
            _coco_ann(5, 10, area=0.0),
            _coco_ann(6, 20, num_keypoints=1),
            _coco_ann(7, 10),
        ],
    }
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    records = load_coco_keypoints(ann, tmp_path)
    assert [r.record_id for r in records] == ["coco/2", "coco/6", "coco/1", "coco/7"]
    assert records[0].image_path == tmp_path / "b.jpg"
    assert [r.record_id for r in load_coco_keypoints(ann, tmp_path, max_instances=3)] == ["coco/2", "coco/6", "coco/1"]


# ---------------------------------------------------------------- LSP


@pytest.fixture(scope="module")
def lsp_all() -> list[PersonRecord]:
    return load_lsp(data_path("lsp", "joints.mat").parent.parent)


@pytest.mark.data
def test_lsp_loads_1000_with_stable_ids(lsp_all):
    assert len(lsp_all) == 1000
    assert [r.record_id for r in lsp_all[:2]] == ["lsp/im0001", "lsp/im0002"]
    assert lsp_all[-1].record_id == "lsp/im1000"
    assert len({r.record_id for r in lsp_all}) == 1000
    assert all(r.schema == "lsp14" and r.image_path.name == r.record_id[4:] + ".jpg" for r in lsp_all)


@pytest.mark.data
def test_lsp_coordinates_are_zero_based_and_inside_images(lsp_all):
    raw = loadmat(str(DATA / "lsp" / "joints.mat"))["joints"]
    np.testing.assert_allclose(lsp_all[41].keypoints, raw[:2, :, 41].T - 1.0, atol=1e-4)
    for rec in lsp_all:
        w, h = read_image_size(rec.image_path)
        x, y = rec.keypoints[:, 0], rec.keypoints[:, 1]
        # image spans [-0.5, w - 0.5] in pixel-centre coordinates; 0.5 px slack for annotation clicks
        assert x.min() >= -1.0 and x.max() <= w and y.min() >= -1.0 and y.max() <= h, rec.record_id
        bx, by, bw, bh = rec.box
        assert bx >= 0 and by >= 0 and bx + bw <= w + 1e-3 and by + bh <= h + 1e-3 and bw > 0 and bh > 0


@pytest.mark.data
def test_lsp_flags_become_visibility(lsp_all):
    vis = np.stack([r.visibility for r in lsp_all])
    assert set(np.unique(vis)) == {1, 2}  # every joint labeled
    assert 0.06 < (vis == 1).mean() < 0.08  # ~7% occluded (flag 1), 990 of 14,000 in this release
    raw = loadmat(str(DATA / "lsp" / "joints.mat"))["joints"]
    np.testing.assert_array_equal(vis == 1, raw[2].T == 1)


@pytest.mark.data
def test_lsp_splits_and_budget(lsp_all):
    root = DATA
    train, val = lsp_split(root, "train"), lsp_split(root, "val")
    assert len(train) == 800 and len(val) == 200
    assert train[0].record_id == "lsp/im0001" and train[-1].record_id == "lsp/im0800"
    assert val[0].record_id == "lsp/im0801" and val[-1].record_id == "lsp/im1000"
    assert [r.record_id for r in lsp_split(root, "all")] == [r.record_id for r in lsp_all]
    budget = lsp_split(root, "train", label_budget=100)
    assert [r.record_id for r in budget] == [r.record_id for r in train[:100]]
    np.testing.assert_array_equal(budget[99].keypoints, train[99].keypoints)
    for bad in [
        dict(split="val", label_budget=10),
        dict(split="train", label_budget=0),
        dict(split="train", label_budget=801),
        dict(split="test"),
    ]:
        with pytest.raises(ValueError):
            lsp_split(root, **bad)


@pytest.mark.data
def test_lspet_unlabeled_boxes_inside_images():
    root = data_path("lspet", "boxes.json").parent.parent
    records = load_lspet_unlabeled(root)
    assert len(records) == 5000
    assert records[0].record_id == "lspet/im00001" and records[-1].record_id == "lspet/im05000"
    assert all(r.keypoints is None and r.visibility is None and r.schema == "lsp14" for r in records)
    for rec in records:
        w, h = read_image_size(rec.image_path)
        x, y, bw, bh = rec.box
        # boxes are rounded to 0.1 px; one (im01529) ends 0.1 px past the bottom edge
        assert bw > 0 and bh > 0 and x >= 0 and y >= 0 and x + bw <= w + 0.15 and y + bh <= h + 0.15, rec.record_id


# ---------------------------------------------------------------- MPII


@pytest.mark.data
def test_mpii_fixture():
    ann = data_path("fixtures", "mpii", "test_mpii.json")
    records = load_mpii(ann, ann.parent)
    raw = json.loads(ann.read_text())
    assert len(records) == len(raw) == 5
    assert len({r.record_id for r in records}) == 5
    for rec, entry in zip(records, raw):
        assert rec.schema == "mpii16" and rec.keypoints.shape == (16, 2) and rec.image_path.exists()
        labeled = np.asarray(entry["joints_vis"]) > 0
        np.testing.assert_array_equal(rec.visibility, np.where(labeled, 2, 0))
        np.testing.assert_allclose(rec.keypoints[labeled], np.asarray(entry["joints"])[labeled] - 1, atol=1e-3)
        assert (rec.keypoints[~labeled] == 0).all()
        side = entry["scale"] * 200
        cx, cy = np.asarray(entry["center"]) - 1
        np.testing.assert_allclose(rec.box, [cx - side / 2, cy - side / 2, side, side], rtol=1e-5)
        assert rec.head_size is None
    assert (records[2].visibility == 0).sum() == 2  # 051423444.jpg: both ankles unlabeled


# ---------------------------------------------------------------- image folders


@pytest.fixture()
def image_dir(tmp_path):
    sizes = {"b.png": (40, 30), "a.jpg": (20, 50), "c.JPEG": (33, 17)}  # (w, h), non-square
    for name, (w, h) in sizes.items():
        cv2.imwrite(str(tmp_path / name), np.zeros((h, w, 3), np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_image_folder_whole_image_default(image_dir):
    records = load_image_folder(image_dir)
    assert [r.image_path.name for r in records] == ["a.jpg", "b.png", "c.JPEG"]
    np.testing.assert_array_equal(records[0].box, [0, 0, 20, 50])
    np.testing.assert_array_equal(records[1].box, [0, 0, 40, 30])
    np.testing.assert_array_equal(records[2].box, [0, 0, 33, 17])
    assert all(r.keypoints is None and r.schema == "lsp14" for r in records)
    assert records[0].record_id == "images/a"


def test_image_folder_with_boxes_dict_and_json(image_dir, tmp_path_factory):
    boxes = {"b.png": [1, 2, 10, 12]}
    records = load_image_folder(image_dir, boxes=boxes, schema="coco17", id_prefix="up")
    np.testing.assert_array_equal(records[1].box, [1, 2, 10, 12])
    np.testing.assert_array_equal(records[0].box, [0, 0, 20, 50])  # no box -> whole image
    assert records[1].schema == "coco17" and records[1].record_id == "up/b"
    box_file = tmp_path_factory.mktemp("boxes") / "boxes.json"
    box_file.write_text(json.dumps({"format": "xywh pixels", "boxes": {"c.JPEG": [0.5, 0.5, 3, 4]}}))
    listed = load_image_folder([image_dir / "c.JPEG", image_dir / "a.jpg"], boxes=box_file)
    assert [r.image_path.name for r in listed] == ["c.JPEG", "a.jpg"]
    np.testing.assert_array_equal(listed[0].box, [0.5, 0.5, 3, 4])
    with pytest.raises(ValueError):
        load_image_folder(image_dir, boxes={"missing.jpg": [0, 0, 1, 1]})
    with pytest.raises(ValueError):
        load_image_folder(image_dir, boxes={"a.jpg": [0, 0, 0, 5]})
