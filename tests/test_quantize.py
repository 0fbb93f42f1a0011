"""Static INT8 quantisation (poseloop.quantize) of the bundled LSP-14 model, calibrated on real LSP crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from models.metadata import ModelMetadata
from poseloop.quantize import (
    WEIGHTS_KEY,
    WEIGHTS_VALUE,
    QuantizeError,
    calibration_records,
    count_ops,
    model_kind,
    quantize_model,
)
from serving.backends.onnxruntime import OnnxRuntimeBackend
from serving.pipeline import PosePipeline
from training.datasets.lsp import lsp_split
from training.datasets.topdown import read_rgb

REPO = Path(__file__).resolve().parents[1]
POSE = REPO / "artifacts" / "lsp14-mbv2-128x96" / "v1" / "model.onnx"
MOVENET = REPO / "artifacts" / "teachers" / "movenet-lightning" / "model.onnx"


@pytest.fixture(scope="module")
def quantized(data_root, tmp_path_factory):
    if not POSE.exists():
        pytest.skip(f"{POSE} not found")
    out = tmp_path_factory.mktemp("int8") / "model-int8.onnx"
    info = quantize_model(POSE, out, data_root, calibration_images=16)
    return out, info


def test_output_is_a_valid_qdq_model_with_the_contract(quantized):
    out, info = quantized
    onnx.checker.check_model(onnx.load(str(out)))
    ops = count_ops(out)
    assert ops.get("QuantizeLinear", 0) > 10 and ops.get("DequantizeLinear", 0) > 10
    source = {p.key: p.value for p in onnx.load(str(POSE), load_external_data=False).metadata_props}
    props = dict(ModelMetadata.from_onnx(out).props)
    assert props[WEIGHTS_KEY] == WEIGHTS_VALUE
    assert {k: props[k] for k in source} == source  # every key of the fp32 contract, unchanged
    assert info["calibration_images"] == 16 and info["format"] == "QDQ"


def test_keypoints_stay_close_to_fp32_on_real_crops(quantized, data_root):
    out, _ = quantized
    fp32, int8 = OnnxRuntimeBackend(POSE, intra_op_threads=1), OnnxRuntimeBackend(out, intra_op_threads=1)
    pipeline = PosePipeline(fp32)  # the serving backend loads the INT8 file: the contract holds
    crops = np.concatenate(
        [
            pipeline.crop(read_rgb(r.image_path), np.asarray(r.box, np.float64)[None], False).crops
            for r in lsp_split(data_root, "val")[:4]
        ]
    )
    a, _ = pipeline.codec.decode(fp32.infer(crops))
    b, _ = pipeline.codec.decode(int8.infer(crops))
    distance = np.linalg.norm(a - b, axis=-1)  # input pixels of the 128×96 crop
    assert np.median(distance) < 1.5
    assert np.mean(distance < 3.0) >= 0.85


def test_calibration_never_uses_validation_images(data_root):
    ids = [r.record_id for r in calibration_records(data_root, 800)]
    assert len(ids) == 800 and ids[0] == "lsp/im0001" and ids[-1] == "lsp/im0800"
    spread = [r.record_id for r in calibration_records(data_root, 5)]
    assert spread == ["lsp/im0001", "lsp/im0201", "lsp/im0401", "lsp/im0600", "lsp/im0800"]


def test_rejects_models_it_cannot_calibrate(tmp_path, data_root):
    if MOVENET.exists():
        with pytest.raises(QuantizeError, match="neither"):
            model_kind(MOVENET)
    with pytest.raises(QuantizeError, match="differ"):
        quantize_model(POSE, POSE, data_root, 4)


def _pad_maxpool_graph(pad_value: float) -> onnx.ModelProto:
    """input → Pad(constant pad_value) → MaxPool → Conv: NanoDet's stem shape, as a tiny graph."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
        numpy_helper.from_array(np.array(pad_value, np.float32), "value"),
        numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w"),
    ]
    nodes = [
        helper.make_node("Pad", ["input", "pads", "value"], ["padded"], name="pad"),
        helper.make_node("MaxPool", ["padded"], ["pooled"], name="pool", kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("Conv", ["pooled", "w"], ["out"], name="conv"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2, 4, 4])],
        inits,
    )
    return helper.make_model(graph)


def test_minus_infinity_padding_stays_float():
    from poseloop.quantize import excluded_nodes, non_finite_pads

    assert non_finite_pads(_pad_maxpool_graph(float("-inf"))) == ["pad", "pool"]
    assert non_finite_pads(_pad_maxpool_graph(0.0)) == []
    assert excluded_nodes(_pad_maxpool_graph(0.0), "last") == ["conv"]
    assert excluded_nodes(_pad_maxpool_graph(float("-inf")), "none") == ["pad", "pool"]
    assert excluded_nodes(_pad_maxpool_graph(0.0), "head+stem") == ["conv", "pad"]  # + the node reading the input


def test_non_finite_scales_are_refused():
    from onnx import TensorProto, helper, numpy_helper

    from poseloop.quantize import check_scales

    def qdq(scale: float) -> onnx.ModelProto:
        inits = [
            numpy_helper.from_array(np.array(scale, np.float32), "s"),
            numpy_helper.from_array(np.array(0, np.uint8), "z"),
        ]
        nodes = [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq"),
        ]
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
        return helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits))

    check_scales(qdq(0.1))
    with pytest.raises(QuantizeError, match="not finite"):
        check_scales(qdq(float("inf")))


def test_detector_int8_boxes_match_fp32(data_root, tmp_path):
    from poseloop.bench.compare import DETECTOR, xywh_iou
    from serving.backends.detector import embedded_detector

    if not DETECTOR.exists():
        pytest.skip(f"{DETECTOR} not found")
    out = tmp_path / "detector-int8.onnx"
    info = quantize_model(DETECTOR, out, data_root, calibration_images=4)
    assert info["kind"] == "detector" and len(info["excluded_nodes"]) == 2  # the −inf Pad and its MaxPool
    fp32, int8 = embedded_detector(DETECTOR, 1), embedded_detector(out, 1)
    for record in lsp_split(data_root, "val")[1:4]:  # im0802–0804: each has a person at ≥ 0.35
        image = read_rgb(record.image_path)
        a, b = fp32.detect(image, 0.35, 5), int8.detect(image, 0.35, 5)
        assert len(a) and len(b)
        assert xywh_iou(a.boxes[0], b.boxes[:1])[0] > 0.8


def test_cli_refuses_bad_options_and_overwriting(data_root):
    from typer.testing import CliRunner

    from poseloop.cli import app

    runner = CliRunner()
    bad = runner.invoke(app, ["quantize", "--model", str(POSE), "--out", "x.onnx", "--exclude", "everything"])
    assert bad.exit_code == 2 and "--exclude" in bad.output
    same = runner.invoke(app, ["quantize", "--model", str(POSE), "--out", str(POSE)])
    assert same.exit_code == 1 and "differ" in same.output
