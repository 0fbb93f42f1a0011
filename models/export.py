"""ONNX export of a PoseNet: the metadata contract serving reads, and a parity check against PyTorch.

Graph: input "input" (N, 3, H, W) float32 normalised RGB ((x − mean) / std on 0–255), output "heatmaps"
(N, K, H/4, W/4); N is dynamic ("batch"), H and W are fixed to `codec.input_size`.

Exporter: torch 2.13's dynamo exporter (torch.export → onnxscript, `dynamo=True`) works for every PoseLoop
network and is the default. It is slow on CPU: its symbolic tracing of the dynamic batch axis costs per op,
~25 s for MobileNetV2 on 2 cores as is, ~8–13 s after `deploy_copy` folds BatchNorm into the convs. The
TorchScript exporter (`dynamo=False`, deprecated since torch 2.9) gives an equivalent graph in ~2–3 s; it is
used when asked for (`exporter="torchscript"`) and as the fallback when the dynamo exporter raises. Either
way the parity check below is what certifies the file. The dynamo exporter implements opset 18; opset 17
(the default here, for older runtimes) is reached by its automatic down-conversion.

The export runs on a float32 CPU copy of the model in eval mode; the caller's model is not touched.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from core.fileio import atomic_write_bytes
from models.codec import HeatmapCodec
from models.geometry import Size, normalize_crop, person_crop_affine, warp_image
from models.schemas import KeypointSchema

if TYPE_CHECKING:
    from models.network import PoseNet

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "heatmaps"
BATCH_DIM = "batch"
MIN_OPSET = 17
BOX_PADDING = 1.25
HEATMAP_TOLERANCE = 1e-4  # max |Δheatmap| between PyTorch and ONNX Runtime
KEYPOINT_TOLERANCE_PX = 0.5  # max decoded-keypoint distance, input-crop pixels
# Keypoint parity is checked only where the PyTorch peak is ≥ this: below it the heatmap tolerance cannot
# separate the argmax from its neighbours (a random-init head outputs ~1e-15 everywhere).
KEYPOINT_MIN_PEAK = 1e-2
PARITY_BATCH = 8

Exporter = Literal["dynamo", "torchscript"]
WeightStorage = Literal["float32", "float16"]


class ExportParityError(RuntimeError):
    """ONNX Runtime's output differs from PyTorch's beyond tolerance; nothing was written."""


@dataclass(frozen=True)
class ExportReport:
    path: Path
    sha256: str
    size_bytes: int
    max_abs_diff: float  # max |Δheatmap| over the batch-1 and batch-8 parity runs
    max_keypoint_diff_px: float  # max decoded-keypoint distance (input-crop pixels) over compared joints
    opset: int
    exporter: Exporter
    keypoints_compared: int  # joints with a PyTorch peak ≥ KEYPOINT_MIN_PEAK, over both parity runs
    record_path: Path  # JSON model record written next to the .onnx (metadata, sha256, parity)
    weights: WeightStorage = "float32"
    rounding_max_abs_diff: float = 0.0  # float16 storage: |Δheatmap| of the rounded vs the full-precision model
    rounding_max_keypoint_diff_px: float = 0.0


def export_onnx(
    model: PoseNet,
    codec: HeatmapCodec,
    schema: KeypointSchema,
    out_path: Path,
    *,
    version: str,
    trained_on: str,
    extra_metadata: dict[str, str] | None = None,
    opset: int = 17,
    parity_images: list[np.ndarray] | None = None,
    padding: float = BOX_PADDING,
    exporter: Exporter = "dynamo",
    weights: WeightStorage = "float32",
) -> ExportReport:
    """Export `model` to `out_path` (atomically), after checking ONNX Runtime against PyTorch.

    parity_images: person crops, each either a normalised (3, H, W) float32 network input at
    `codec.input_size` (what the training dataset yields) or an HxWx3 RGB uint8 image (the whole image is
    cropped as one box, then normalised with the model's mean/std). Cycled to a batch of 8; None = a
    deterministic synthetic batch. Parity is run at batch 1 and batch 8.
    padding: the box padding the model was trained with (serving crops boxes the same way).
    Raises ExportParityError (and writes nothing) when |Δheatmap| > 1e-4 or a keypoint moves > 0.5 px.
    weights="float16": the (BN-folded) weights are rounded to float16 and stored as float16 initializers, each
    cast back to float32 in the graph (ONNX Runtime folds the casts at load: same float32 compute and speed,
    half the file). Parity is then checked against the rounded PyTorch model, and the rounding's own effect
    (rounded vs full precision) is reported beside it in the record.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} < {MIN_OPSET}")
    _check_compatible(model, codec, schema)
    metadata = build_metadata(
        model, codec, schema, version=version, trained_on=trained_on, padding=padding, extra=extra_metadata
    )
    cpu_model = copy.deepcopy(model).cpu().float().eval()
    deploy = deploy_copy(cpu_model)
    inputs = parity_inputs(parity_images, codec.input_size, model.mean, model.std)
    rounding = (0.0, 0.0)
    if weights == "float16":
        full_precision = deploy
        deploy = round_to_float16(deploy)
        rounding = compare_outputs(full_precision, deploy, codec, inputs)[:2]
    elif weights != "float32":
        raise ValueError(f"weights {weights!r} not in ('float32', 'float16')")
    proto, used = _to_onnx(deploy, codec.input_size, opset, exporter)
    if weights == "float16":
        store_initializers_as_float16(proto)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"PoseLoop {model.config.backbone}+{model.config.head} {version}"
    _check_io(proto, codec, schema.num_keypoints)
    onnx.checker.check_model(proto, full_check=True)
    data = proto.SerializeToString()

    max_abs, max_kp, compared = check_parity(cpu_model if weights == "float32" else deploy, data, codec, inputs)

    out_path = Path(out_path)
    atomic_write_bytes(out_path, data)
    sha256 = hashlib.sha256(data).hexdigest()
    opset_used = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    record_path = out_path.with_suffix(".json")
    record = {
        "onnx": out_path.name,
        "sha256": sha256,
        "size_bytes": len(data),
        "opset": opset_used,
        "exporter": used,
        "parity": {
            "max_abs_diff": max_abs,
            "max_keypoint_diff_px": max_kp,
            "keypoints_compared": compared,
            "batches": [1, PARITY_BATCH],
            "real_images": parity_images is not None,
        },
        "weights": {
            "storage": weights,
            "rounding_max_abs_diff": rounding[0],
            "rounding_max_keypoint_diff_px": rounding[1],
        },
        "metadata": metadata,
    }
    atomic_write_bytes(record_path, (json.dumps(record, indent=2) + "\n").encode())
    report = ExportReport(
        out_path, sha256, len(data), max_abs, max_kp, opset_used, used, compared, record_path, weights, *rounding
    )
    log.info("exported %s", {k: str(v) for k, v in asdict(report).items()})
    return report


def build_metadata(
    model: PoseNet,
    codec: HeatmapCodec,
    schema: KeypointSchema,
    *,
    version: str,
    trained_on: str,
    padding: float = BOX_PADDING,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """The `metadata_props` contract: everything a client needs to crop, normalise and decode."""
    config = model.config
    meta = {
        **schema.to_metadata(),
        **codec.to_metadata(),  # input_size "H,W", heatmap_stride, sigma
        "poseloop.mean": json.dumps([float(v) for v in model.mean]),
        "poseloop.std": json.dumps([float(v) for v in model.std]),
        "poseloop.padding": repr(float(padding)),
        "poseloop.decode": codec.refinement,
        "poseloop.version": version,
        "poseloop.trained_on": trained_on,
        "poseloop.backbone": config.backbone,
        "poseloop.head": config.head,
        "poseloop.model_config": config.model_dump_json(),
        "poseloop.input_name": INPUT_NAME,
        "poseloop.output_name": OUTPUT_NAME,
    }
    clashes = sorted(set(extra or {}) & set(meta))
    if clashes:
        raise ValueError(f"extra_metadata would overwrite contract keys {clashes}")
    for key, value in (extra or {}).items():
        if not isinstance(value, str):
            raise TypeError(f"extra_metadata[{key!r}] must be a str, got {type(value).__name__}")
    return {**meta, **(extra or {})}


def parity_inputs(images: list[np.ndarray] | None, size: Size, mean, std) -> np.ndarray:
    """(8, 3, H, W) float32 network inputs from parity images (see `export_onnx`), or a synthetic batch."""
    size = Size(*size)
    if images is None:
        rng = np.random.default_rng(0)
        images = []
        for _ in range(PARITY_BATCH):  # smooth colour blobs plus noise: image-like, not white noise
            low = rng.uniform(0, 255, (6, 5, 3)).astype(np.float32)
            smooth = cv2.resize(low, (size.w, size.h), interpolation=cv2.INTER_CUBIC)
            images.append(np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8))
    if len(images) == 0:
        raise ValueError("parity_images is empty (pass None for the synthetic batch)")
    inputs = []
    for i, img in enumerate(images):
        img = np.asarray(img)
        if img.ndim == 3 and img.shape[0] == 3 and np.issubdtype(img.dtype, np.floating):
            if img.shape[1:] != (size.h, size.w):
                raise ValueError(f"parity image {i}: normalised crop {img.shape} does not match input {size}")
            inputs.append(img.astype(np.float32))
        elif img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8:
            h, w = img.shape[:2]
            affine = person_crop_affine(np.array([0, 0, w, h], np.float32), size, padding=1.0)
            inputs.append(normalize_crop(warp_image(img, affine, size), mean, std))
        else:
            raise ValueError(
                f"parity image {i}: expected (3, H, W) float32 or HxWx3 uint8, got {img.shape} {img.dtype}"
            )
    return np.stack([inputs[i % len(inputs)] for i in range(PARITY_BATCH)])


def round_to_float16(model: torch.nn.Module) -> torch.nn.Module:
    """A copy whose floating-point parameters and buffers hold float16-representable values (still float32)."""
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for tensor in [*rounded.parameters(), *rounded.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())
    return rounded


def store_initializers_as_float16(proto: onnx.ModelProto, min_elements: int = 16) -> None:
    """Float32 initializers (already float16-exact) → float16 + a Cast back to float32 under the original name."""
    graph = proto.graph
    casts = []
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or int(np.prod(init.dims)) < min_elements:
            continue
        values = onnx.numpy_helper.to_array(init)
        half = values.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), values):
            raise ValueError(f"initializer {init.name} is not float16-exact (round the model first)")
        name = init.name
        init.CopyFrom(onnx.numpy_helper.from_array(half, f"{name}__float16"))
        casts.append(
            onnx.helper.make_node(
                "Cast", [f"{name}__float16"], [name], to=onnx.TensorProto.FLOAT, name=f"{name}__to_float32"
            )
        )
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)


def compare_outputs(
    reference: torch.nn.Module, candidate, codec: HeatmapCodec, inputs: np.ndarray
) -> tuple[float, float, int]:
    """(max |Δheatmap|, max keypoint distance in input pixels, joints compared) of `candidate` (a module, or a
    callable on numpy batches) against `reference`, at batch 1 and the full batch."""
    max_abs, max_kp, compared = 0.0, 0.0, 0
    for batch in (inputs[:1], inputs):
        with torch.inference_mode():
            expected = reference(torch.from_numpy(np.ascontiguousarray(batch))).float().numpy()
            got = (
                candidate(torch.from_numpy(np.ascontiguousarray(batch))).float().numpy()
                if isinstance(candidate, nn.Module)
                else candidate(batch)
            )
        if expected.shape[-2:] != (codec.heatmap_size.h, codec.heatmap_size.w):
            raise ValueError(f"model outputs heatmaps {expected.shape}, codec expects {codec.heatmap_size}")
        if got.shape != expected.shape:
            raise ExportParityError(f"batch {len(batch)}: ONNX output {got.shape} != PyTorch {expected.shape}")
        max_abs = max(max_abs, float(np.abs(got - expected).max()))
        kp_ref, peak = codec.decode(expected)
        kp_got, _ = codec.decode(got)
        decidable = peak >= KEYPOINT_MIN_PEAK
        if decidable.any():
            max_kp = max(max_kp, float(np.linalg.norm(kp_got - kp_ref, axis=-1)[decidable].max()))
        compared += int(decidable.sum())
    return max_abs, max_kp, compared


def check_parity(
    model: torch.nn.Module, onnx_model: bytes | str | Path, codec: HeatmapCodec, inputs: np.ndarray
) -> tuple[float, float, int]:
    """Compare `model` (CPU, eval) with ONNX Runtime (CPU) at batch 1 and the full batch.

    Returns (max |Δheatmap|, max keypoint distance in input pixels, joints compared); raises ExportParityError.
    """
    source = onnx_model if isinstance(onnx_model, bytes) else str(onnx_model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    max_abs, max_kp, compared = compare_outputs(
        model, lambda batch: session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0], codec, inputs
    )
    if not np.isfinite(max_abs) or max_abs > HEATMAP_TOLERANCE or max_kp > KEYPOINT_TOLERANCE_PX:
        raise ExportParityError(
            f"ONNX Runtime vs PyTorch: max |Δheatmap| = {max_abs:.3g} (limit {HEATMAP_TOLERANCE}), "
            f"max keypoint distance = {max_kp:.3g} px (limit {KEYPOINT_TOLERANCE_PX}) over {compared} joints"
        )
    return max_abs, max_kp, compared


def _check_compatible(model: PoseNet, codec: HeatmapCodec, schema: KeypointSchema) -> None:
    if model.config.num_keypoints != schema.num_keypoints:
        raise ValueError(
            f"model has {model.config.num_keypoints} keypoints, schema {schema.name!r} has {schema.num_keypoints}"
        )
    if not np.allclose(codec.stride, model.heatmap_stride):
        raise ValueError(f"codec stride {codec.stride.tolist()} != model heatmap_stride {model.heatmap_stride}")


def deploy_copy(model: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode copy with BatchNorm folded into the preceding conv and in-place activations turned off.

    Same function, fewer ops: the dynamo exporter's symbolic tracing costs per op (BN and in-place ReLU6
    decompositions dominate), so MobileNetV2 exports in ~7 s instead of ~25 s. Folds every (Conv2d |
    ConvTranspose2d, BatchNorm2d) pair of adjacent children in an nn.Sequential; BNs elsewhere stay.
    The parity check compares the ONNX graph with the original, unfolded model.
    """
    deploy = copy.deepcopy(model).eval()
    for seq in [m for m in deploy.modules() if isinstance(m, nn.Sequential)]:
        children = list(seq.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None:
                continue
            transpose = isinstance(conv, nn.ConvTranspose2d)
            if isinstance(conv, nn.Conv2d) or (isinstance(conv, nn.ConvTranspose2d) and conv.groups == 1):
                setattr(seq, conv_name, fuse_conv_bn_eval(conv, bn, transpose=transpose))
                setattr(seq, bn_name, nn.Identity())
    for m in deploy.modules():
        if isinstance(getattr(m, "inplace", None), bool):
            m.inplace = False  # type: ignore[assignment]  # torch types Module attributes as Tensor | Module
    return deploy


def _to_onnx(
    model: torch.nn.Module, input_size: Size, opset: int, exporter: Exporter
) -> tuple[onnx.ModelProto, Exporter]:
    """ModelProto with a dynamic batch axis, from the dynamo exporter or (fallback) the TorchScript one."""
    if exporter not in ("dynamo", "torchscript"):
        raise ValueError(f"unknown exporter {exporter!r}")
    example = torch.randn(2, 3, input_size.h, input_size.w, generator=torch.Generator().manual_seed(0))
    if exporter == "dynamo":
        try:
            return _export_dynamo(model, example, opset), "dynamo"
        except Exception as err:
            log.warning(
                "dynamo ONNX exporter failed (%s: %s); falling back to the TorchScript exporter",
                type(err).__name__,
                err,
            )
    return _export_torchscript(model, example, opset), "torchscript"


@contextlib.contextmanager
def _quiet_exporter_logs():
    """Silence the dynamo exporter's known-benign warnings (opset 18→17 conversion, torchvision ops absent)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _export_dynamo(model: torch.nn.Module, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    batch = torch.export.Dim(BATCH_DIM, min=1, max=4096)
    with warnings.catch_warnings(), _quiet_exporter_logs():
        warnings.simplefilter("ignore")  # opset down-conversion notices and torch.export deprecations
        program = torch.onnx.export(
            model,
            (example,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamic_shapes=({0: batch},),
            dynamo=True,
            optimize=True,
            verbose=False,
            report=False,
        )
    if program is None:  # dynamo=True always returns the program; None is the TorchScript exporter's answer
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no ONNXProgram")
    proto = program.model_proto
    for value in (*proto.graph.input, *proto.graph.output):  # torch.export names the axis "s0"-style
        dim = value.type.tensor_type.shape.dim[0]
        if dim.dim_param:
            dim.dim_param = BATCH_DIM
    return proto


def _export_torchscript(model: torch.nn.Module, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "legacy TorchScript-based ONNX export"
        torch.onnx.export(
            model,
            (example,),
            buffer,  # type: ignore[arg-type]  # typed as a path, but the TorchScript exporter also writes to files
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}},
            do_constant_folding=True,
            dynamo=False,
        )
    return onnx.load_from_string(buffer.getvalue())


def _check_io(proto: onnx.ModelProto, codec: HeatmapCodec, num_keypoints: int) -> None:
    """The graph has exactly input (batch, 3, H, W) and output (batch, K, h, w) with the contract's names.

    Symbolic non-batch output dims are pinned to their static values (in place)."""

    def dims(value) -> list:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    inputs = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    expected_in = [BATCH_DIM, 3, codec.input_size.h, codec.input_size.w]
    expected_out = [BATCH_DIM, num_keypoints, codec.heatmap_size.h, codec.heatmap_size.w]
    if [i.name for i in inputs] != [INPUT_NAME] or dims(inputs[0]) != expected_in:
        raise RuntimeError(f"exported inputs {[(i.name, dims(i)) for i in inputs]}, expected {expected_in}")
    outputs = list(proto.graph.output)
    if [o.name for o in outputs] == [OUTPUT_NAME]:
        # The TorchScript exporter may leave the output's spatial dims symbolic ("Convheatmaps_dim_2");
        # pin them to the static sizes the parity run then confirms.
        for dim, value in zip(outputs[0].type.tensor_type.shape.dim[1:], expected_out[1:]):
            if dim.dim_param:
                dim.dim_value = value
    if [o.name for o in outputs] != [OUTPUT_NAME] or dims(outputs[0]) != expected_out:
        raise RuntimeError(f"exported outputs {[(o.name, dims(o)) for o in outputs]}, expected {expected_out}")
