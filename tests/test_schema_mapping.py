"""A model in another keypoint schema than its dataset (LSP labels → a COCO-17 model): labels mapped by joint name,
face joints at weight 0, validation as LSP PCK on the shared joints, and the schema carried by the export."""

from pathlib import Path

import numpy as np
import pytest

from models.schemas import COCO17, LSP14
from training.config import load_config
from training.data import build_splits, remap_record
from training.datasets.records import PersonRecord
from training.evaluator import _in_lsp14

COCO_OVERRIDES = ["data.keypoint_schema=coco17", "model.num_keypoints=17"]


def _lsp_record() -> PersonRecord:
    keypoints = np.arange(28, dtype=np.float32).reshape(14, 2)
    return PersonRecord(
        Path("x.jpg"), np.array([0, 0, 50, 80], np.float32), keypoints, np.full(14, 2, np.int8), "lsp14", "lsp/test"
    )


def test_remapped_labels_keep_every_shared_joint_and_zero_weight_the_rest():
    record = _lsp_record()
    coco = remap_record(record, "coco17")
    assert coco.schema == "coco17" and coco.keypoints.shape == (17, 2)
    for name in COCO17.keypoints:
        j = COCO17.index(name)
        if name in LSP14.keypoints:
            assert coco.visibility[j] == 2
            np.testing.assert_array_equal(coco.keypoints[j], record.keypoints[LSP14.index(name)])
        else:  # the face: LSP has no such joint
            assert coco.visibility[j] == 0
    assert int((coco.visibility > 0).sum()) == 12
    assert remap_record(record, "lsp14") is record


def test_lsp_pck_of_a_coco_model_counts_only_the_shared_joints():
    record = _lsp_record()
    coco = remap_record(record, "coco17")
    gt = coco.keypoints[None].astype(np.float64)
    pred = gt.copy()
    pred[0, COCO17.index("left_wrist")] += 1000.0  # one wrong limb joint
    pred[0, COCO17.index("nose")] += 1000.0  # a face joint: no LSP label, never counted
    back_pred, back_gt, mask = _in_lsp14("coco17", pred, gt)
    assert back_pred.shape == (1, 14, 2) and mask.sum() == 12
    assert not mask[0, LSP14.index("neck")] and not mask[0, LSP14.index("head_top")]
    np.testing.assert_array_equal(back_gt[0, mask[0]], record.keypoints[mask[0]])
    from training.evaluation import lsp_pck

    result = lsp_pck(back_pred, back_gt, mask=mask)
    assert result.subset["limbs"] == pytest.approx(100 * 11 / 12)


def test_the_head_must_match_the_schema():
    with pytest.raises(ValueError, match="num_keypoints is 14 but schema coco17 has 17"):
        load_config("configs/quick.yaml", ["data.keypoint_schema=coco17"])


def test_a_coco17_model_trains_on_lsp_and_exports_its_schema(tmp_path, data_root):
    from models.metadata import ModelMetadata
    from training.checkpoints import export_checkpoint
    from training.engine import Trainer

    cfg = load_config(
        "configs/quick.yaml",
        [
            *COCO_OVERRIDES,
            f"output_dir={tmp_path}",
            "name=coco",
            "model.pretrained=false",
            "data.input_h=64",
            "data.input_w=48",
            "data.label_budget=8",
            "optim.batch_size=4",
            "optim.iterations=2",
            "schedule.val_every=2",
        ],
    )
    splits = build_splits(cfg.data)
    assert splits.schema == "coco17" and {r.schema for r in splits.train + splits.val} == {"coco17"}
    result = Trainer(cfg).fit(progress=False)
    rows = [line for line in (result.run_dir / "metrics.jsonl").read_text().splitlines() if "val/pck_limbs" in line]
    assert rows, "validation ran"
    assert "val/pck/neck" not in rows[-1] and "NaN" not in rows[-1]  # COCO-17 has no neck: not scored
    assert "val/pck/left_wrist" in rows[-1]
    meta = ModelMetadata.from_onnx(
        export_checkpoint(result.run_dir / "best.pt", tmp_path / "coco.onnx", version="c").path
    )
    assert meta.schema.name == "coco17" and meta.schema.num_keypoints == 17
