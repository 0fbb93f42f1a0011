"""ONNX export: graph contract, metadata round trip, dynamic batch, PyTorch ↔ ONNX Runtime parity."""

from __future__ import annotations

import copy
import hashlib
import json

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import models.export as export_module
from models.codec import HeatmapCodec
from models.export import (
    HEATMAP_TOLERANCE,
    KEYPOINT_TOLERANCE_PX,
    ExportParityError,
    build_metadata,
    export_onnx,
)
from models.geometry import Size, normalize_crop, person_crop_affine, warp_image
from models.metadata import REQUIRED_KEYS, MetadataError, ModelMetadata
from models.schemas import COCO17, LSP14
from tests.model_fixtures import realistic_posenet as realistic_model
from training.datasets import load_lsp

INPUT = Size(96, 128)  # w, h: non-square on purpose
CODEC = HeatmapCodec.for_input(INPUT, 4, sigma=2.0, refinement="quarter")


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return realistic_model()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    """The default path: dynamo exporter, synthetic parity batch (~10 s on 2 cores, most of the budget)."""
    out = tmp_path_factory.mktemp("export") / "pose.onnx"
    report = export_onnx(
        model, CODEC, LSP14, out, version="test-1", trained_on="lsp:none", extra_metadata={"poseloop.note": "unit test"}
    )
    return report


@pytest.fixture(scope="module")
def session(exported) -> ort.InferenceSession:
    return ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])


def test_checker_opset_and_report(exported) -> None:
    proto = onnx.load(str(exported.path))
    onnx.checker.check_model(proto, full_check=True)
    assert exported.exporter == "dynamo"
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    assert opset == exported.opset >= 17
    data = exported.path.read_bytes()
    assert exported.sha256 == hashlib.sha256(data).hexdigest() and exported.size_bytes == len(data)
    record = json.loads(exported.record_path.read_text())
    assert record["sha256"] == exported.sha256 and record["metadata"]["poseloop.version"] == "test-1"
    assert not list(exported.path.parent.glob(".*.tmp"))  # atomic write left nothing behind


def test_graph_signature(session) -> None:
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type) == ("input", "tensor(float)")
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 128, 96]
    assert out.name == "heatmaps" and isinstance(out.shape[0], str) and out.shape[1:] == [14, 32, 24]


def test_metadata_contract_round_trips(exported, session, model) -> None:
    props = {p.key: p.value for p in onnx.load(str(exported.path)).metadata_props}
    assert set(REQUIRED_KEYS) <= set(props)
    assert json.loads(props["poseloop.keypoints"]) == list(LSP14.keypoints)
    assert props["poseloop.input_size"] == "128,96"  # H,W
    assert props["poseloop.note"] == "unit test"
    meta = ModelMetadata.from_onnx(exported.path)
    assert meta.schema == LSP14
    assert meta.input_size == INPUT and meta.heatmap_size == Size(24, 32)
    assert meta.mean == tuple(model.mean) and meta.std == tuple(model.std)
    assert (meta.heatmap_stride, meta.sigma, meta.padding, meta.decode) == (4, 2.0, 1.25, "quarter")
    assert (meta.version, meta.trained_on, meta.backbone, meta.head) == ("test-1", "lsp:none", "mobilenet_v2", "deconv")
    assert meta.codec() == CODEC
    # ORT's view of the same props parses identically (what the serving backend uses)
    assert ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map) == meta


@pytest.mark.parametrize("key", ["poseloop.mean", "poseloop.flip_pairs", "poseloop.padding"])
def test_broken_contract_names_the_key(exported, key) -> None:
    props = {p.key: p.value for p in onnx.load(str(exported.path)).metadata_props}
    with pytest.raises(MetadataError, match=key):
        ModelMetadata.from_props({k: v for k, v in props.items() if k != key})
    with pytest.raises(MetadataError, match=key):
        ModelMetadata.from_props({**props, key: "[1, 2"})


def test_extra_metadata_cannot_override_contract(model) -> None:
    with pytest.raises(ValueError, match="poseloop.mean"):
        build_metadata(model, CODEC, LSP14, version="v", trained_on="x", extra={"poseloop.mean": "[0, 0, 0]"})


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_dynamic_batch(session, model, batch) -> None:
    x = np.random.default_rng(batch).standard_normal((batch, 3, INPUT.h, INPUT.w)).astype(np.float32)
    got = session.run(["heatmaps"], {"input": x})[0]
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    assert got.shape == (batch, 14, 32, 24)
    assert np.abs(got - expected).max() <= HEATMAP_TOLERANCE


def test_synthetic_parity_figures(exported) -> None:
    """Always runs (no data needed): the report's parity is within limits and not vacuous."""
    assert 0 < exported.max_abs_diff <= HEATMAP_TOLERANCE
    assert exported.max_keypoint_diff_px <= KEYPOINT_TOLERANCE_PX
    assert exported.keypoints_compared > 100  # 9 crops x 14 joints, nearly all with a decidable peak


def lsp_crops(root, count: int, mean, std) -> list[np.ndarray]:
    """Normalised person crops of the first LSP images, as the training dataset makes them."""
    crops = []
    for record in load_lsp(root, range(count)):
        image = cv2.cvtColor(cv2.imread(str(record.image_path)), cv2.COLOR_BGR2RGB)
        affine = person_crop_affine(np.asarray(record.box), INPUT, 1.25)
        crops.append(normalize_crop(warp_image(image, affine, INPUT), mean, std))
    return crops


def test_parity_on_lsp_person_crops(model, tmp_path, data_root) -> None:
    crops = lsp_crops(data_root, 8, model.mean, model.std)
    report = export_onnx(
        model,
        CODEC,
        LSP14,
        tmp_path / "lsp.onnx",
        version="t",
        trained_on="t",
        parity_images=crops,
        exporter="torchscript",
    )
    assert report.exporter == "torchscript"
    assert report.max_abs_diff <= HEATMAP_TOLERANCE and report.max_keypoint_diff_px <= KEYPOINT_TOLERANCE_PX
    assert report.keypoints_compared > 100


def test_mismatching_onnx_raises_and_writes_nothing(model, tmp_path, monkeypatch) -> None:
    """Export a slightly different network than the one parity runs against: must be caught."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.head.final_layer.bias.add_(1e-3)  # a 10x-tolerance shift of every heatmap
    real_to_onnx = export_module._to_onnx
    monkeypatch.setattr(
        export_module, "_to_onnx", lambda _model, *args: real_to_onnx(copy.deepcopy(other).eval(), *args)
    )
    model.train()
    out = tmp_path / "bad.onnx"
    try:
        with pytest.raises(ExportParityError, match="heatmap"):
            export_onnx(model, CODEC, LSP14, out, version="t", trained_on="t", exporter="torchscript")
        assert model.training  # the caller's model is left as it was
    finally:
        model.eval()
    assert not out.exists() and not list(tmp_path.iterdir())


def test_rejects_inconsistent_inputs(model, tmp_path) -> None:
    with pytest.raises(ValueError, match="keypoints"):
        export_onnx(model, CODEC, COCO17, tmp_path / "x.onnx", version="t", trained_on="t")
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, CODEC, LSP14, tmp_path / "x.onnx", version="t", trained_on="t", opset=13)


def test_float16_storage_halves_the_file_and_keeps_float32_compute(model, exported, tmp_path) -> None:
    """weights="float16": float16 initializers + Casts; parity is exact against the rounded model, and the rounding
    itself changes heatmaps by a small, reported amount compared with the float32 export."""
    report = export_onnx(
        model,
        CODEC,
        LSP14,
        tmp_path / "half.onnx",
        version="test-half",
        trained_on="lsp:none",
        exporter="torchscript",
        weights="float16",
    )
    assert report.weights == "float16" and report.size_bytes < 0.55 * exported.size_bytes
    assert report.max_abs_diff <= 1e-4  # ONNX Runtime vs the rounded PyTorch model
    assert 0 < report.rounding_max_abs_diff < 0.05  # outputs have std 0.3 (keypoints of a random net are argmax
    # noise; the bundled model's test checks keypoints on a trained one)
    proto = onnx.load(str(report.path))
    big = [i for i in proto.graph.initializer if int(np.prod(i.dims)) >= 16]
    assert big and all(i.data_type == onnx.TensorProto.FLOAT16 for i in big)
    half = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    full = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((2, 3, INPUT.h, INPUT.w)).astype(np.float32)
    out_half, out_full = half.run(None, {"input": x})[0], full.run(None, {"input": x})[0]
    assert out_half.dtype == np.float32 and np.abs(out_half - out_full).max() < 0.05
    assert json.loads(report.record_path.read_text())["weights"]["storage"] == "float16"


def test_float16_storage_refuses_weights_that_are_not_float16_exact(exported) -> None:
    proto = onnx.load(str(exported.path))
    with pytest.raises(ValueError, match="not float16-exact"):
        export_module.store_initializers_as_float16(proto)
