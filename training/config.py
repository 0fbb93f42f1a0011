"""Typed, frozen training configuration (YAML ⇄ pydantic). One section per concern."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from models.geometry import Size
from models.network import ModelConfig


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AugmentConfig(Frozen):
    """Train-time top-down augmentation (SimpleBaseline recipe)."""

    scale_factor: float = 0.25  # scale ~ clip(N(1, sf), 1 − sf, 1 + sf)
    rotation_factor: float = 30.0  # degrees ~ clip(N(0, rf), −2rf, 2rf)
    rotation_prob: float = 0.6
    flip_prob: float = 0.5


class DataConfig(Frozen):
    dataset: Literal["lsp", "coco", "mpii"] = "lsp"
    root: str | None = None  # default: $POSELOOP_DATA or ../shared/datasets
    label_budget: int | None = None  # first N labeled training records (deterministic)
    input_w: int = 96
    input_h: int = 128
    padding: float = 1.25
    augment: AugmentConfig = AugmentConfig()
    num_workers: int = 1
    coco_ann_file: str | None = None  # for dataset=coco / mpii
    coco_image_dir: str | None = None
    val_ann_file: str | None = None
    unlabeled: str | None = None  # "lspet" (LSPET crops with their boxes) or a folder of images
    unlabeled_limit: int | None = None  # first N unlabeled persons (quick runs)

    @property
    def input_size(self) -> Size:
        return Size(self.input_w, self.input_h)


class CodecConfig(Frozen):
    stride: int = 4
    sigma: float = 2.0
    refinement: Literal["none", "quarter", "dark"] = "quarter"


class EvalConfig(Frozen):
    flip_test: bool = False
    batch_size: int = 64


class OptimConfig(Frozen):
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 32
    iterations: int = 3000
    milestones: tuple[float, ...] = (0.7, 0.9)  # fractions of `iterations` where lr ×= gamma
    gamma: float = 0.1
    warmup_iterations: int = 0
    amp: bool = True  # used on CUDA only
    grad_clip: float | None = None
    channels_last: bool = True  # NHWC: faster convolutions on CPU (oneDNN) and recent GPUs


class ScheduleConfig(Frozen):
    log_every: int = 20
    val_every: int = 500
    checkpoint_every: int = 500


class MethodConfig(Frozen):
    """Which training method (registry name) and its own parameters."""

    name: str = "supervised"
    params: dict[str, Any] = Field(default_factory=dict)


class TrainConfig(Frozen):
    name: str
    seed: int = 0
    output_dir: str = "runs"
    data: DataConfig = DataConfig()
    codec: CodecConfig = CodecConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    eval: EvalConfig = EvalConfig()
    method: MethodConfig = MethodConfig()
    init_checkpoint: str | None = None  # warm start: weights of an earlier run's checkpoint (not its optimiser)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def config_hash(self) -> str:
        """Identity of a run's recipe. Only non-default values count, so adding a defaulted field keeps hashes
        (and benchmark caches) valid; changing a default therefore needs a cache-version bump by the caller."""
        blob = json.dumps(self.model_dump(mode="json", exclude_defaults=True), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def _merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict:
    """'optim.iterations=100' → {'optim': {'iterations': 100}} (value parsed as YAML)."""
    if "=" not in text:
        raise ValueError(f"override {text!r} is not KEY=VALUE")
    key, value = text.split("=", 1)
    node: dict = {}
    cursor = node
    parts = key.strip().split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = yaml.safe_load(value)
    return node


def config_with(raw: dict, changes: dict, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """A config from a dumped one (e.g. a checkpoint's), nested `changes`, then `a.b=c` overrides."""
    raw = _merge(raw, changes)
    for text in overrides:
        raw = _merge(raw, parse_override(text))
    return TrainConfig.model_validate(raw)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a YAML config (optional `base:` file to inherit from, relative to it) and apply overrides."""
    path = Path(path)
    raw = yaml.safe_load(path.read_text()) or {}
    base = raw.pop("base", None)
    if base:
        raw = _merge(load_config(path.parent / base).model_dump(mode="json"), raw)
    for text in overrides:
        raw = _merge(raw, parse_override(text))
    return TrainConfig.model_validate(raw)
