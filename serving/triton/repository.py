"""Triton model repository: version directories, and config.pbtxt generated from one description of the ONNX I/O.

Layout (docs/user_guide/model_repository.md):

    <repo>/<model>/config.pbtxt
    <repo>/<model>/<version>/model.onnx    the PoseLoop export (versions are decimal strings: "1", "2", ...)
    <repo>/<model>/<version>/model.py      the Python-backend host (serving/triton/python_model.py)

Two configs come out of `model_config` (a ModelConfig as a JSON-style dict):
- runtime="python": backend "python", KIND_CPU; onnxruntime runs inside the backend's stub process. This is
  what the tritonserver bundled in the nvidia-pytriton wheel can run (it ships no onnxruntime backend).
- runtime="onnxruntime": platform "onnxruntime_onnx" (Triton's native ORT backend; NGC image), KIND_GPU by
  default, optionally with the TensorRT execution accelerator. GPU production.
Both share the inputs/outputs/dims (`ModelIO`), max_batch_size, dynamic batching, an explicit instance count
and a `specific` version policy. The dict is validated and rendered with protobuf against Triton's own
ModelConfig message (`model_config_pb2` shipped in the tritonclient wheel); the same dict, as JSON, is the
`config` override a load-in-place sends.

The person detector (serving.detection) is a second model, `<model>_detector` by default, with one version
("1") and no batching (`max_batch_size: 0`: its ONNX has a fixed (1, 3, 416, 416) input, so dims are full
shapes): `detector_config_dict` + `write_detector`, the same python_model.py host, which serves any number of
outputs.

Every file is written atomically (temp file in the same directory, fsync, rename): Triton never reads half a file.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shutil
import sysconfig
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from core.fileio import atomic_copy, atomic_write_bytes
from models.detection import DetectorSpec
from models.metadata import ModelMetadata

MODEL_FILENAME = "model.onnx"
PYTHON_MODEL_FILENAME = "model.py"
CONFIG_FILENAME = "config.pbtxt"
PYTHON_MODEL_TEMPLATE = Path(__file__).with_name("python_model.py")
DEFAULT_INPUT_NAME = "input"  # the export contract's names (models.export), used when metadata lacks them
DEFAULT_OUTPUT_NAME = "heatmaps"
SYS_PATH_PARAMETER = "sys_path"  # python_model.py extends sys.path from this (the stub ignores PYTHONPATH)
INTRA_OP_PARAMETER = "intra_op_thread_count"  # same key the native ORT backend reads
INTER_OP_PARAMETER = "inter_op_thread_count"

Runtime = Literal["python", "onnxruntime"]

# onnx.TensorProto.DataType value -> Triton data_type
_ONNX_TO_TRITON = {
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    4: "TYPE_UINT16",
    5: "TYPE_INT16",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    12: "TYPE_UINT32",
    13: "TYPE_UINT64",
    16: "TYPE_BF16",
}
_VERSION = re.compile(r"^[1-9][0-9]*$")


class RepositoryError(ValueError):
    """A model file or config cannot be served by Triton as asked (the message names the cause)."""


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as Triton sees it: dims exclude the batch axis; -1 marks a variable dim."""

    name: str
    data_type: str  # Triton enum name, e.g. "TYPE_FP32"
    dims: tuple[int, ...]


@dataclass(frozen=True)
class ModelIO:
    """The I/O signature shared by both configs. Every tensor is batched on a dynamic axis 0."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @classmethod
    def from_metadata(cls, meta: ModelMetadata) -> ModelIO:
        """The export contract: input (N, 3, H, W) float32 → output (N, K, H/stride, W/stride) float32."""
        size, heat = meta.input_size, meta.heatmap_size
        return cls(
            inputs=(
                TensorSpec(meta.props.get("poseloop.input_name", DEFAULT_INPUT_NAME), "TYPE_FP32", (3, size.h, size.w)),
            ),
            outputs=(
                TensorSpec(
                    meta.props.get("poseloop.output_name", DEFAULT_OUTPUT_NAME),
                    "TYPE_FP32",
                    (meta.schema.num_keypoints, heat.h, heat.w),
                ),
            ),
        )

    @classmethod
    def for_detector(cls, spec: DetectorSpec) -> ModelIO:
        """The person detector's contract (models.detection), unbatched: full static shapes."""
        return cls(
            inputs=(TensorSpec(spec.input_name, "TYPE_FP32", spec.input_shape),),
            outputs=tuple(TensorSpec(name, "TYPE_FP32", shape) for name, shape in spec.output_shapes().items()),
        )

    @classmethod
    def from_onnx(cls, onnx_path: str | Path, batched: bool = True) -> ModelIO:
        """Read the graph's real inputs/outputs (initializers excluded). Raises RepositoryError when the file
        does not parse or a tensor has no dynamic batch axis 0 (max_batch_size ≥ 1 needs one).
        batched=False: a model served without batching (max_batch_size 0); dims are the full static shapes."""
        import onnx

        try:
            proto = onnx.load(str(onnx_path), load_external_data=False)
        except Exception as err:
            raise RepositoryError(f"{onnx_path}: not a readable ONNX model ({type(err).__name__}: {err})") from err
        initializers = {t.name for t in proto.graph.initializer}
        inputs = [v for v in proto.graph.input if v.name not in initializers]
        if not inputs or not proto.graph.output:
            raise RepositoryError(f"{onnx_path}: graph has no inputs or no outputs")
        return cls(
            tuple(_spec(v, onnx_path, batched) for v in inputs),
            tuple(_spec(v, onnx_path, batched) for v in proto.graph.output),
        )


def _spec(value, source, batched: bool = True) -> TensorSpec:
    tensor = value.type.tensor_type
    if tensor.elem_type not in _ONNX_TO_TRITON:
        raise RepositoryError(
            f"{source}: tensor {value.name!r} has ONNX element type {tensor.elem_type}, which Triton cannot serve"
        )
    dims = list(tensor.shape.dim)
    if not batched:  # full shapes; a symbolic dim (tf2onnx leaves outputs so) is -1, variable for Triton
        return TensorSpec(
            value.name,
            _ONNX_TO_TRITON[tensor.elem_type],
            tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims),
        )
    if not dims or dims[0].HasField("dim_value"):
        raise RepositoryError(
            f"{source}: tensor {value.name!r} has no dynamic batch axis 0 "
            f"(shape {[d.dim_param or d.dim_value for d in dims]})"
        )
    return TensorSpec(
        value.name,
        _ONNX_TO_TRITON[tensor.elem_type],
        tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims[1:]),
    )


# ---------------------------------------------------------------- configs


def model_config(
    model_name: str,
    io: ModelIO,
    *,
    runtime: Runtime,
    versions: Iterable[str],
    max_batch_size: int = 16,
    instance_count: int = 1,
    kind: str = "KIND_CPU",
    intra_op_threads: int = 1,
    max_queue_delay_us: int = 2000,
    parameters: Mapping[str, str] | None = None,
    tensorrt: bool = False,
    tensorrt_precision: str = "FP16",
    tensorrt_cache_dir: str | None = None,
) -> dict[str, Any]:
    """The ModelConfig both configs come from, as a protobuf-JSON dict (validated by `render_pbtxt`).

    versions: the version directories to serve (`version_policy: specific`); at least one.
    max_batch_size: 0 = the model does not batch (dims are full shapes, no dynamic batching; the detector).
    kind: instance_group kind ("KIND_CPU" / "KIND_GPU"), `instance_count` instances (never Triton's default).
    tensorrt: add ORT's TensorRT execution accelerator (GPU, native ORT backend only); engines are cached in
    `tensorrt_cache_dir` (a path inside the server's container) so restarts and reloads skip the rebuild.
    """
    if max_batch_size < 0:
        raise ValueError(f"max_batch_size {max_batch_size} < 0")
    if instance_count < 1 or intra_op_threads < 0:
        raise ValueError(f"instance_count {instance_count} / intra_op_threads {intra_op_threads} out of range")
    if kind not in ("KIND_CPU", "KIND_GPU"):
        raise ValueError(f"kind {kind!r} not in ('KIND_CPU', 'KIND_GPU')")
    params = {INTRA_OP_PARAMETER: str(intra_op_threads), INTER_OP_PARAMETER: "1", **(parameters or {})}
    config: dict[str, Any] = {"name": model_name}
    if runtime == "python":
        config["backend"] = "python"  # Python-backend models must not set `platform`
    elif runtime == "onnxruntime":
        config["platform"] = "onnxruntime_onnx"
    else:
        raise ValueError(f"runtime {runtime!r} not in ('python', 'onnxruntime')")
    config.update(
        {
            "version_policy": {"specific": {"versions": [int(v) for v in sort_versions(versions)]}},
            "max_batch_size": max_batch_size,
            "input": [_tensor(t) for t in io.inputs],
            "output": [_tensor(t) for t in io.outputs],
            **({"dynamic_batching": {"max_queue_delay_microseconds": max_queue_delay_us}} if max_batch_size else {}),
            "instance_group": [{"kind": kind, "count": instance_count}],
            "parameters": {key: {"string_value": value} for key, value in sorted(params.items())},
        }
    )
    if tensorrt:
        if runtime != "onnxruntime" or kind != "KIND_GPU":
            raise ValueError("the TensorRT accelerator needs runtime='onnxruntime' and kind='KIND_GPU'")
        trt = {"precision_mode": tensorrt_precision, "max_workspace_size_bytes": str(1 << 30)}
        if tensorrt_cache_dir:
            trt.update(trt_engine_cache_enable="1", trt_engine_cache_path=tensorrt_cache_dir)
        config["optimization"] = {
            "execution_accelerators": {"gpu_execution_accelerator": [{"name": "tensorrt", "parameters": trt}]}
        }
    return config


def _tensor(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "data_type": spec.data_type, "dims": list(spec.dims)}


def python_backend_config(
    model_name: str,
    metadata: ModelMetadata,
    *,
    max_batch_size: int = 16,
    instance_count: int = 1,
    intra_op_threads: int = 1,
    max_queue_delay_us: int = 2000,
    versions: Iterable[str],
    sys_path: Iterable[str] | None = None,
) -> str:
    """config.pbtxt for CPU serving through the Python backend (model.py hosts onnxruntime).

    sys_path: directories model.py prepends to sys.path so the stub can import onnxruntime/numpy
    (None = this interpreter's site-packages, `default_sys_path()`)."""
    return render_pbtxt(
        python_backend_config_dict(
            model_name,
            ModelIO.from_metadata(metadata),
            max_batch_size=max_batch_size,
            instance_count=instance_count,
            intra_op_threads=intra_op_threads,
            max_queue_delay_us=max_queue_delay_us,
            versions=versions,
            sys_path=sys_path,
        )
    )


def python_backend_config_dict(
    model_name: str, io: ModelIO, *, versions: Iterable[str], sys_path: Iterable[str] | None = None, **kwargs
) -> dict[str, Any]:
    """`python_backend_config` as a dict (what the load-in-place override sends as JSON)."""
    paths = os.pathsep.join(default_sys_path() if sys_path is None else [str(p) for p in sys_path])
    return model_config(
        model_name,
        io,
        runtime="python",
        kind="KIND_CPU",
        versions=versions,
        parameters={SYS_PATH_PARAMETER: paths},
        **kwargs,
    )


def onnxruntime_config(
    model_name: str,
    metadata: ModelMetadata,
    *,
    max_batch_size: int = 16,
    instance_count: int = 1,
    kind: str = "KIND_GPU",
    tensorrt: bool = False,
    versions: Iterable[str],
    intra_op_threads: int = 1,
    max_queue_delay_us: int = 2000,
    tensorrt_cache_dir: str | None = None,
) -> str:
    """config.pbtxt for GPU production on Triton's native onnxruntime backend (not in the pytriton wheel)."""
    return render_pbtxt(
        model_config(
            model_name,
            ModelIO.from_metadata(metadata),
            runtime="onnxruntime",
            versions=versions,
            max_batch_size=max_batch_size,
            instance_count=instance_count,
            kind=kind,
            tensorrt=tensorrt,
            intra_op_threads=intra_op_threads,
            max_queue_delay_us=max_queue_delay_us,
            tensorrt_cache_dir=tensorrt_cache_dir,
        )
    )


@cache
def model_config_pb2() -> ModuleType:
    """Triton's ModelConfig protobuf module. tritonclient ships it in `tritonclient/grpc/`, whose package
    __init__ needs grpcio (the [grpc] extra); without grpcio the file is loaded directly (protobuf only)."""
    try:
        return importlib.import_module("tritonclient.grpc.model_config_pb2")
    except (ImportError, RuntimeError):  # tritonclient.grpc raises RuntimeError when grpcio is missing
        pass
    spec = importlib.util.find_spec("tritonclient")
    path = Path(spec.origin).parent / "grpc" / "model_config_pb2.py" if spec and spec.origin else None
    if path is None or not path.exists():
        raise RepositoryError("tritonclient's model_config_pb2.py not found (install tritonclient[http])")
    module_spec = importlib.util.spec_from_file_location("_poseloop_model_config_pb2", path)
    if module_spec is None or module_spec.loader is None:
        raise RepositoryError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def render_pbtxt(config: Mapping[str, Any]) -> str:
    """protobuf text format of a ModelConfig dict; unknown fields or enum names raise RepositoryError."""
    from google.protobuf import json_format, text_format

    try:
        message = json_format.ParseDict(dict(config), model_config_pb2().ModelConfig())
    except json_format.ParseError as err:
        raise RepositoryError(f"invalid Triton model config: {err}") from err
    return text_format.MessageToString(message)


def parse_pbtxt(text: str) -> dict[str, Any]:
    """config.pbtxt text → ModelConfig dict (protobuf field names; int64 values such as dims come back as str,
    the protobuf-JSON convention, which Triton's JSON config parser accepts)."""
    from google.protobuf import json_format, text_format

    try:
        message = text_format.Parse(text, model_config_pb2().ModelConfig())
    except text_format.ParseError as err:
        raise RepositoryError(f"config.pbtxt does not parse: {err}") from err
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def config_mismatches(config_text: str, onnx_path: str | Path) -> list[str]:
    """Why a config.pbtxt cannot serve an ONNX file (names, data types, dims, batching); [] when it can."""
    config = parse_pbtxt(config_text)
    try:
        io = ModelIO.from_onnx(onnx_path)
    except RepositoryError as err:
        return [str(err)]
    problems = []
    if config.get("max_batch_size", 0) < 1:
        problems.append(f"max_batch_size {config.get('max_batch_size', 0)}: expected ≥ 1 (batch on axis 0)")
    for kind, specs in (("input", io.inputs), ("output", io.outputs)):
        declared = {
            t["name"]: (t.get("data_type", "TYPE_INVALID"), tuple(int(d) for d in t.get("dims", ())))
            for t in config.get(kind, [])
        }
        actual = {t.name: (t.data_type, t.dims) for t in specs}
        for name in sorted(set(declared) | set(actual)):
            if name not in actual:
                problems.append(f"{kind} {name!r} is in the config but not in the ONNX graph")
            elif name not in declared:
                problems.append(f"{kind} {name!r} is in the ONNX graph but not in the config")
            elif declared[name] != actual[name]:
                problems.append(f"{kind} {name!r}: config {declared[name]}, ONNX {actual[name]}")
    return problems


def production_config_matches_onnx(config_text: str, onnx_path: str | Path) -> bool:
    """True when the config's inputs/outputs (names, dtypes, dims without batch) equal the ONNX graph's."""
    return not config_mismatches(config_text, onnx_path)


def default_sys_path() -> list[str]:
    """Where this interpreter finds onnxruntime and numpy (its site-packages), for the backend stub."""
    paths = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    for module in ("onnxruntime", "numpy"):
        spec = importlib.util.find_spec(module)
        if spec and spec.origin:
            paths.append(str(Path(spec.origin).parent.parent))
    return list(dict.fromkeys(paths))


# ---------------------------------------------------------------- files


def check_version(version: str) -> str:
    """Triton version directories are positive decimal integers without leading zeros."""
    if not isinstance(version, str) or not _VERSION.match(version):
        raise ValueError(f"version {version!r} is not a positive decimal string like '1', '2', ...")
    return version


def sort_versions(versions: Iterable[str]) -> list[str]:
    """Deduplicated, numerically sorted; raises ValueError for a non-version or an empty set."""
    ordered = sorted({check_version(str(v)) for v in versions}, key=int)
    if not ordered:
        raise ValueError("at least one version is needed")
    return ordered


def write_model_version(repo: Path, model_name: str, version: str, onnx_path: Path) -> Path:
    """Copy the ONNX file to <repo>/<model>/<version>/model.onnx and the Python-backend model.py beside it."""
    version_dir = Path(repo) / model_name / check_version(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    atomic_copy(Path(onnx_path), version_dir / MODEL_FILENAME)
    atomic_copy(PYTHON_MODEL_TEMPLATE, version_dir / PYTHON_MODEL_FILENAME)
    return version_dir


DETECTOR_VERSION = "1"


def detector_config_dict(
    model_name: str,
    io: ModelIO,
    *,
    runtime: Runtime,
    kind: str = "KIND_CPU",
    intra_op_threads: int = 1,
    instance_count: int = 1,
    sys_path: Iterable[str] | None = None,
) -> dict[str, Any]:
    """The person detector's ModelConfig: one version, no batching (`io`: ModelIO.for_detector(spec))."""
    versions = [DETECTOR_VERSION]
    if runtime == "python":
        return python_backend_config_dict(
            model_name,
            io,
            versions=versions,
            sys_path=sys_path,
            max_batch_size=0,
            intra_op_threads=intra_op_threads,
            instance_count=instance_count,
        )
    return model_config(
        model_name,
        io,
        runtime="onnxruntime",
        kind=kind,
        versions=versions,
        max_batch_size=0,
        intra_op_threads=intra_op_threads,
        instance_count=instance_count,
    )


def write_detector(repo: Path, model_name: str, onnx_path: Path, config: Mapping[str, Any]) -> Path:
    """<repo>/<model_name>/1/model.onnx (+ model.py) and config.pbtxt for the detector."""
    version_dir = write_model_version(repo, model_name, DETECTOR_VERSION, onnx_path)
    write_config(repo, model_name, render_pbtxt(config))
    return version_dir


def write_config(repo: Path, model_name: str, text: str) -> Path:
    path = Path(repo) / model_name / CONFIG_FILENAME
    atomic_write_bytes(path, text.encode())
    return path


def read_config(repo: Path, model_name: str) -> str | None:
    path = Path(repo) / model_name / CONFIG_FILENAME
    return path.read_text() if path.exists() else None


def version_dirs(repo: Path, model_name: str) -> list[str]:
    """Version directories present on disk, numerically sorted."""
    root = Path(repo) / model_name
    if not root.is_dir():
        return []
    return sorted((p.name for p in root.iterdir() if p.is_dir() and _VERSION.match(p.name)), key=int)


def remove_version(repo: Path, model_name: str, version: str) -> None:
    shutil.rmtree(Path(repo) / model_name / check_version(version), ignore_errors=True)


def config_json(config: Mapping[str, Any]) -> str:
    """The JSON form Triton's load API takes as the `config` parameter (validated first)."""
    render_pbtxt(config)
    return json.dumps(config)
