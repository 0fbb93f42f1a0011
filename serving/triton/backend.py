"""Triton backend: several versions of one model served by tritonserver, swapped without downtime.

Swap = load-in-place: write the new version directory, then POST `v2/repository/models/<m>/load` with a
`config` override whose `version_policy: specific` lists the versions already READY plus the new one. Triton
keeps the old versions serving while the new one loads and never unloads them when the load fails (core
model_lifecycle; core PR #102). `unload` likewise re-loads with a config pinning the remaining versions; the
model itself is unloaded only when its last version goes. A model version is never unloaded first.
Cost: a changed config makes Triton reload every pinned version too (new stub processes started in the
background, swapped in on success), so a swap takes longer, and needs more memory, the more versions are
pinned. Keep only the active and the previous version loaded.

repo: the directory the server reads (`--model-repository`). With repo=None the repository is managed
elsewhere (e.g. a shared volume written by a deploy job): load() assumes `<model>/<version>/` already exists on
the server side and issues repository API calls only, reusing the server's current config with a new
version_policy (the first load uses the server-side config.pbtxt as is).

Control channel: pass `grpc_url` (TritonServer.grpc_url) so repository calls (load/unload/index/config/
ready) go over gRPC while inference stays on HTTP. Triton 2.51 runs an HTTP `load` synchronously on one of
its HTTP worker threads, so over HTTP every inference connection served by that thread stalls for the whole
load (measured: all requests stall with --http-thread-count=1; some, at random, with the default). gRPC
control calls run on the gRPC frontend's own threads. Without grpc_url the HTTP API is used (0 failures, but
that stall); tritonclient's gRPC half needs grpcio (`tritonclient[grpc]`, or nvidia-pytriton's dependency).

Person detector: with `detector_path`, `backend.detector` is a PersonDetector whose network is a second Triton
model, `<model>_detector` (serving.triton.detector), loaded on first use (and tried once after the first pose
version loads); its failure fails detection requests only, never a pose version's load.

Threading: every method may be called from any thread. tritonclient's HTTP client is not thread-safe, so
each thread gets its own client (kept until close()); load/unload are serialised by one lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from models.metadata import ModelMetadata
from serving.backends import BackendLoadError, BackendUnavailable
from serving.backends.embedded import warm_up
from serving.detection import DetectionError, PersonDetector
from serving.triton.control import Control, GrpcControl, HttpControl
from serving.triton.detector import TritonDetectorRunner
from serving.triton.repository import (
    DEFAULT_INPUT_NAME,
    DEFAULT_OUTPUT_NAME,
    MODEL_FILENAME,
    ModelIO,
    Runtime,
    check_version,
    config_json,
    model_config,
    parse_pbtxt,
    python_backend_config_dict,
    read_config,
    remove_version,
    render_pbtxt,
    sort_versions,
    version_dirs,
    write_config,
    write_model_version,
)
from serving.triton.server import REPOSITORY_SECRET_HEADER

log = logging.getLogger(__name__)


class TritonInferError(RuntimeError):
    """tritonserver answered an inference request with an error; `status` is its HTTP status ("400", ...)."""

    def __init__(self, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.status = status


class TritonBackend:
    """VersionedBackend over tritonserver's KServe v2 HTTP API (binary tensors).

    url: "http://127.0.0.1:8000" or "127.0.0.1:8000". repository_secret: value of the
    `poseloop-repository-secret` header the server's model-repository API requires (TritonServer sets it).
    keep_versions: besides the loaded versions, the newest `keep_versions` version directories stay on disk
    (rollback targets); older ones are pruned after each load/unload (repo-managed only).
    max_batch_size .. sys_path: the config written for repo-managed models; infer() splits batches larger than
    max_batch_size. runtime "python" (Python backend hosting onnxruntime: the pytriton-bundled server) or
    "onnxruntime" (Triton's native ORT backend, NGC images), with instances of `kind` (KIND_CPU / KIND_GPU).
    control=False: this process never changes the server's repository (another process, e.g. `poseloop
    triton-sync`, does): load() waits until the version is READY on the server and warms it up, unload() only
    stops routing to it. API replicas in front of shared Triton servers run this way.
    ready_timeout_s: how long a load may take (also the HTTP timeout of every call).
    grpc_url: "127.0.0.1:8001" to send repository control over gRPC (recommended; see module docstring).
    detector_path: the person detector ONNX served as model `detector_model` (default `<model_name>_detector`);
    None = no detector. detector_iou: its NMS IoU threshold.
    """

    def __init__(
        self,
        url: str,
        repo: Path | None = None,
        model_name: str = "poseloop",
        repository_secret: str | None = None,
        keep_versions: int = 3,
        *,
        max_batch_size: int = 16,
        instance_count: int = 1,
        intra_op_threads: int = 1,
        max_queue_delay_us: int = 2000,
        sys_path: list[str] | None = None,
        ready_timeout_s: float = 120.0,
        grpc_url: str | None = None,
        runtime: Runtime = "python",
        kind: str = "KIND_CPU",
        control: bool = True,
        detector_path: Path | None = None,
        detector_model: str | None = None,
        detector_iou: float = 0.6,
    ) -> None:
        if keep_versions < 1:
            raise ValueError(f"keep_versions {keep_versions} < 1")
        self.host = url.split("://", 1)[-1].rstrip("/")
        self.repo = Path(repo) if repo is not None else None
        self.model_name = model_name
        self.keep_versions = keep_versions
        self.max_batch_size = max_batch_size
        self.ready_timeout_s = ready_timeout_s
        if runtime not in ("python", "onnxruntime"):
            raise ValueError(f"runtime {runtime!r} not in ('python', 'onnxruntime')")
        self.runtime, self.kind, self.control = runtime, kind, control
        self._sys_path = sys_path
        self._config_kwargs: dict[str, Any] = dict(
            max_batch_size=max_batch_size,
            instance_count=instance_count,
            intra_op_threads=intra_op_threads,
            max_queue_delay_us=max_queue_delay_us,
        )
        self._headers = {REPOSITORY_SECRET_HEADER: repository_secret} if repository_secret else None
        self._names: dict[str, tuple[str, str]] = {}  # version -> (input name, output name)
        self._local = threading.local()
        self._clients: list[httpclient.InferenceServerClient] = []
        self._clients_lock = threading.Lock()
        self._repository_lock = threading.Lock()
        self._closed = False
        self._control: Control = (
            GrpcControl(grpc_url, self._headers, ready_timeout_s)
            if grpc_url
            else HttpControl(self._client, self._headers)
        )
        self.detector: PersonDetector | None = None
        self._detector_runner: TritonDetectorRunner | None = None
        if detector_path is not None:
            self._detector_runner = TritonDetectorRunner(
                self._client,
                self._control,
                detector_model or f"{model_name}_detector",
                Path(detector_path),
                repo=self.repo,
                manage=control,
                runtime=runtime,
                kind=kind,
                intra_op_threads=intra_op_threads,
                sys_path=sys_path,
                ready_timeout_s=ready_timeout_s,
            )
            self.detector = PersonDetector(self._detector_runner, iou_threshold=detector_iou)

    # ------------------------------------------------------------ VersionedBackend

    def load(self, version: str, onnx_path: Path) -> ModelMetadata:
        """Make `version` READY next to the versions already loaded; returns its metadata (from the file).

        Before returning, one batch-1 warm-up inference on zeros must give the contract's shape and finite
        values (serving.backends.embedded.warm_up, as the embedded backend does). Raises BackendLoadError
        when the file is not a servable PoseLoop model, its I/O differs from the loaded versions', Triton
        fails to load it, or the warm-up fails; the loaded versions keep serving in every case.
        Loading a version that is already loaded with the same file is a no-op; with another file, an error
        (versions are immutable)."""
        check_version(version)
        onnx_path = Path(onnx_path)
        meta, io = _read_candidate(version, onnx_path)
        if not self.control:
            return self._follow(version, meta, io)
        try:
            return self._load_controlled(version, onnx_path, meta, io)
        except OSError as err:  # Triton unreachable (connection refused / reset) or the repository volume failing
            raise BackendUnavailable(f"version {version}: Triton unavailable: {type(err).__name__}: {err}") from err

    def _load_controlled(self, version: str, onnx_path: Path, meta: ModelMetadata, io: ModelIO) -> ModelMetadata:
        with self._repository_lock:
            current = self.loaded_versions()
            if version in current:
                self._check_same_file(version, onnx_path)
                self._names[version] = (io.inputs[0].name, io.outputs[0].name)
                return meta
            if current:
                self._check_same_io(version, io)
            pinned = sort_versions([*current, version])
            existed = self.repo is not None and version in version_dirs(self.repo, self.model_name)
            if self.repo is not None:
                self._load_into_repo(self.repo, version, onnx_path, io, pinned)
            else:
                self._load_external(version, pinned)
            self._names[version] = (io.inputs[0].name, io.outputs[0].name)
            try:
                self._wait_ready(version)
                warm_up(meta, lambda batch: self.infer(version, batch), version)
            except BackendLoadError:  # loaded but unusable: back to exactly what served before
                self._names.pop(version, None)
                self._serve_only(current)
                if self.repo is not None and not existed:
                    remove_version(self.repo, self.model_name, version)
                raise
            self._prune(pinned)
        self._prepare_detector()
        return meta

    def unload(self, version: str) -> None:
        """Stop serving `version`; the other versions keep serving (re-load pinning them, never an unload).
        Raises BackendLoadError when Triton refuses the re-pin (nothing changed then)."""
        check_version(version)
        if not self.control:
            self._names.pop(version, None)
            return
        with self._repository_lock:
            current = self.loaded_versions()
            if version not in current:
                return
            remaining = [v for v in current if v != version]
            self._serve_only(remaining)
            self._names.pop(version, None)
            self._prune(remaining)

    def infer(self, version: str, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 → (N, K, h, w) float32 computed by exactly `version` (split into requests of
        at most max_batch_size). Raises TritonInferError when the server refuses (e.g. version not loaded)."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or len(batch) == 0:
            raise ValueError(f"batch shape {batch.shape}, expected (N ≥ 1, 3, H, W)")
        input_name, output_name = self._names.get(version, (DEFAULT_INPUT_NAME, DEFAULT_OUTPUT_NAME))
        client = self._client()
        parts = []
        for start in range(0, len(batch), self.max_batch_size):
            chunk = batch[start : start + self.max_batch_size]
            tensor = httpclient.InferInput(input_name, list(chunk.shape), "FP32")
            tensor.set_data_from_numpy(chunk, binary_data=True)
            try:
                result = client.infer(
                    self.model_name,
                    [tensor],
                    model_version=version,
                    outputs=[httpclient.InferRequestedOutput(output_name, binary_data=True)],
                )
            except InferenceServerException as err:
                raise TritonInferError(f"{self.model_name} version {version}: {err.message()}", err.status()) from err
            parts.append(result.as_numpy(output_name))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def loaded_versions(self) -> list[str]:
        """Versions of the model that are READY on the server, numerically sorted (repository index API; without
        control, the versions this process follows that are READY)."""
        if not self.control:
            return sorted((v for v in self._names if self._control.ready(self.model_name, v)), key=int)
        try:
            index = self._control.index()
        except InferenceServerException as err:
            raise RuntimeError(f"repository index of {self.model_name}: {err.message()}") from err
        ready = {
            str(e["version"])
            for e in index
            if e.get("name") == self.model_name and e.get("state") == "READY" and e.get("version")
        }
        return sorted(ready, key=int)

    def close(self) -> None:
        """Close every client (open keep-alive connections would make tritonserver's shutdown wait)."""
        self._closed = True
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()
        self._control.close()

    def __enter__(self) -> TritonBackend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ internals

    def _prepare_detector(self) -> None:
        """Make the detector READY early (the first request would otherwise pay its load); failure only logs."""
        if self._detector_runner is None:
            return
        try:
            self._detector_runner.ensure_ready()
        except DetectionError as err:
            log.warning("person detector not ready yet (retried on the next detection request): %s", err)

    def _client(self) -> httpclient.InferenceServerClient:
        if self._closed:
            raise RuntimeError("TritonBackend is closed")
        client = getattr(self._local, "client", None)
        if client is None:
            client = httpclient.InferenceServerClient(
                self.host, connection_timeout=self.ready_timeout_s, network_timeout=self.ready_timeout_s
            )
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def _follow(self, version: str, meta: ModelMetadata, io: ModelIO) -> ModelMetadata:
        """control=False: the server is managed elsewhere; serve `version` once it is READY there."""
        self._wait_ready(version)
        self._names[version] = (io.inputs[0].name, io.outputs[0].name)
        try:
            warm_up(meta, lambda batch: self.infer(version, batch), version)
        except BackendLoadError:
            self._names.pop(version, None)
            raise
        return meta

    def _repo_config(self, io: ModelIO, versions: list[str]) -> dict[str, Any]:
        if self.runtime == "python":
            return python_backend_config_dict(
                self.model_name, io, versions=versions, sys_path=self._sys_path, **self._config_kwargs
            )
        return model_config(
            self.model_name, io, runtime="onnxruntime", kind=self.kind, versions=versions, **self._config_kwargs
        )

    def _load_into_repo(self, repo: Path, version: str, onnx_path: Path, io: ModelIO, pinned: list[str]) -> None:
        previous_config = read_config(repo, self.model_name)
        existed = version in version_dirs(repo, self.model_name)
        write_model_version(repo, self.model_name, version, onnx_path)
        config = self._repo_config(io, pinned)
        write_config(repo, self.model_name, render_pbtxt(config))
        try:
            self._control.load(self.model_name, config_json(config))
        except InferenceServerException as err:
            if previous_config is not None:  # what is on disk describes what serves
                write_config(repo, self.model_name, previous_config)
            if not existed:
                remove_version(repo, self.model_name, version)
            raise BackendLoadError(
                f"Triton failed to load {self.model_name} version {version}: {err.message()}"
            ) from err

    def _load_external(self, version: str, pinned: list[str]) -> None:
        try:
            if len(pinned) == 1:  # nothing loaded: the server-side config.pbtxt decides, then pin if needed
                self._control.load(self.model_name, None)
                if self.loaded_versions() == pinned:
                    return
            self._control.load(self.model_name, json.dumps(self._config_pinning(pinned)))
        except InferenceServerException as err:
            raise BackendLoadError(
                f"Triton failed to load {self.model_name} version {version}: {err.message()}"
            ) from err

    def _serve_only(self, versions: list[str]) -> None:
        """Serve exactly `versions`: re-load pinning them (the model is unloaded only when none remain)."""
        try:
            if versions:
                config = self._config_pinning(versions)
                if self.repo is not None:
                    write_config(self.repo, self.model_name, render_pbtxt(config))
                self._control.load(self.model_name, json.dumps(config))
            else:
                self._control.unload(self.model_name)
        except InferenceServerException as err:
            raise BackendLoadError(f"re-pinning {self.model_name} to versions {versions}: {err.message()}") from err

    def _config_pinning(self, versions: list[str]) -> dict[str, Any]:
        """The model's config (repo-managed: config.pbtxt on disk; else the server's current one) with
        `version_policy: specific {versions}`."""
        text = read_config(self.repo, self.model_name) if self.repo is not None else None
        config = parse_pbtxt(text) if text is not None else self._control.config(self.model_name)
        config["version_policy"] = {"specific": {"versions": [int(v) for v in sort_versions(versions)]}}
        return config

    def _check_same_io(self, version: str, io: ModelIO) -> None:
        config = self._control.config(self.model_name)
        served = [
            (t["name"], t["data_type"], tuple(int(d) for d in t["dims"]))
            for kind in ("input", "output")
            for t in config.get(kind, [])
        ]
        wanted = [(t.name, t.data_type, t.dims) for t in (*io.inputs, *io.outputs)]
        if served != wanted:
            raise BackendLoadError(
                f"version {version} has I/O {wanted}, the loaded versions serve {served}; "
                "all versions of one Triton model share one config (use a new model name)"
            )

    def _check_same_file(self, version: str, onnx_path: Path) -> None:
        if self.repo is None:
            return
        served = self.repo / self.model_name / version / MODEL_FILENAME
        if served.exists() and _sha256(served) != _sha256(onnx_path):
            raise BackendLoadError(
                f"version {version} is already loaded from a different file; versions are "
                "immutable (load it under a new version)"
            )

    def _wait_ready(self, version: str) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while not self._control.ready(self.model_name, version):
            if time.monotonic() > deadline:
                raise BackendUnavailable(
                    f"{self.model_name} version {version} not ready after {self.ready_timeout_s:.0f} s"
                )
            time.sleep(0.05)

    def _prune(self, loaded: list[str]) -> None:
        """Delete version directories that are neither loaded nor among the newest `keep_versions`."""
        if self.repo is None:
            return
        on_disk = version_dirs(self.repo, self.model_name)
        keep = set(loaded) | set(on_disk[-self.keep_versions :])
        for version in on_disk:
            if version not in keep:
                remove_version(self.repo, self.model_name, version)


def _read_candidate(version: str, onnx_path: Path) -> tuple[ModelMetadata, ModelIO]:
    """Metadata and I/O of a candidate file; BackendLoadError when it is not a servable PoseLoop model."""
    try:
        io = ModelIO.from_onnx(onnx_path)
        meta = ModelMetadata.from_onnx(onnx_path)
    except Exception as err:
        raise BackendLoadError(f"version {version} ({onnx_path}): {err}") from err
    if io != ModelIO.from_metadata(meta):
        raise BackendLoadError(
            f"version {version} ({onnx_path}): graph I/O {io} disagrees with its metadata {ModelIO.from_metadata(meta)}"
        )
    return meta, io


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
