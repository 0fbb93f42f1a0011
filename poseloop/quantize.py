"""Static INT8 quantisation (QDQ) of a PoseLoop pose ONNX or the NanoDet person detector, calibrated on real
LSP training images (im0001–0800) prepared exactly as serving prepares them.

    poseloop quantize --model X.onnx --out Y.onnx [--calibration-images N] [--exclude none|last|head|head+stem]
                      [--calibration minmax|percentile|entropy]

- Pose model (PoseLoop metadata contract): the calibration inputs are `serving.pipeline.PosePipeline.crop` of
  each image's person box (the LSP GT keypoint box; crop = metadata padding, warp, mean/std), one crop per image,
  no flip: the float32 (1, 3, H, W) tensors the backend receives.
- Detector (NanoDet-g 416 I/O, models.detection): `detector_input` of each whole image (letterbox, BGR, mean/std).
Images are spread evenly over im0001–0800 (deterministic). The graph first goes through onnxruntime's
`quant_pre_process` (shape inference + graph optimisation), then `quantize_static`: QDQ format, per-channel
int8 weights in a 7-bit range (`reduce_range`, exact on CPUs without VNNI too; `--full-range` opts out), uint8
activations by default.
`exclude` keeps nodes in float: `last` = the node producing the model output (the heatmap conv), `head` = that
plus every ConvTranspose (the deconv head, whose QDQ form bought no speed here: docs/benchmarks.md),
`head+stem` = that plus the node reading the graph input (the first conv). Calibration: MinMax, Percentile
(99.999 %, clips activation outliers) or Entropy.
The output keeps every `metadata_props` entry of the input and adds
`poseloop.weights = int8-qdq` and `poseloop.quantization` (JSON: settings, calibration images, source sha256).
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from core.fileio import atomic_write_bytes
from models.detection import NANODET_G_416, detector_input
from models.metadata import MetadataError, ModelMetadata
from serving.backends.onnxruntime import OnnxRuntimeBackend
from serving.pipeline import PosePipeline
from training.datasets.lsp import LSP_TRAIN, load_lsp
from training.datasets.records import PersonRecord
from training.datasets.topdown import read_rgb
from training.distill.members import file_sha256

WEIGHTS_KEY = "poseloop.weights"
WEIGHTS_VALUE = "int8-qdq"
Exclude = Literal["none", "last", "head", "head+stem"]
EXCLUDE_CHOICES: tuple[Exclude, ...] = ("none", "last", "head", "head+stem")
Activations = Literal["uint8", "int8"]
Calibration = Literal["minmax", "percentile", "entropy"]
ModelKind = Literal["pose", "detector"]


class QuantizeError(ValueError):
    """The model is neither a PoseLoop pose ONNX nor a NanoDet-g 416 detector, or calibration failed."""


def model_kind(path: str | Path) -> ModelKind:
    """`pose` (PoseLoop metadata contract) or `detector` (NanoDet-g 416 I/O); QuantizeError otherwise."""
    try:
        ModelMetadata.from_onnx(path)
        return "pose"
    except MetadataError:
        pass
    graph = onnx.load(str(path), load_external_data=False).graph
    inputs = {i.name: tuple(d.dim_value for d in i.type.tensor_type.shape.dim) for i in graph.input}
    if inputs == {NANODET_G_416.input_name: NANODET_G_416.input_shape}:
        return "detector"
    raise QuantizeError(f"{path}: neither a PoseLoop pose ONNX (metadata contract) nor the NanoDet-g 416 detector")


def calibration_records(root: str | Path, count: int) -> list[PersonRecord]:
    """`count` LSP training persons spread evenly over im0001–0800 (never the validation images)."""
    if not 1 <= count <= len(LSP_TRAIN):
        raise QuantizeError(f"calibration images must be in [1, {len(LSP_TRAIN)}], got {count}")
    positions = np.linspace(LSP_TRAIN.start, LSP_TRAIN.stop - 1, count).round().astype(int)
    return load_lsp(root, sorted(set(positions.tolist())))


def pose_inputs(model: str | Path, records: Sequence[PersonRecord]) -> Iterator[np.ndarray]:
    """(1, 3, H, W) float32 crops of each record's box, prepared by the serving pipeline itself."""
    with OnnxRuntimeBackend(model, intra_op_threads=1) as backend:
        pipeline = PosePipeline(backend)
        for record in records:
            image = read_rgb(record.image_path)
            yield pipeline.crop(image, np.asarray(record.box, np.float64)[None], flip=False).crops


def detector_inputs(records: Sequence[PersonRecord]) -> Iterator[np.ndarray]:
    """(1, 3, 416, 416) float32 letterboxed whole images, as serving.detection.PersonDetector feeds them."""
    for record in records:
        yield detector_input(read_rgb(record.image_path), NANODET_G_416)[0]


class ArrayReader:
    """onnxruntime CalibrationDataReader over an iterator of input tensors (one feed per tensor)."""

    def __init__(self, input_name: str, tensors: Iterator[np.ndarray]) -> None:
        self.input_name, self.tensors, self.count = input_name, tensors, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        tensor = next(self.tensors, None)
        if tensor is None:
            return None
        self.count += 1
        return {self.input_name: np.ascontiguousarray(tensor, np.float32)}


def non_finite_pads(model: onnx.ModelProto) -> list[str]:
    """Pad nodes with a non-finite constant (NanoDet pads with −inf before its MaxPool) and their consumers.

    An activation range of −inf gives a NaN scale, so these stay float; −inf padding is exact only in float."""
    from onnx import numpy_helper

    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    pads = [
        n
        for n in model.graph.node
        if n.op_type == "Pad" and len(n.input) > 2 and n.input[2] in constants
        if not np.all(np.isfinite(constants[n.input[2]]))
    ]
    padded = {out for n in pads for out in n.output}
    return [n.name for n in pads] + [n.name for n in model.graph.node if padded & set(n.input)]


def excluded_nodes(model: onnx.ModelProto, exclude: Exclude) -> list[str]:
    """Names of the nodes kept in float: always `non_finite_pads`, plus what `exclude` names (module docstring)."""
    names = non_finite_pads(model)
    outputs = {o.name for o in model.graph.output}
    if exclude != "none":
        names += [n.name for n in model.graph.node if outputs & set(n.output)]
    if exclude in ("head", "head+stem"):
        names += [n.name for n in model.graph.node if n.op_type == "ConvTranspose"]
    if exclude == "head+stem":
        inputs = {i.name for i in model.graph.input}
        names += [n.name for n in model.graph.node if inputs & set(n.input)]
    return sorted(set(names))


def quantize_model(
    model: str | Path,
    out: str | Path,
    data_root: str | Path,
    calibration_images: int = 200,
    exclude: Exclude = "none",
    per_channel: bool = True,
    activations: Activations = "uint8",
    calibration: Calibration = "minmax",
    reduce_range: bool = True,
) -> dict[str, Any]:
    """Write the INT8 QDQ model to `out`; returns what `poseloop.quantization` records.

    reduce_range: 7-bit weights. x86 CPUs without VNNI (AVX2 only, e.g. this project's AMD EPYC CI box) run
    onnxruntime's u8×s8 products with VPMADDUBSW, whose int16 pair sums saturate with full-range weights: there
    the bundled model's INT8 keypoints moved by a median 2.9 crop px (full range) against 0.6 px (7-bit) on the
    same 16 crops. The file must be right on whatever CPU serves it, so 7-bit is the default."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model, out = Path(model), Path(out)
    if model.resolve() == out.resolve():
        raise QuantizeError("--out must differ from --model (shipped artifacts are never replaced)")
    kind = model_kind(model)
    records = calibration_records(data_root, calibration_images)
    source = onnx.load(str(model))
    input_name = source.graph.input[0].name
    tensors = pose_inputs(model, records) if kind == "pose" else detector_inputs(records)
    reader = ArrayReader(input_name, tensors)
    with tempfile.TemporaryDirectory() as tmp:
        prepared, quantized = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(model), str(prepared))
        excluded = excluded_nodes(onnx.load(str(prepared)), exclude)
        with warnings.catch_warnings():  # NaN params of the float-kept −inf tensor; `check_scales` guards the rest
            warnings.filterwarnings("ignore", category=RuntimeWarning, module="onnxruntime.quantization")
            quantize_static(
                str(prepared),
                str(quantized),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                reduce_range=reduce_range,
                activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                calibrate_method={
                    "minmax": CalibrationMethod.MinMax,
                    "percentile": CalibrationMethod.Percentile,
                    "entropy": CalibrationMethod.Entropy,
                }[calibration],
                # no CalibMaxIntermediateOutputs: onnxruntime 1.32 drops (not merges) each full chunk, so only the
                # last partial chunk would calibrate; MinMax keeps per-tensor reduced min/max only, memory is small
            )
        result = onnx.load(str(quantized))
    check_scales(result)
    info = {
        "format": "QDQ",
        "weights": ("int8 per-channel" if per_channel else "int8 per-tensor")
        + (", 7-bit range" if reduce_range else ""),
        "activations": activations,
        "calibration": calibration,
        "calibration_images": reader.count,
        "calibration_split": "LSP im0001–0800, evenly spaced",
        "calibration_input": "serving pose crops of the GT box" if kind == "pose" else "detector letterbox",
        "excluded_nodes": excluded,
        "source_sha256": file_sha256(model),
        "kind": kind,
    }
    props = {p.key: p.value for p in source.metadata_props}
    props.update({WEIGHTS_KEY: WEIGHTS_VALUE, "poseloop.quantization": json.dumps(info)})
    del result.metadata_props[:]
    for key, value in props.items():
        result.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(result)
    atomic_write_bytes(out, result.SerializeToString())
    return info


def check_scales(model: onnx.ModelProto) -> None:
    """Every Quantize/DequantizeLinear scale is finite and positive (QuantizeError otherwise)."""
    from onnx import numpy_helper

    constants = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[1] in constants:
            scale = numpy_helper.to_array(constants[node.input[1]])
            if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
                raise QuantizeError(f"{node.name}: quantisation scale {scale} is not finite and positive")


def count_ops(path: str | Path) -> dict[str, int]:
    """Node counts by op type (e.g. QuantizeLinear / DequantizeLinear after quantisation)."""
    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
