"""Service settings: environment variables with the POSELOOP_ prefix (optionally an env file), validated once.

Example:
    POSELOOP_REGISTRY_DIR=/shared/registry POSELOOP_TOKENS='{"<secret>": ["infer"], "<secret2>": ["ops", "infer"]}'
Tokens map a bearer token to its roles (`infer`, `upload`, `ops`), or to {"name": ..., "roles": [...]} when the
audit log should name the caller. POSELOOP_DEV=1 with no tokens generates one token per role at start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ROLES = ("infer", "upload", "ops")
MIN_TOKEN_LENGTH = 16
REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


class TokenSpec(BaseModel):
    """Roles of one bearer token; `name` is what the audit log records as the actor."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    roles: tuple[Literal["infer", "upload", "ops"], ...]
    name: str | None = None


class Settings(BaseSettings):
    """Everything the API process needs; see the module docstring for the environment syntax."""

    model_config = SettingsConfigDict(env_prefix="POSELOOP_", frozen=True, extra="ignore")

    registry_dir: Path = Path("runs/registry")
    keep_versions: int = Field(5, ge=2, description="versions kept on disk (active and previous always are)")
    bootstrap_model: Path | None = Field(None, description="registered and promoted at start if none is active")
    registry_poll_s: float = Field(2.0, ge=0, description="follow promotions made by other replicas; 0 = off")

    backend: Literal["embedded", "triton"] = "embedded"
    triton_managed: bool = Field(
        False,
        description="start and own a local tritonserver (poseloop serve does this "
        "for --backend triton without --triton-url)",
    )
    triton_url: str = "127.0.0.1:8000"
    triton_grpc_url: str | None = Field(None, description="repository control over gRPC (recommended)")
    triton_repository: Path | None = Field(None, description="the server's --model-repository, if local")
    triton_model: str = "poseloop"
    triton_runtime: Literal["python", "onnxruntime"] = Field(
        "python",
        description="python = Python backend hosting onnxruntime (the pytriton-bundled server); "
        "onnxruntime = Triton's native ORT backend (NGC images)",
    )
    triton_kind: Literal["KIND_CPU", "KIND_GPU"] = Field("KIND_CPU", description="Triton instance kind")
    triton_control: bool = Field(
        True,
        description="send repository load/unload; false = only infer versions "
        "that `poseloop triton-sync` made READY (API replicas in front of shared servers)",
    )
    triton_repository_secret: str | None = None
    ort_threads: int = Field(2, ge=1, description="ONNX Runtime intra-op threads per session")
    ort_inter_threads: int = Field(1, ge=1)

    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1)
    max_pixels: int = Field(40_000_000, ge=1, description="decoded width × height, checked before decoding")
    max_boxes: int = Field(64, ge=1)
    pixel_budget: int = Field(120_000_000, ge=1, description="decoded pixels all requests may hold at once")

    data_dir: Path = Field(Path("runs/data"), description="unlabeled uploads live in data_dir/uploads")
    max_upload_bytes: int = Field(512 * 1024 * 1024, ge=1, description="one POST /v1/unlabeled body")
    max_upload_files: int = Field(10_000, ge=1, description="files (or archive entries) per upload request")

    max_batch: int = Field(16, ge=1, description="crops per backend call (one request is never split)")
    max_wait_ms: float = Field(5.0, ge=0, description="how long a batch waits for more requests")
    max_queue: int = Field(512, ge=1, description="queued requests beyond which /v1/pose answers 503")
    request_timeout_s: float = Field(30.0, gt=0)

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    tokens: dict[str, TokenSpec] = Field(default_factory=dict)
    dev: bool = False

    # continual loop: queue, scheduler, retrain job, promotion gate
    broker_url: str | None = Field(None, description="redis://… = Celery/Redis queue; unset = embedded queue")
    retrain_config: Path = Field(
        REPO_CONFIGS / "ssl" / "continual.yaml", description="the recipe (its `method` section) the retrain job runs"
    )
    retrain_iterations: int = Field(300, ge=1, description="default retrain budget (steps)")
    retrain_lr: float = Field(
        1e-4,
        gt=0,
        description="fine-tuning learning rate: the active model is already "
        "trained, its from-scratch rate would undo it",
    )
    retrain_min_new_images: int = Field(200, ge=1, description="scheduler: retrain once this many new uploads")
    retrain_max_age_h: float = Field(
        168.0, gt=0, description="scheduler: retrain a model older than this (if any new image arrived)"
    )
    retrain_check_s: float = Field(
        30.0,
        gt=0,
        description="how often the scheduler checks and sweeps orphaned "
        "jobs (beat interval; each check is two SQLite counts)",
    )
    promotion_margin: float = Field(0.5, description="candidate must beat the active metric by this (points)")
    job_lease_s: float = Field(120.0, gt=0, description="a job whose worker is silent this long is taken over")
    worker_poll_s: float = Field(1.0, gt=0, description="embedded worker: how often it looks for jobs")
    train_nproc: int = Field(
        1,
        ge=1,
        description="processes (one per GPU) per retrain; > 1 runs the training "
        "stage under torchrun with DistributedDataParallel",
    )
    retrain_chunk_steps: int = Field(
        200,
        ge=1,
        description="Celery: training steps per task (then checkpoint and re-queue), so each task stays short",
    )
    visibility_timeout_s: float = Field(
        1800.0, gt=0, description="Redis redelivers an unacked task after this; must exceed one chunk"
    )
    orphan_after_s: float = Field(600.0, ge=0, description="scheduler re-sends a job queued this long unclaimed")

    @field_validator("tokens", mode="before")
    @classmethod
    def _roles_list(cls, value):
        if isinstance(value, dict):
            return {k: {"roles": v} if isinstance(v, (list, tuple)) else v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _token_strength(self) -> Settings:
        short = [t[:4] + "…" for t in self.tokens if len(t) < MIN_TOKEN_LENGTH]
        if short and not self.dev:
            raise ValueError(f"tokens shorter than {MIN_TOKEN_LENGTH} characters: {short} (use secrets.token_urlsafe)")
        return self


def load_settings(env_file: Path | str | None = None, **overrides) -> Settings:
    """Settings; priority: keyword overrides > POSELOOP_* environment variables > `env_file` > defaults."""
    return Settings(_env_file=env_file, **overrides) if env_file else Settings(**overrides)
