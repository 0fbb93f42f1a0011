"""The models a teacher is made of: each turns person crops into keypoints in its own input pixels.

A member owns its crop (input size, padding, square or not) and its decoding; the teacher (teachers.py) owns the
views, the way back to image pixels and the schema mapping. Kinds:
- PoseLoop checkpoint (`best.pt`, torch on CPU) and PoseLoop ONNX (metadata contract, onnxruntime): heatmaps,
  decoded by `HeatmapCodec` (DARK by default);
- MoveNet single-pose ONNX: regression, (1, 1, 17, 3) = (y, x, score) normalised to the input, COCO-17 order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from models.codec import HeatmapCodec, Refinement
from models.geometry import Size, normalize_crop, person_crop_affine
from models.metadata import ModelMetadata
from models.schemas import COCO17, KeypointSchema, get_schema

MOVENET_SIZES = {"thunder": 256, "lightning": 192}  # square input side by model variant


class Member(Protocol):
    @property
    def schema(self) -> KeypointSchema: ...

    @property
    def input_size(self) -> Size: ...

    def identity(self) -> dict[str, Any]:
        """What the predictions depend on: kind, file sha256 (+ path, informational), crop and decode settings."""
        ...

    def view_affine(self, box: np.ndarray, scale: float) -> np.ndarray:
        """(2, 3) image pixels → input pixels for a (4,) xywh box, its crop region grown by `scale`."""
        ...

    def infer(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, H, W, 3) uint8 RGB crops → keypoints (N, K, 2) in input pixels and scores (N, K)."""
        ...


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _source(kind: str, path: str | Path) -> dict[str, Any]:
    return {"kind": kind, "path": str(Path(path).resolve()), "sha256": file_sha256(path)}


@dataclass(frozen=True, eq=False)
class HeatmapMember:
    """A PoseLoop heatmap network: crops normalised with its mean/std → `run` → heatmaps → `codec.decode`."""

    schema: KeypointSchema
    codec: HeatmapCodec
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    padding: float
    run: Callable[[np.ndarray], np.ndarray]  # (N, 3, H, W) float32 normalised → (N, K, h, w) heatmaps
    source: dict[str, Any]

    @property
    def input_size(self) -> Size:
        return self.codec.input_size

    def identity(self) -> dict[str, Any]:
        size = self.input_size
        return {**self.source, "input_size": [size.w, size.h], "padding": self.padding, "decode": self.codec.refinement}

    def view_affine(self, box: np.ndarray, scale: float) -> np.ndarray:
        return person_crop_affine(box, self.input_size, self.padding, scale)

    def infer(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = np.stack([normalize_crop(crop, np.asarray(self.mean), np.asarray(self.std)) for crop in crops])
        keypoints, scores = self.codec.decode(self.run(images))
        return keypoints.astype(np.float64), scores.astype(np.float64)


def checkpoint_member(path: str | Path, refinement: Refinement = "dark") -> HeatmapMember:
    """A trainer `best.pt` (torch, CPU, eval mode); crop and codec come from the config stored in it."""
    import torch

    from training.checkpoints import load_checkpoint

    config, model, _ = load_checkpoint(Path(path))

    def run(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(images)).float().numpy()

    codec = HeatmapCodec.for_input(config.data.input_size, config.codec.stride, config.codec.sigma, refinement)
    schema = get_schema(config.data.model_schema)
    return HeatmapMember(schema, codec, model.mean, model.std, config.data.padding, run, _source("checkpoint", path))


def _session(path: str | Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0: onnxruntime's default (one per physical core)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_member(path: str | Path, refinement: Refinement = "dark", threads: int = 0) -> HeatmapMember:
    """A PoseLoop ONNX export: schema, input size, mean/std, padding and codec from its metadata contract."""
    meta = ModelMetadata.from_onnx(path)
    session = _session(path, threads)
    name = session.get_inputs()[0].name

    def run(images: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {name: images})[0], np.float32)

    return HeatmapMember(
        meta.schema, meta.codec(refinement), meta.mean, meta.std, meta.padding, run, _source("onnx", path)
    )


class MoveNetMember:
    """MoveNet single-pose ONNX. The person box becomes a square region (longer side × padding) around its centre;
    parts outside the image are 0, the letterbox MoveNet's own resize-with-pad uses. Input NHWC RGB 0–255 as the
    file's dtype (int32 or float); input name, dtype and size are read from the session."""

    schema = COCO17

    def __init__(self, path: str | Path, padding: float = 1.25, size: int | None = None, threads: int = 0):
        self.session = _session(path, threads)
        spec = self.session.get_inputs()[0]
        self.input_name = spec.name
        self.dtype = np.int32 if "int32" in spec.type else np.float32
        side = spec.shape[1] if isinstance(spec.shape[1], int) else size or _size_from_name(Path(path))
        self._size = Size(side, side)
        self.padding = padding
        self.source = _source("movenet", path)

    @property
    def input_size(self) -> Size:
        return self._size

    def identity(self) -> dict[str, Any]:
        return {**self.source, "input_size": [self._size.w, self._size.h], "padding": self.padding}

    def view_affine(self, box: np.ndarray, scale: float) -> np.ndarray:
        return person_crop_affine(box, self._size, self.padding, scale)  # aspect 1: the box grows to a square

    def infer(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keypoints = np.empty((len(crops), 17, 2))
        scores = np.empty((len(crops), 17))
        for i, crop in enumerate(crops):  # the converted models take one image per call
            out = np.asarray(self.session.run(None, {self.input_name: crop[None].astype(self.dtype)})[0])
            yxs = out.reshape(-1, 17, 3)[0].astype(np.float64)
            # normalised [0, 1] spans the input's edges; pixel centres sit at integers (models.geometry)
            keypoints[i] = np.stack([yxs[:, 1] * self._size.w - 0.5, yxs[:, 0] * self._size.h - 0.5], -1)
            scores[i] = yxs[:, 2]
        return keypoints, scores


def _size_from_name(path: Path) -> int:
    for variant, side in MOVENET_SIZES.items():
        if variant in str(path).lower():
            return side
    raise ValueError(f"{path}: dynamic input size and no 'thunder'/'lightning' in the name; pass size=")


def load_member(path: str | Path, refinement: Refinement = "dark", threads: int = 0) -> Member:
    """By file: `*.pt` → checkpoint; `*.onnx` with PoseLoop metadata → ONNX heatmap; other `*.onnx` → MoveNet."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"teacher file {path} not found")
    if path.suffix == ".pt":
        return checkpoint_member(path, refinement)
    if path.suffix != ".onnx":
        raise ValueError(f"{path}: a teacher is a .pt checkpoint or an .onnx model")
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    if any(p.key.startswith("poseloop.") for p in proto.metadata_props):
        return onnx_member(path, refinement, threads)
    return MoveNetMember(path, threads=threads)
