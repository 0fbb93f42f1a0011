"""Typed, frozen training configuration (YAML ⇄ pydantic). One section per concern."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

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
    # Box noise (off by default): the crop centre moves by U(−shift_factor, shift_factor) × the crop region's width
    # and height, so a model learns from off-centre boxes as detectors and users send them.
    shift_factor: float = Field(0.0, ge=0.0, le=0.5)
    # Occlusion noise (off by default): with this probability a crop gets `occlusion_boxes` rectangles filled with
    # the normalisation mean (0 after normalising); each side ~ U(occlusion_size) x the crop's shorter side.
    # Data distillation's student noise: pseudo-labelled joints stay targets when covered.
    occlusion_prob: float = Field(0.0, ge=0.0, le=1.0)
    occlusion_boxes: int = Field(1, ge=1)
    occlusion_size: tuple[float, float] = (0.1, 0.3)

    @model_validator(mode="after")
    def _occlusion_size_range(self) -> AugmentConfig:
        low, high = self.occlusion_size
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"occlusion_size must satisfy 0 < low <= high <= 1, got {self.occlusion_size}")
        return self


# The teacher's view of an unlabeled image is meant to be *easy* (Xie et al.): flip and a mild scale, no rotation.
# The labeled stream keeps the full recipe (`augment`).
EASY_VIEW = AugmentConfig(scale_factor=0.1, rotation_factor=0.0, rotation_prob=0.0, flip_prob=0.5)


# The keypoint schema each dataset is labeled in.
DATASET_SCHEMA = {"lsp": "lsp14", "coco": "coco17", "mpii": "mpii16"}


class DataConfig(Frozen):
    dataset: Literal["lsp", "coco", "mpii"] = "lsp"
    # The model's keypoint schema; None = the dataset's own. Another schema maps the dataset's labels by joint name
    # (training/data.py): e.g. lsp + coco17 trains a COCO-17 model on LSP's 12 limb joints, the face joints get
    # weight 0 (their signal comes from pseudo-labels), and validation stays LSP PCK on the joints both share.
    keypoint_schema: Literal["lsp14", "coco17", "mpii16"] | None = None
    root: str | None = None  # default: $POSELOOP_DATA or ../shared/datasets
    # LSP splits. v1: train im0001-0800 (label budget = first N), val im0801-1000. v2 (the SSL protocol, where
    # every choice is made on a dev split and the figures come from a split nothing was chosen on): train
    # im0001-0400 (budget = first N), val = dev im0701-0800, report = im0401-0700 + im0801-1000 (500 persons).
    lsp_protocol: Literal["v1", "v2"] = "v1"
    label_budget: int | None = None  # first N labeled training records (deterministic)
    input_w: int = 96
    input_h: int = 128
    padding: float = 1.25
    augment: AugmentConfig = AugmentConfig()
    unlabeled_augment: AugmentConfig = EASY_VIEW  # the easy view semi-supervised teachers see
    num_workers: int = 1
    coco_ann_file: str | None = None  # for dataset=coco / mpii
    coco_image_dir: str | None = None
    val_ann_file: str | None = None
    unlabeled: str | None = None  # "lspet" (LSPET crops with their boxes) or a folder of images
    unlabeled_limit: int | None = None  # first N unlabeled persons (quick runs)
    # A pseudo-label cache file (training/distill/cache.py): its kept persons join the labeled train split.
    pseudo_labels: str | None = None
    # The share of pseudo-labelled persons in the train split (so in each batch, on average). None = as the cache
    # holds them: 4,859 Thunder labels beside 800 LSP labels make the labels a 14% minority. A share s repeats
    # every labeled record k = round((1 - s) / s × pseudo / labeled) times (at least once), so e.g. 0.5 gives the
    # labels half of each batch without dropping any pseudo-label.
    pseudo_share: float | None = Field(default=None, gt=0.0, lt=1.0)
    # A labeled-records file (continual/labeled.py: persons registered through POST /v1/labeled): its "train" part
    # joins the labeled train split (after the label budget); its "gate" part is never trained on.
    labeled_records: str | None = None
    # With labeled_records: skip the dataset's own splits (a machine without them); train = the file's train part,
    # validation = its gate part (one validation at the end of a retrain, so nothing is chosen on it).
    labeled_records_only: bool = False

    @property
    def input_size(self) -> Size:
        return Size(self.input_w, self.input_h)

    @property
    def model_schema(self) -> str:
        """The schema the model predicts (and its checkpoint and ONNX carry)."""
        return self.keypoint_schema or DATASET_SCHEMA[self.dataset]


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

    @model_validator(mode="after")
    def _heads_match_schema(self) -> TrainConfig:
        from models.schemas import get_schema

        expected = get_schema(self.data.model_schema).num_keypoints
        if self.model.num_keypoints != expected:
            raise ValueError(
                f"model.num_keypoints is {self.model.num_keypoints} but schema {self.data.model_schema} has {expected}"
            )
        return self

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
