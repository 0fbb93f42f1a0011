"""`poseloop bench compare` on three real LSP validation persons with the real models (skips without the data)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from poseloop.bench.compare import (
    DEFAULT_MODELS,
    PROTOCOLS,
    SECTION,
    load_pose_model,
    run_compare,
    score_protocol,
    write_section,
)
from training.datasets.lsp import lsp_split
from training.datasets.topdown import read_rgb


@pytest.fixture(scope="module")
def val3(data_root):
    for path in DEFAULT_MODELS:
        if not path.exists():
            pytest.skip(f"{path} not found (bundled artifacts are needed)")
    return lsp_split(data_root, "val")[:3]


@pytest.fixture(scope="module")
def record(val3, data_root):
    return run_compare(val3, DEFAULT_MODELS, threads=1, coco_root=data_root / "fixtures" / "coco")


def test_record_has_every_model_and_protocol(record):
    assert record["persons"] == 3
    assert [row["schema"] for row in record["rows"]] == ["lsp14", "coco17", "coco17"]
    for row in record["rows"]:
        for protocol in (*PROTOCOLS, "detector_best_iou"):
            result = row[protocol]
            assert 0.0 <= result["pck_limbs"] <= 100.0
            assert len(result["per_person_correct"]) == 3
            assert all(0 <= c <= 12 for c in result["per_person_correct"])
            assert result["pck_limbs"] == pytest.approx(100.0 * sum(result["per_person_correct"]) / 36)
        assert row["ms_per_person"] > 0
    lsp_row, thunder, _ = record["rows"]
    assert lsp_row["coco_fixtures"] is None  # OKS AP needs COCO-17 keypoints
    assert 0.0 <= thunder["coco_fixtures"]["AP"] <= 100.0
    assert thunder["tight"]["pck_limbs"] >= 50.0  # a real model on tight boxes, not noise
    assert json.loads(json.dumps(record)) == record


def test_tight_box_beats_a_wrong_box(val3):
    images = [read_rgb(r.image_path) for r in val3]
    for path in DEFAULT_MODELS[:2]:  # the PoseLoop model and a MoveNet
        model = load_pose_model(path, threads=1)
        tight = [np.asarray(r.box, np.float64) for r in val3]
        # the same-size box moved one box width away: mostly background, the person at its edge or outside
        wrong = [b + np.array([b[2], 0.5 * b[3], 0, 0]) for b in tight]
        tight_pck = score_protocol(model, val3, images, tight)[0]["pck_limbs"]
        wrong_pck = score_protocol(model, val3, images, wrong)[0]["pck_limbs"]
        assert tight_pck >= wrong_pck
        assert tight_pck > wrong_pck or tight_pck == 0.0


def test_no_detection_counts_every_joint_wrong(val3):
    model = load_pose_model(DEFAULT_MODELS[2], threads=1)
    images = [read_rgb(r.image_path) for r in val3]
    result, times = score_protocol(model, val3, images, [None, None, None])
    assert result["pck_limbs"] == 0.0 and result["per_person_correct"] == [0, 0, 0] and times == []


def test_section_is_written(record, tmp_path):
    out = tmp_path / "benchmarks.md"
    out.write_text("# PoseLoop benchmarks\n\n## Other\n\nkept\n")
    write_section(record, out, "poseloop bench compare --limit 3")
    text = out.read_text()
    assert f"## {SECTION}" in text and "## Other\n\nkept" in text
    assert "| lsp14-mbv2-128x96/v1 | lsp14 |" in text and "| movenet-thunder | coco17 |" in text
