"""The `poseloop` commands end to end on real data: train → export (parity) → eval → predict (+ overlay PNG)."""

import json

import cv2
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
