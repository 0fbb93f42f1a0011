"""Service settings in typed sections, read from POSELOOP_* environment variables (optionally an env file),
validated once at start-up.

Example:
    POSELOOP_REGISTRY_DIR=/shared/registry POSELOOP_TOKENS='{"<secret>": ["infer"], "<secret2>": ["ops", "infer"]}'
Tokens map a bearer token to its roles (`infer`, `upload`, `ops`), or to {"name": ..., "roles": [...]} when the
audit log should name the caller. POSELOOP_DEV=1 with no tokens generates one token per role at start.

Each section reads its own variables: `settings.triton.url` is POSELOOP_TRITON_URL, `settings.registry.dir` is
POSELOOP_REGISTRY_DIR (`env_names()` lists them all). The variable names are the deployment contract (compose,
k8s, .env files) and predate the sections, so a few fields keep an older name through an alias. Every field
also has a *flat name*, its variable without the prefix in lower case (`triton_url`, `registry_dir`), which
`load_settings(**overrides)` and `Settings(...)` accept. A POSELOOP_* variable that nothing reads is an error
naming the closest valid one: a misspelt setting must not be ignored silently.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ROLES = ("infer", "upload", "ops")
MIN_TOKEN_LENGTH = 16
REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
ENV_PREFIX = "POSELOOP_"
# POSELOOP_* variables read outside Settings (by the CLI, the datasets, the weight cache, compose).
OTHER_VARIABLES = {
    "POSELOOP_DATA": "labeled datasets root (training.datasets.default_data_root)",
    "POSELOOP_CACHE": "pretrained weight cache (models.pretrained.cache_dir)",
    "POSELOOP_MODEL": "the ONNX model `predict`/`serve` use by default (poseloop.workflows)",
    "POSELOOP_TAG": "image tag in deploy/docker-compose.yml",
    "POSELOOP_TRITONSERVER": "explicit tritonserver binary (serving.triton.server)",
    "POSELOOP_TOKEN": "API token of `poseloop ingest` and the ops commands (poseloop.ops_cli)",
    "POSELOOP_URL": "API URL of the ops commands (poseloop.ops_cli)",
    "POSELOOP_INFER_TOKEN": "API token of `poseloop demo` (infer role)",
    "POSELOOP_UPLOAD_TOKEN": "API token of `poseloop demo` (upload role)",
    "POSELOOP_OPS_TOKEN": "API token of `poseloop demo` (ops role)",
}


def _empty_is_none(value: Any) -> Any:
    """An optional setting given as an empty environment variable means "unset" (None), as in a .env file."""
    return None if isinstance(value, str) and value.strip() == "" else value


class TokenSpec(BaseModel):
    """Roles of one bearer token; `name` is what the audit log records as the actor."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    roles: tuple[Literal["infer", "upload", "ops"], ...]
    name: str | None = None


class _Section(BaseSettings):
    """One section: frozen, its fields read from `env_prefix` + field name (or the field's alias)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore", populate_by_name=True)


class ApiSettings(_Section):
    """The HTTP server and who may call it."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    tokens: dict[str, TokenSpec] = Field(default_factory=dict)
    dev: bool = Field(False, description="generate one token per role when none are given (never in production)")
    request_timeout_s: float = Field(30.0, gt=0)

    @field_validator("tokens", mode="before")
    @classmethod
    def _roles_list(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: {"roles": v} if isinstance(v, list | tuple) else v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _token_strength(self) -> ApiSettings:
        short = [t[:4] + "…" for t in self.tokens if len(t) < MIN_TOKEN_LENGTH]
        if short and not self.dev:
            raise ValueError(f"tokens shorter than {MIN_TOKEN_LENGTH} characters: {short} (use secrets.token_urlsafe)")
        return self


class RegistrySettings(_Section):
    """The model registry: where versions live and how replicas follow promotions."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX + "REGISTRY_")

    dir: Path = Path("runs/registry")
    poll_s: float = Field(2.0, ge=0, description="follow promotions made by other replicas; 0 = off")
    keep_versions: int = Field(
        5,
        ge=2,
        validation_alias="POSELOOP_KEEP_VERSIONS",
        description="versions kept on disk (active and previous always are)",
    )
    bootstrap_model: Path | None = Field(
        None,
        validation_alias="POSELOOP_BOOTSTRAP_MODEL",
        description="registered and promoted at start if none is active",
    )


class InferenceSettings(_Section):
    """The inference backend and the micro-batcher in front of it."""

    backend: Literal["embedded", "triton"] = "embedded"
    ort_threads: int = Field(2, ge=1, description="ONNX Runtime intra-op threads per session")
    ort_inter_threads: int = Field(1, ge=1)
    max_batch: int = Field(16, ge=1, description="crops per backend call (one request is never split)")
    max_wait_ms: float = Field(5.0, ge=0, description="how long a batch waits for more requests")
    max_queue: int = Field(512, ge=1, description="queued requests beyond which /v1/pose answers 503")
    detector_path: Path | None = Field(
        Path(__file__).resolve().parent.parent / "artifacts" / "detector-nanodet-g-416" / "model.onnx",
        description="person detector ONNX (NanoDet-g 416) for /v1/pose requests without boxes; empty = none "
        "(the whole image is one person)",
    )
    detector_iou: float = Field(0.6, gt=0, le=1, description="NMS IoU above which overlapping person boxes merge")
    det_threshold: float = Field(0.35, ge=0, le=1, description="default person score a detection needs")
    max_persons: int = Field(20, ge=1, description="default most detected persons posed per image")
    kpt_threshold: float = Field(0.3, ge=0, le=1, description="default score below which a keypoint is not valid")
    flip_test: bool = Field(False, description="default flip test (mirrored crops too; about 2× pose compute)")
    decode_min_side: int = Field(
        800,
        ge=0,
        description="a JPEG whose long side is ≥ 2× this is decoded at 1/2, 1/4 or 1/8 (libjpeg DCT scaling) while "
        "its long side stays ≥ this and every given box stays ≥ the model's crop size; keypoints are returned in "
        "full-resolution pixels; 0 = always decode in full",
    )

    _no_detector = field_validator("detector_path", mode="before")(_empty_is_none)


class TritonSettings(_Section):
    """Triton Inference Server, when `inference.backend` is triton."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX + "TRITON_")

    managed: bool = Field(
        False,
        description="start and own a local tritonserver (poseloop serve does this for --backend triton without "
        "--triton-url)",
    )
    url: str = "127.0.0.1:8000"
    grpc_url: str | None = Field(None, description="repository control over gRPC (recommended)")
    repository: Path | None = Field(None, description="the server's --model-repository, if local")
    model: str = "poseloop"
    runtime: Literal["python", "onnxruntime"] = Field(
        "python",
        description="python = Python backend hosting onnxruntime (the pytriton-bundled server); "
        "onnxruntime = Triton's native ORT backend (NGC images)",
    )
    kind: Literal["KIND_CPU", "KIND_GPU"] = Field("KIND_CPU", description="Triton instance kind")
    control: bool = Field(
        True,
        description="send repository load/unload; false = only infer versions that `poseloop triton-sync` made "
        "READY (API replicas in front of shared servers)",
    )
    repository_secret: str | None = None


class LimitSettings(_Section):
    """What one client may send (images, boxes, uploads, the pool's disk quota), how long the server waits for a
    client's bytes, and how long it waits for the broker."""

    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1)
    max_pixels: int = Field(40_000_000, ge=1, description="decoded width × height, checked before decoding")
    max_boxes: int = Field(64, ge=1)
    pixel_budget: int = Field(120_000_000, ge=1, description="decoded pixels all requests may hold at once")
    max_upload_bytes: int = Field(512 * 1024 * 1024, ge=1, description="one POST /v1/unlabeled body")
    max_upload_files: int = Field(10_000, ge=1, description="files (or archive entries) per upload request")
    max_pool_bytes: int = Field(
        50 * 1024**3, ge=1, description="disk quota of the unlabeled pool (stored image bytes); beyond it 507"
    )
    http_header_timeout_s: float = Field(
        10.0, gt=0, description="a connection that has not sent a request's headers within this is closed"
    )
    http_body_timeout_s: float = Field(
        30.0, gt=0, description="a request body that sends no byte for this long is dropped (slow POST)"
    )
    http_max_connections: int = Field(
        1000, ge=1, description="open HTTP connections per API process; more are answered 503 and closed"
    )
    broker_timeout_s: float = Field(
        5.0, ge=2.0, description="longest wait for the broker (connect, send); > Redis BRPOP's 1 s"
    )
    broker_retry_s: float = Field(
        2.0, gt=0, description="how often messages the broker did not take are sent again while it is away"
    )


class LoopSettings(_Section):
    """The continual loop's state and queue: data directory, broker, job leases."""

    data_dir: Path = Field(Path("runs/data"), description="uploads, the job table and job directories live here")
    broker_url: str | None = Field(None, description="redis://… = Celery/Redis queue; unset = embedded queue")
    job_lease_s: float = Field(120.0, gt=0, description="a job whose worker is silent this long is taken over")
    worker_poll_s: float = Field(1.0, gt=0, description="embedded worker: how often it looks for jobs")
    # Serving isolation on one box (poseloop.worker.isolation): the workers train at a lower CPU priority, on fewer
    # threads and away from the API's core, so /v1/pose latency holds while a retrain runs.
    worker_nice: int = Field(10, ge=0, le=19, description="workers' niceness (0 = the API's priority)")
    worker_threads: int = Field(
        0, ge=0, description="workers' torch / ONNX Runtime threads; 0 = every core but one (at least 1)"
    )
    worker_cpus: str = Field(
        "auto",
        pattern=r"^(auto|all|\d+(-\d+)?(,\d+(-\d+)?)*)$",
        description="cores the workers may run on: auto = all but core 0 when there are ≥ 2 (the API keeps "
        "one to itself), all, or a list such as 1,2-3",
    )
    visibility_timeout_s: float = Field(
        1800.0, gt=0, description="Redis redelivers an unacked task after this; must exceed one chunk"
    )
    worker_metrics_port: int = Field(
        9101,
        ge=0,
        le=65535,
        description="each training worker serves its own Prometheus /metrics here (chunk times, steps/s, busy, "
        "ingest checks, process); 0 = off; a second worker on the same machine finds it taken and logs it",
    )
    orphan_after_s: float = Field(600.0, ge=0, description="scheduler re-sends a job queued this long unclaimed")


class RetrainSettings(_Section):
    """The retrain job (recipe, budget), the scheduler that submits it, and the promotion gate."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX + "RETRAIN_")

    recipe: Literal["distill", "consistency"] = Field(
        "distill",
        description="distill: the teacher labels the pool once per job and the model trains on labeled + "
        "pseudo-labelled crops (the measured best, docs/benchmarks.md); consistency: the `config` recipe's "
        "semi-supervised method, a teacher forward every step",
    )
    teacher: str = Field(
        str(REPO_CONFIGS.parent / "artifacts" / "teachers" / "movenet-thunder" / "model.onnx"),
        description="distill: the teacher, an ONNX pose model (other keypoint schemas are mapped by joint name) or "
        "a .pt checkpoint; `self` = the active version itself with test-time augmentation",
    )
    distill_precision: float = Field(
        0.9,
        gt=0,
        le=1,
        description="distill: kept pseudo-label joints are right (PCK@0.2) this often on the labeled training "
        "records the thresholds are calibrated on",
    )
    distill_config: Path = Field(
        REPO_CONFIGS / "distill" / "lsp_distill.yaml",
        description="distill: the recipe whose occlusion noise the student trains with",
    )
    distill_pseudo_share: float | None = Field(
        0.5,
        gt=0,
        lt=1,
        description="distill: the pseudo-labelled share of the train split, labeled records repeated to reach it "
        "(empty: each record once). 0.5 is the measured best: distill_movenet_1to1 in docs/benchmarks.md, LSP-SSL v2",
    )
    pseudo_label_dir: Path | None = Field(
        None,
        description="distill: where label caches live (default <data dir>/pseudo_labels); a cache is keyed by its "
        "inputs, so jobs and workers sharing this directory never label the same snapshot twice",
    )
    config: Path = Field(
        REPO_CONFIGS / "ssl" / "continual.yaml",
        description="consistency: the recipe (its `method` section) the retrain job runs",
    )
    iterations: int = Field(300, ge=1, description="default retrain budget (steps)")
    keep_job_dirs: int = Field(
        20,
        ge=0,
        description="finished jobs whose directories stay whole; older ones keep only a promoted job's small "
        "record (continual.retention)",
    )
    lr: float = Field(
        1e-4,
        gt=0,
        description="fine-tuning learning rate: the active model is already trained, its from-scratch rate would "
        "undo it",
    )
    min_new_images: int = Field(200, ge=1, description="scheduler: retrain once this many new uploads")
    max_age_h: float = Field(
        168.0, gt=0, description="scheduler: retrain a model older than this (if any new image arrived)"
    )
    check_s: float = Field(
        30.0,
        gt=0,
        description="how often the scheduler checks and sweeps orphaned jobs (beat interval; each check is two "
        "SQLite counts)",
    )
    chunk_steps: int = Field(
        200,
        ge=1,
        description="Celery: training steps per task (then checkpoint and re-queue), so each task stays short",
    )
    promotion_margin: float = Field(
        0.5,
        validation_alias="POSELOOP_PROMOTION_MARGIN",
        description="candidate must beat the active metric by this (points)",
    )
    train_nproc: int = Field(
        1,
        ge=1,
        validation_alias="POSELOOP_TRAIN_NPROC",
        description="processes (one per GPU) per retrain; > 1 runs the training stage under torchrun with "
        "DistributedDataParallel",
    )

    _each_record_once = field_validator("distill_pseudo_share", mode="before")(_empty_is_none)


class LogSettings(_Section):
    """Log lines of every process (core.logs)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX + "LOG_")

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_lines: bool = Field(
        False, validation_alias="POSELOOP_LOG_JSON", description="one JSON object per line instead of text"
    )


class Settings(BaseModel):
    """Everything the API and the workers read, in sections; see the module docstring for the environment."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    api: ApiSettings
    registry: RegistrySettings
    inference: InferenceSettings
    triton: TritonSettings
    limits: LimitSettings
    loop: LoopSettings
    retrain: RetrainSettings
    log: LogSettings

    SECTIONS: ClassVar[dict[str, type[_Section]]] = {
        "api": ApiSettings,
        "registry": RegistrySettings,
        "inference": InferenceSettings,
        "triton": TritonSettings,
        "limits": LimitSettings,
        "loop": LoopSettings,
        "retrain": RetrainSettings,
        "log": LogSettings,
    }

    @model_validator(mode="before")
    @classmethod
    def _build_sections(cls, data: Any) -> Any:
        """Route flat names (`registry_dir=...`) to their section and read each section from the environment
        (and `_env_file`); an unknown flat name or POSELOOP_* variable raises, naming the closest valid one."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        env_file = data.pop("_env_file", None)
        check_environment(os.environ, "environment")
        if env_file:
            check_environment(dotenv_values(env_file), str(env_file))
        given: dict[str, dict[str, Any]] = {name: {} for name in cls.SECTIONS}
        built: dict[str, Any] = {}
        flat = flat_fields()
        for key, value in data.items():
            if key in cls.SECTIONS:
                built[key] = value
            elif key in flat:
                section, field = flat[key]
                given[section][field] = value
            else:
                raise ValueError(f"unknown setting {key!r}{_closest(key, flat)}")
        for name, section_cls in cls.SECTIONS.items():
            if name not in built:
                kwargs = {"_env_file": env_file} if env_file else {}
                built[name] = section_cls(**kwargs, **given[name])
        return built

    def updated(self, **flat: Any) -> Settings:
        """A copy with some fields changed by flat name (`updated(triton_control=True)`), validated again."""
        sections: dict[str, Any] = {}
        fields = flat_fields()
        for key, value in flat.items():
            if key not in fields:
                raise ValueError(f"unknown setting {key!r}{_closest(key, fields)}")
            section, field = fields[key]
            current = sections.get(section) or getattr(self, section).model_dump(by_alias=False)
            sections[section] = {**current, field: value}
        rebuilt = {name: type(getattr(self, name)).model_validate(values) for name, values in sections.items()}
        return self.model_copy(update=rebuilt)


def _env_name(section: type[_Section], field: str) -> str:
    alias = section.model_fields[field].validation_alias
    return alias.upper() if isinstance(alias, str) else f"{section.model_config['env_prefix']}{field}".upper()


def env_names() -> dict[str, tuple[str, str]]:
    """POSELOOP_* variable -> (section, field), for every setting."""
    return {
        _env_name(section_cls, field): (name, field)
        for name, section_cls in Settings.SECTIONS.items()
        for field in section_cls.model_fields
    }


def flat_fields() -> dict[str, tuple[str, str]]:
    """Flat name (the variable without POSELOOP_, lower case) -> (section, field)."""
    return {env[len(ENV_PREFIX) :].lower(): where for env, where in env_names().items()}


def setting_default(flat_name: str) -> Any:
    """The default of a setting by flat name (e.g. for deployment checks)."""
    section, field = flat_fields()[flat_name]
    return Settings.SECTIONS[section].model_fields[field].default


def check_environment(env: Mapping[str, str | None], where: str) -> None:
    """Raise ValueError for a POSELOOP_* name in `env` that no setting or documented variable reads."""
    known = set(env_names()) | set(OTHER_VARIABLES)
    unknown = sorted(k for k in env if k.upper().startswith(ENV_PREFIX) and k.upper() not in known)
    if unknown:
        hints = "; ".join(f"{name}{_closest(name.upper(), known)}" for name in unknown)
        raise ValueError(f"unknown POSELOOP_* variable in the {where}: {hints}")


def _closest(name: str, valid: Iterable[str]) -> str:
    match = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match else ""


def setup_process_logging(settings: Settings) -> None:
    """The one logging set-up (core.logs) with this deployment's level and format."""
    from core.logs import setup_logging

    setup_logging(settings.log.level, settings.log.json_lines)


def load_settings(env_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Settings; priority: keyword overrides (flat names) > POSELOOP_* environment variables > `env_file` >
    defaults."""
    # `_env_file` is consumed by Settings._build_sections, so it is passed untyped (not a model field)
    env: dict[str, Any] = {"_env_file": env_file} if env_file else {}
    return Settings(**env, **overrides)
