"""Top-down samples: image crop and heatmap targets agree; flips swap joints; evaluation crops are deterministic."""

import numpy as np
import torch

from models.codec import HeatmapCodec
from models.geometry import Size, transform_points
from models.schemas import LSP14
from training.config import AugmentConfig
from training.datasets.lsp import lsp_split
from training.datasets.records import PersonRecord
from training.datasets.topdown import TopDownDataset

CODEC = HeatmapCodec.for_input(Size(96, 128))
MEAN, STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # identity normalisation: crops stay in 0–255


def _synthetic_record(tmp_path) -> PersonRecord:
    """A black image with one coloured dot per joint (joint j is red = 10·(j+1)), so crops can be checked."""
    import cv2

    rng = np.random.default_rng(0)
    img = np.zeros((240, 200, 3), np.uint8)
    kpts = rng.uniform([60, 50], [140, 190], (14, 2)).astype(np.float32)
    for j, (x, y) in enumerate(kpts):
        cv2.circle(img, (int(round(x)), int(round(y))), 2, (0, 0, 10 * (j + 1)), -1)  # BGR: red channel
    path = tmp_path / "dots.png"
    cv2.imwrite(str(path), img)
    box = np.array([50, 40, 100, 160], np.float32)
    return PersonRecord(path, box, np.round(kpts), np.full(14, 2, np.int8), "lsp14", "synthetic/0")


def test_augmented_crop_and_targets_agree(tmp_path):
    record = _synthetic_record(tmp_path)
    ds = TopDownDataset([record], CODEC, MEAN, STD, augment=AugmentConfig(rotation_prob=1.0, flip_prob=0.5))
    flipped_seen = 0
    for epoch in range(6):
        ds.set_epoch(epoch)
        item = ds[0]
        img = item["image"].numpy()  # (3, H, W), RGB
        flipped_seen += ds.crop_params(0).flip
        pred, _ = CODEC.decode(item["heatmaps"].numpy()[None], "dark")
        for j in range(14):
            if item["target_weight"][j] == 0:
                continue
            x, y = pred[0, j]
            # the dot drawn for the joint that now *bears label j* sits where its target peaks
            original = LSP14.flip_index[j] if ds.crop_params(0).flip else j
            xi, yi = int(round(x)), int(round(y))
            patch = img[0, max(yi - 2, 0) : yi + 3, max(xi - 2, 0) : xi + 3]
            assert np.abs(patch.max() - 10 * (original + 1)) < 6, (epoch, j)
    assert 0 < flipped_seen < 6


def test_eval_crop_is_deterministic_and_keypoints_follow_affine(tmp_path):
    record = _synthetic_record(tmp_path)
    ds = TopDownDataset([record], CODEC, MEAN, STD, augment=None)
    a, b = ds[0], ds[0]
    assert torch.equal(a["image"], b["image"])
    expected = transform_points(record.keypoints, a["affine"].numpy())
    assert np.allclose(a["keypoints"].numpy(), expected, atol=1e-3)
    assert a["image"].shape == (3, 128, 96) and a["heatmaps"].shape == (14, 32, 24)


def test_lsp_targets_on_real_data(data_root):
    records = lsp_split(data_root, "train", label_budget=4)
    ds = TopDownDataset(records, CODEC, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375), augment=AugmentConfig())
    item = ds[3]
    assert item["target_weight"].sum() >= 10  # most LSP joints land inside the padded crop
    assert torch.isfinite(item["image"]).all()


def test_box_shift_moves_the_crop_centre_within_its_bound_and_is_off_by_default():
    from models.geometry import invert_affine
    from training.datasets.topdown import CropParams, sample_affine

    base = AugmentConfig(rotation_prob=0.0, flip_prob=0.0, scale_factor=0.0)
    assert CropParams.sample(np.random.default_rng(3), base).shift == (0.0, 0.0)
    shifted = base.model_copy(update={"shift_factor": 0.2})
    box, out = np.array([100, 50, 60, 120], np.float32), Size(48, 64)
    region = np.array([120 * 0.75, 120]) * 1.25  # the box grown to the 3:4 aspect, padded
    offsets = []
    for seed in range(50):
        params = CropParams.sample(np.random.default_rng(seed), shifted)
        affine = sample_affine(box, out, 1.25, params)
        centre = transform_points(np.array([out.w / 2, out.h / 2]), invert_affine(affine))
        offsets.append((centre - np.array([130, 110])) / region)
    offsets = np.abs(np.array(offsets))
    assert offsets.max() <= 0.2 + 1e-4 and offsets.max() > 0.1  # moved, and never further than the bound
