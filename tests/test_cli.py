"""The `poseloop` commands end to end on real data: train → export (parity) → eval → predict (+ overlay PNG)."""

import json

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from poseloop.cli import app

runner = CliRunner()


def _invoke(args):
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _json_tail(output: str) -> dict:
    """The JSON object a command prints last (progress bars may come before it)."""
    return json.loads(output[output.index("{") :])


def test_train_export_eval_predict(tmp_path, data_root):
    out = _invoke(
        [
            "train",
            "--config",
            "configs/quick.yaml",
            "--set",
            f"output_dir={tmp_path}",
            "--set",
            "name=cli",
            "--set",
            "optim.iterations=4",
            "--set",
            "optim.batch_size=4",
            "--set",
            "schedule.val_every=4",
            "--set",
            "model.pretrained=false",
        ]
    )
    summary = _json_tail(out)
    onnx_path = tmp_path / "cli" / "model.onnx"
    assert summary["onnx"] == str(onnx_path) and onnx_path.exists()
    record = json.loads(onnx_path.with_suffix(".json").read_text())
    assert record["parity"]["real_images"] and record["parity"]["max_abs_diff"] <= 1e-4
    assert record["metadata"]["poseloop.trained_on"].startswith("LSP")

    metrics = _json_tail(_invoke(["eval", "--checkpoint", str(tmp_path / "cli" / "best.pt"), "--no-flip"]))
    assert metrics["persons"] == 200 and 0 <= metrics["pck_limbs"] <= 100 and "pck/head_top" in metrics
    # the 800 - 64 labeled records beyond configs/quick.yaml's budget, with how far its peaks can be trusted
    unseen = _json_tail(
        _invoke(
            [
                "eval",
                "--checkpoint",
                str(tmp_path / "cli" / "best.pt"),
                "--no-flip",
                "--split",
                "unseen",
                "--reliability",
            ]
        )
    )
    assert unseen["persons"] == 736 and unseen["reliability"]["joints"] == 736 * 12
    assert unseen["reliability"]["pck"] == pytest.approx(unseen["pck_limbs"])
    bad = runner.invoke(app, ["eval", "--checkpoint", str(tmp_path / "cli" / "best.pt"), "--split", "test"])
    assert bad.exit_code == 2 and "split must be val, train or unseen" in bad.output

    image = data_root / "lsp" / "images" / "im0801.jpg"
    render = tmp_path / "overlay.png"
    pred = _json_tail(
        _invoke(["predict", str(image), "--model", str(onnx_path), "--box", "10,10,80,120", "--render", str(render)])
    )
    person = pred["persons"][0]
    assert pred["model_version"] == "cli@4" and person["box"] == [10.0, 10.0, 80.0, 120.0]
    assert [k["name"] for k in person["keypoints"]][:2] == ["right_ankle", "right_knee"]
    assert cv2.imread(str(render)) is not None


@pytest.mark.integration  # a real photo from the shared datasets
def test_predict_detects_people_like_the_api(tmp_path, monkeypatch):
    """`poseloop predict` without --box runs the person detector (as /v1/pose does): a real photo of two players
    gives at least two detected persons, a flat image none (`persons: []`); --box is used as given, and refused
    when it lies outside the image; --detector '' poses the whole image."""
    from poseloop.workflows import default_model_path
    from tests.data_paths import data_path

    monkeypatch.delenv("POSELOOP_DETECTOR_PATH", raising=False)
    model = default_model_path()
    if model is None or not model.exists():
        pytest.skip("no bundled model under artifacts/")
    photo = data_path("wild", "basketball1.png")
    found = _json_tail(_invoke(["predict", str(photo), "--model", str(model)]))
    assert found["boxes_from"] == "detector" and len(found["persons"]) >= 2
    person = found["persons"][0]
    assert 0.35 <= person["det_score"] <= 1 and person["box"][2] > 10 and person["box"][3] > 10
    assert found["options"] == {"max_persons": 20, "det_threshold": 0.35, "kpt_threshold": 0.3, "flip": False}
    height, width = cv2.imread(str(photo)).shape[:2]
    assert found["image"] == {"width": width, "height": height, "id": None}

    flat = tmp_path / "flat.png"
    cv2.imwrite(str(flat), np.full((240, 320, 3), 128, np.uint8))
    render = tmp_path / "none.png"
    nobody = _json_tail(_invoke(["predict", str(flat), "--model", str(model), "--render", str(render)]))
    assert nobody["boxes_from"] == "detector" and nobody["persons"] == []
    assert np.array_equal(cv2.imread(str(render)), cv2.imread(str(flat)))  # nothing drawn

    given = _json_tail(_invoke(["predict", str(flat), "--model", str(model), "--boxes", "10,20,100,200"]))
    assert given["boxes_from"] == "request" and [p["box"] for p in given["persons"]] == [[10.0, 20.0, 100.0, 200.0]]
    assert given["persons"][0]["det_score"] is None
    whole = _json_tail(_invoke(["predict", str(flat), "--model", str(model), "--detector", ""]))
    assert whole["boxes_from"] == "whole_image" and [p["box"] for p in whole["persons"]] == [[0.0, 0.0, 320.0, 240.0]]

    outside = runner.invoke(app, ["predict", str(flat), "--model", str(model), "--box", "400,10,50,50"])
    assert outside.exit_code == 2 and "box_outside_image" in outside.output
    bad = runner.invoke(app, ["predict", str(flat), "--model", str(model), "--det-threshold", "1.5"])
    assert bad.exit_code == 2 and "det_threshold" in bad.output
