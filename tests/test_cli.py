"""The `poseloop` commands end to end on real data: train → export (parity) → eval → predict (+ overlay PNG)."""

import json
from pathlib import Path

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
    assert found["image"] == {"width": width, "height": height, "id": None, "decoded_scale": 1.0}

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


# `poseloop predict SOURCE`: a file, a folder, a glob or a video (Ultralytics' `source=`)


def _bundled_model():
    from poseloop.workflows import default_model_path

    model = default_model_path()
    if model is None or not model.exists():
        pytest.skip("no bundled model under artifacts/")
    return model


def _json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_predict_source_mistakes_are_one_line_errors(tmp_path):
    """No such file, an empty folder, a pattern matching nothing, an unreadable video, --box with a folder and an
    --out that is a file: exit 2 with one `error:` line, before any model loads (no traceback)."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    image = tmp_path / "one.png"
    cv2.imwrite(str(image), np.full((40, 40, 3), 90, np.uint8))
    cases = [
        ([str(tmp_path / "missing.jpg")], "no such file or directory"),
        ([str(tmp_path / "empty")], "no images"),
        ([str(tmp_path / "*.jpg")], "no image or video matches"),
        ([str(tmp_path / "broken.mp4")], "cannot read video"),
        ([str(tmp_path), "--box", "1,1,10,10"], "--box applies to one image file"),
        ([str(image), "--out", str(tmp_path / "notes.txt")], "is a file, not a folder"),
        ([str(tmp_path), "--render", str(tmp_path / "overlay.png")], "go to a folder"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["predict", *args, "--model", str(tmp_path / "no_model.onnx")])
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.startswith("error: ") and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_predict_expands_a_quoted_glob(tmp_path, monkeypatch):
    """A quoted pattern is expanded by predict itself ('**' spans folders): one JSON line per match on stdout,
    sorted, each with its file and its number; the progress bar goes to stderr only."""
    monkeypatch.delenv("POSELOOP_DETECTOR_PATH", raising=False)
    model = _bundled_model()
    (tmp_path / "sub").mkdir()
    for name, size in (("b.jpg", (60, 80)), ("a.jpg", (50, 40)), ("sub/c.jpg", (30, 30)), ("d.png", (20, 20))):
        cv2.imwrite(str(tmp_path / name), np.full((*size, 3), 100, np.uint8))
    pattern = str(tmp_path / "**" / "*.jpg")
    result = runner.invoke(app, ["predict", pattern, "--model", str(model), "--detector", ""])
    assert result.exit_code == 0, result.output
    lines = _json_lines(result.stdout)
    assert [line["file"] for line in lines] == [str(tmp_path / n) for n in ("a.jpg", "b.jpg", "sub/c.jpg")]
    assert [line["image"]["id"] for line in lines] == [1, 2, 3]
    assert [line["persons"][0]["box"] for line in lines][:2] == [[0.0, 0.0, 40.0, 50.0], [0.0, 0.0, 80.0, 60.0]]
    assert all(line["boxes_from"] == "whole_image" and line["frame"] is None for line in lines)
    assert "3/3" in result.stderr  # tqdm
    limited = runner.invoke(app, ["predict", str(tmp_path / "*.jpg"), "--model", str(model), "--detector", ""])
    assert [line["file"] for line in _json_lines(limited.stdout)] == [str(tmp_path / n) for n in ("a.jpg", "b.jpg")]


@pytest.mark.integration  # real photos from the shared datasets
def test_predict_folder_writes_coco_results_and_renders(tmp_path, monkeypatch):
    """A folder of two photos and a broken JPEG: the broken one is skipped with its reason (stderr counts it,
    exit 0), results.json is COCO keypoint results that pycocotools loads against images.json, one overlay PNG
    per posed image; --recursive adds the subfolder's image."""
    from tests.data_paths import data_path

    monkeypatch.delenv("POSELOOP_DETECTOR_PATH", raising=False)
    model = _bundled_model()
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for name in ("basketball1.png", "messi5.jpg"):
        (folder / name).write_bytes(data_path("wild", name).read_bytes())
    (folder / "broken.jpg").write_bytes(data_path("wild", "messi5.jpg").read_bytes()[:300])  # truncated JPEG
    (folder / "notes.txt").write_text("not an image: ignored")
    cv2.imwrite(str(folder / "sub" / "flat.png"), np.full((50, 60, 3), 128, np.uint8))
    out = tmp_path / "pred"
    result = runner.invoke(
        app, ["predict", str(folder), "--model", str(model), "--out", str(out), "--render", str(out / "renders")]
    )
    assert result.exit_code == 0, result.output
    assert "skipped 1 of 3 inputs" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["images"] == 2 and summary["skipped"] == 1 and summary["persons"] >= 3

    meta = json.loads((out / "images.json").read_text())
    assert [(i["id"], i["file_name"]) for i in meta["images"]] == [
        (1, str(folder / "basketball1.png")),
        (3, str(folder / "messi5.jpg")),
    ]
    assert meta["images"][0]["width"] == 640 and meta["images"][0]["height"] == 480
    (skipped,) = meta["skipped"]
    assert skipped["id"] == 2 and skipped["file_name"] == str(folder / "broken.jpg") and "JPEG" in skipped["reason"]
    keypoints = meta["categories"][0]["keypoints"]
    results = json.loads((out / "results.json").read_text())
    assert len(results) == summary["persons"] and {r["image_id"] for r in results} == {1, 3}
    for r in results:
        assert r["category_id"] == 1 and len(r["keypoints"]) == 3 * len(keypoints) and 0 <= r["score"] <= 1
        assert len(r["bbox"]) == 4 and r["bbox"][2] > 0 and r["bbox"][3] > 0
        assert all(0 <= s <= 1 for s in r["keypoints"][2::3])

    from pycocotools.coco import COCO

    gt = COCO()
    gt.dataset = meta
    gt.createIndex()
    loaded = gt.loadRes(str(out / "results.json"))
    assert len(loaded.getAnnIds()) == len(results) and sorted(loaded.getImgIds()) == [1, 3]

    for name, size in (("basketball1", (480, 640)), ("messi5", (342, 548))):
        overlay = cv2.imread(str(out / "renders" / f"{name}.png"))
        assert overlay is not None and overlay.shape[:2] == size
        assert not np.array_equal(overlay, cv2.imread(str(folder / f"{name}.{'png' if name[0] == 'b' else 'jpg'}")))
    assert sorted(p.name for p in (out / "renders").iterdir()) == ["basketball1.png", "messi5.png"]

    deep = runner.invoke(app, ["predict", str(folder), "--recursive", "--model", str(model), "--limit", "4"])
    assert deep.exit_code == 0, deep.output
    lines = _json_lines(deep.stdout)
    assert [Path(line["file"]).name for line in lines] == ["basketball1.png", "broken.jpg", "messi5.jpg", "flat.png"]
    assert "skipped" in lines[1] and lines[3]["persons"] == []


@pytest.mark.integration  # the shared test video
def test_predict_video_every_nth_frame(tmp_path, monkeypatch):
    """A video: every 100th frame, 3 frames at most; images.json gives each id its frame, overlays are
    <video>_<frame>.png."""
    from tests.data_paths import data_path

    monkeypatch.delenv("POSELOOP_DETECTOR_PATH", raising=False)
    model = _bundled_model()
    video = data_path("wild", "vtest.avi")
    out = tmp_path / "video"
    args = ["predict", str(video), "--every", "100", "--limit", "3", "--model", str(model), "--out", str(out)]
    result = runner.invoke(app, [*args, "--render", str(out / "renders")])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "images.json").read_text())
    assert [(i["id"], i["frame"], i["file_name"]) for i in meta["images"]] == [
        (1, 0, str(video)),
        (2, 100, str(video)),
        (3, 200, str(video)),
    ]
    assert meta["images"][0]["width"] == 768 and meta["images"][0]["height"] == 576 and meta["skipped"] == []
    results = json.loads((out / "results.json").read_text())
    assert results and {r["image_id"] for r in results} <= {1, 2, 3}
    names = sorted(p.name for p in (out / "renders").iterdir())
    assert names == ["vtest_000000.png", "vtest_000100.png", "vtest_000200.png"]
    capture = cv2.VideoCapture(str(video))
    capture.set(cv2.CAP_PROP_POS_FRAMES, 100)
    ok, frame100 = capture.read()
    capture.release()
    overlay = cv2.imread(str(out / "renders" / "vtest_000100.png"))
    assert ok and overlay.shape == frame100.shape and not np.array_equal(overlay, frame100)
