"""The PoseLoop ONNX metadata contract, read back: everything needed to crop, normalise and decode.

`models.export.build_metadata` writes these `metadata_props`; this module parses them without torch and
without running the model. A missing or malformed key raises MetadataError naming the key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import cast

from models.codec import HeatmapCodec, Refinement
from models.geometry import Size
from models.schemas import KeypointSchema

REQUIRED_KEYS = (
    "poseloop.schema",
    "poseloop.keypoints",
    "poseloop.flip_pairs",
    "poseloop.skeleton",
    "poseloop.input_size",
    "poseloop.mean",
    "poseloop.std",
    "poseloop.heatmap_stride",
    "poseloop.sigma",
    "poseloop.padding",
    "poseloop.decode",
    "poseloop.version",
    "poseloop.trained_on",
    "poseloop.backbone",
    "poseloop.head",
)
DECODE_MODES = ("none", "quarter", "dark")


class MetadataError(ValueError):
    """An ONNX file does not carry the PoseLoop metadata contract (the message names the key)."""


@dataclass(frozen=True)
class ModelMetadata:
    """Parsed contract. input_size is Size(w, h) of the network input; mean/std are RGB 0–255."""

    schema: KeypointSchema
    input_size: Size
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    heatmap_stride: int
    sigma: float
    padding: float
    decode: str
    version: str
    trained_on: str
    backbone: str
    head: str
    props: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)  # every raw key

    @property
    def heatmap_size(self) -> Size:
        return Size(self.input_size.w // self.heatmap_stride, self.input_size.h // self.heatmap_stride)

    def codec(self, refinement: str | None = None) -> HeatmapCodec:
        """The decoder the model was exported with (`refinement` overrides its decode mode)."""
        mode = refinement or self.decode
        if mode not in DECODE_MODES:
            raise ValueError(f"refinement {mode!r} not in {DECODE_MODES}")
        return HeatmapCodec.for_input(self.input_size, self.heatmap_stride, self.sigma, cast(Refinement, mode))

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "model") -> ModelMetadata:
        """Parse `metadata_props` (e.g. ORT's `custom_metadata_map`); `source` names the file in errors."""
        missing = [k for k in REQUIRED_KEYS if k not in props]
        if missing:
            raise MetadataError(
                f"{source}: missing PoseLoop metadata key(s) {missing} (export contract broken; "
                "re-export with models.export.export_onnx)"
            )

        def parse(key: str, convert):
            try:
                return convert(props[key])
            except (ValueError, TypeError, KeyError, IndexError, json.JSONDecodeError) as err:
                raise MetadataError(f"{source}: metadata key {key!r} = {props[key]!r} is malformed: {err}") from err

        h, w = parse("poseloop.input_size", lambda v: [int(p) for p in v.split(",")])
        mean = parse("poseloop.mean", _three_floats)
        std = parse("poseloop.std", _three_floats)
        decode = props["poseloop.decode"]
        if decode not in DECODE_MODES:
            raise MetadataError(f"{source}: metadata key 'poseloop.decode' = {decode!r} not in {DECODE_MODES}")
        for key in ("poseloop.keypoints", "poseloop.flip_pairs", "poseloop.skeleton", "poseloop.sigmas"):
            if key in props:
                parse(key, json.loads)
        try:
            schema = KeypointSchema.from_metadata(dict(props))
        except (ValueError, TypeError, KeyError, IndexError) as err:
            raise MetadataError(f"{source}: keypoint schema metadata is malformed: {err}") from err
        return cls(
            schema=schema,
            input_size=Size(w, h),
            mean=mean,
            std=std,
            heatmap_stride=parse("poseloop.heatmap_stride", int),
            sigma=parse("poseloop.sigma", float),
            padding=parse("poseloop.padding", float),
            decode=decode,
            version=props["poseloop.version"],
            trained_on=props["poseloop.trained_on"],
            backbone=props["poseloop.backbone"],
            head=props["poseloop.head"],
            props=MappingProxyType(dict(props)),
        )

    @classmethod
    def from_onnx(cls, path: str | Path) -> ModelMetadata:
        """Read the contract from an .onnx file (parses the protobuf; runs nothing)."""
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        return cls.from_props({p.key: p.value for p in proto.metadata_props}, source=str(path))


def _three_floats(text: str) -> tuple[float, float, float]:
    values = tuple(float(v) for v in json.loads(text))
    if len(values) != 3:
        raise ValueError(f"expected 3 per-channel values, got {len(values)}")
    return values
