"""Triton serving against a real tritonserver (the nvidia-pytriton wheel's 2.51 binary) over real HTTP.

Config generation, the restricted repository API, ONNX Runtime parity through the Python backend, hot swap
under client load (load-in-place, never unload first), a broken candidate, and clean shutdown.
The server tests skip, with the reason, when no tritonserver can run on this machine; the config tests
(no server needed) always run.
"""

from __future__ import annotations

import math
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from models.detection import NANODET_G_416, detector_input
from models.metadata import ModelMetadata
from serving.triton.backend import BackendLoadError, TritonBackend, TritonInferError
from serving.triton.repository import (
    ModelIO,
    RepositoryError,
    config_mismatches,
    detector_config_dict,
    onnxruntime_config,
    parse_pbtxt,
    production_config_matches_onnx,
    python_backend_config,
    read_config,
    render_pbtxt,
    version_dirs,
)
from serving.triton.server import REPOSITORY_SECRET_HEADER, TritonServer, TritonUnavailable, find_tritonserver
from tests.serving_fixtures import wait_for

pytestmark = pytest.mark.slow

MODEL = "pose"
H, W = 128, 96  # non-square on purpose
TOLERANCE = 1e-5
PHASE_ANSWERS = 8  # answers the traffic must get before and after each load/unload step (not a fixed sleep)
DETECTOR = Path(__file__).resolve().parents[1] / "artifacts" / "detector-nanodet-g-416" / "model.onnx"


# ---------------------------------------------------------------- models


def export_random_model(seed: int, path: Path) -> Path:
    """A random-init mobilenet_v2 PoseNet with O(1), varied outputs (so different seeds differ clearly)."""
    import torch
    from torch import nn

    from models.codec import HeatmapCodec
    from models.export import export_onnx
    from models.geometry import Size
    from models.network import ModelConfig, build_model
    from models.schemas import LSP14

    torch.manual_seed(seed)
    model = build_model(ModelConfig(backbone="mobilenet_v2", pretrained=False, num_keypoints=14))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        model.eval()
        scale = 0.3 / model(torch.randn(2, 3, H, W)).std()
        model.head.final_layer.weight.mul_(scale)
        model.head.final_layer.bias.mul_(scale)
    codec = HeatmapCodec.for_input(Size(W, H), 4, sigma=2.0, refinement="quarter")
    return export_onnx(model, codec, LSP14, path, version=f"seed{seed}", trained_on="t", exporter="torchscript").path


def offset_model(source: Path, path: Path, offset: float) -> Path:
    """`source` with `offset` added to its heatmaps (a third, distinct version without another export)."""
    proto = onnx.load(str(source))
    for node in proto.graph.node:
        node.output[:] = ["heatmaps_base" if o == "heatmaps" else o for o in node.output]
        node.input[:] = ["heatmaps_base" if i == "heatmaps" else i for i in node.input]
    proto.graph.initializer.append(numpy_helper.from_array(np.array(offset, np.float32), "test_offset"))
    proto.graph.node.append(helper.make_node("Add", ["heatmaps_base", "test_offset"], ["heatmaps"]))
    onnx.save(proto, str(path))
    return path


def broken_graph_model(source: Path, path: Path) -> Path:
    """Parses, carries valid metadata and I/O, but onnxruntime cannot build a session (unknown op)."""
    proto = onnx.load(str(source))
    proto.graph.node[0].op_type = "PoseLoopNoSuchOp"
    onnx.save(proto, str(path))
    return path


def local_output(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    return session.run(["heatmaps"], {"input": x})[0]


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory) -> dict[str, Path]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("onnx")
        v1 = export_random_model(1, root / "v1.onnx")
        v2 = export_random_model(2, root / "v2.onnx")
    finally:
        torch.set_num_threads(threads)
    return {
        "1": v1,
        "2": v2,
        "3": offset_model(v1, root / "v3.onnx", 0.5),
        "broken": broken_graph_model(v1, root / "broken.onnx"),
    }


@pytest.fixture(scope="module")
def inputs() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((6, 3, H, W)).astype(np.float32)


@pytest.fixture(scope="module")
def expected(onnx_files, inputs) -> dict[str, np.ndarray]:
    return {v: local_output(onnx_files[v], inputs) for v in ("1", "2", "3")}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Every server test skips, with the reason, when no tritonserver can run here (config tests still run)."""
    if find_tritonserver() is None:
        pytest.skip("no tritonserver binary (install nvidia-pytriton, or set $POSELOOP_TRITONSERVER)")
    root = tmp_path_factory.mktemp("triton")
    # One HTTP worker thread: a repository call that blocked it (an HTTP `load`) would stall every inference
    # connection, so the hot-swap test below proves control really goes around HTTP (gRPC).
    triton = TritonServer(root / "repo", log_path=root / "tritonserver.log", extra_args=("--http-thread-count=1",))
    try:
        triton.start()
    except TritonUnavailable as err:
        print(f"tritonserver cannot run here: {err}")
        pytest.skip(f"tritonserver cannot run here: {str(err).splitlines()[0]}")
    yield triton
    triton.stop()


@pytest.fixture(scope="module")
def backend(server):
    client = TritonBackend(
        server.url,
        server.repo,
        MODEL,
        server.repository_secret,
        keep_versions=2,
        max_batch_size=8,
        grpc_url=server.grpc_url,
    )
    yield client
    client.close()


class Traffic:
    """Client threads sending requests continuously to the versions currently routed to, checking every
    response against the local onnxruntime output of the version it asked for."""

    def __init__(
        self,
        backend: TritonBackend,
        inputs: np.ndarray,
        expected: dict[str, np.ndarray],
        versions: list[str],
        threads: int = 4,
        pause_s: float = 0.005,
    ) -> None:
        self.backend, self.inputs, self.expected = backend, inputs, expected
        self.pause_s = pause_s
        self._versions = list(versions)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]
        self.failures: list[str] = []
        self.wrong: list[tuple[str, float]] = []
        self.done: list[tuple[float, str]] = []  # (completion time, version)
        self.max_latency_s = 0.0

    def route(self, versions: list[str]) -> None:
        with self._lock:
            self._versions = list(versions)

    def served(self, start: float, end: float) -> Counter:
        return Counter(v for t, v in list(self.done) if start <= t <= end)

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self._stop.is_set():
            with self._lock:
                version = rng.choice(self._versions)
            n = rng.choice([1, 2, 3])
            start = rng.randrange(len(self.inputs) - n + 1)
            sent = time.monotonic()
            try:
                out = self.backend.infer(version, self.inputs[start : start + n])
            except Exception as err:
                self.failures.append(f"v{version}: {err!r}")
            else:
                self.max_latency_s = max(self.max_latency_s, time.monotonic() - sent)
                diff = float(np.abs(out - self.expected[version][start : start + n]).max())
                if diff > TOLERANCE:
                    self.wrong.append((version, diff))
                self.done.append((time.monotonic(), version))
            time.sleep(self.pause_s)

    def wait_served(self, count: int, version: str | None = None, since: float = 0.0) -> None:
        """Until `count` more answers (of `version`, when given) completed after `since`."""

        def enough() -> bool:
            served = self.served(since, math.inf)
            return (served[version] if version else sum(served.values())) >= count

        wait_for(enough, 120, f"{count} answers{' from v' + version if version else ''}", 0.02)

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        self.wait_served(PHASE_ANSWERS)
        return self

    def __exit__(self, *exc) -> None:
        self.wait_served(PHASE_ANSWERS, since=time.monotonic())
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


def post(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=b"{}", headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


# ---------------------------------------------------------------- configs (no server)


def test_both_configs_come_from_one_description(onnx_files) -> None:
    meta = ModelMetadata.from_onnx(onnx_files["1"])
    cpu = parse_pbtxt(python_backend_config(MODEL, meta, versions=["2", "1"], sys_path=["/x/site-packages"]))
    gpu = parse_pbtxt(onnxruntime_config(MODEL, meta, versions=["1", "2"], tensorrt=True, tensorrt_cache_dir="/trt"))
    shared = ("name", "input", "output", "max_batch_size", "dynamic_batching", "version_policy", "parameters")
    assert {k: cpu[k] for k in shared if k != "parameters"} == {k: gpu[k] for k in shared if k != "parameters"}
    assert cpu["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": ["3", "128", "96"]}]
    assert cpu["output"] == [{"name": "heatmaps", "data_type": "TYPE_FP32", "dims": ["14", "32", "24"]}]
    assert cpu["version_policy"] == {"specific": {"versions": ["1", "2"]}}
    assert (cpu["backend"], "platform" in cpu) == ("python", False)
    assert (gpu["platform"], "backend" in gpu) == ("onnxruntime_onnx", False)
    assert cpu["instance_group"] == [{"kind": "KIND_CPU", "count": 1}]
    assert gpu["instance_group"] == [{"kind": "KIND_GPU", "count": 1}]
    assert cpu["parameters"]["sys_path"] == {"string_value": "/x/site-packages"}
    assert cpu["parameters"]["intra_op_thread_count"] == gpu["parameters"]["intra_op_thread_count"]
    accelerator = gpu["optimization"]["execution_accelerators"]["gpu_execution_accelerator"][0]
    assert accelerator["name"] == "tensorrt" and accelerator["parameters"]["precision_mode"] == "FP16"
    assert accelerator["parameters"]["trt_engine_cache_path"] == "/trt"
    assert ModelIO.from_onnx(onnx_files["1"]) == ModelIO.from_metadata(meta)  # graph and contract agree
    with pytest.raises(ValueError, match="unknown_field|invalid"):
        render_pbtxt({"name": MODEL, "unknown_field": 1})


def test_production_config_is_checked_against_the_onnx_graph(onnx_files, tmp_path) -> None:
    config = onnxruntime_config(MODEL, ModelMetadata.from_onnx(onnx_files["1"]), versions=["1"])
    assert production_config_matches_onnx(config, onnx_files["1"])
    proto = onnx.load(str(onnx_files["1"]))
    proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 17  # e.g. a COCO-17 export
    proto.graph.input[0].name = "image"
    other = tmp_path / "other.onnx"
    onnx.save(proto, str(other))
    problems = config_mismatches(config, other)
    assert not production_config_matches_onnx(config, other)
    assert any("output 'heatmaps'" in p and "17" in p for p in problems), problems
    assert any("input 'image'" in p for p in problems) and any("input 'input'" in p for p in problems)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    assert "not a readable ONNX model" in config_mismatches(config, garbage)[0]


def test_detector_config_is_unbatched_with_every_output() -> None:
    if not DETECTOR.exists():
        pytest.skip(f"{DETECTOR} not found")
    with pytest.raises(RepositoryError, match="batch axis"):  # fixed (1, 3, 416, 416): not a batching model
        ModelIO.from_onnx(DETECTOR)
    graph = ModelIO.from_onnx(DETECTOR, batched=False)
    io = ModelIO.for_detector(NANODET_G_416)
    assert graph.inputs == io.inputs and sorted(o.name for o in graph.outputs) == sorted(o.name for o in io.outputs)
    for runtime in ("python", "onnxruntime"):
        config = parse_pbtxt(render_pbtxt(detector_config_dict("det", io, runtime=runtime, sys_path=["/x"])))
        assert config.get("max_batch_size", 0) == 0 and "dynamic_batching" not in config
        assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": ["1", "3", "416", "416"]}]
        assert {o["name"]: [int(d) for d in o["dims"]] for o in config["output"]} == {
            k: list(v) for k, v in NANODET_G_416.output_shapes().items()
        }
        assert config["version_policy"] == {"specific": {"versions": ["1"]}}


# ---------------------------------------------------------------- real server


def test_repository_api_is_restricted_by_the_secret_header(server) -> None:
    status, body = post(f"{server.url}/v2/repository/index")
    assert status == 403 and REPOSITORY_SECRET_HEADER in body
    assert post(f"{server.url}/v2/repository/index", {REPOSITORY_SECRET_HEADER: "wrong"})[0] == 403
    assert post(f"{server.url}/v2/repository/models/{MODEL}/unload")[0] == 403
    assert post(f"{server.url}/v2/repository/index", server.repository_headers)[0] == 200
    with urllib.request.urlopen(f"{server.url}/v2/health/live", timeout=5) as response:  # open endpoints
        assert response.status == 200
    command = " ".join(server.command())
    assert "--model-control-mode=explicit" in command and "--disable-auto-complete-config" in command


def test_load_and_infer_match_onnxruntime(backend, onnx_files, inputs, expected, server) -> None:
    started = time.monotonic()
    meta = backend.load("1", onnx_files["1"])
    print(f"cold load of v1: {time.monotonic() - started:.2f} s")
    assert meta.version == "seed1" and meta.input_size.h == H
    assert backend.loaded_versions() == ["1"]
    for n in (1, 5):
        out = backend.infer("1", inputs[:n])
        assert out.shape == (n, 14, 32, 24) and out.dtype == np.float32
        assert np.abs(out - expected["1"][:n]).max() <= TOLERANCE
    big = np.concatenate([inputs, inputs])  # 12 > max_batch_size 8: split into two requests
    assert np.abs(backend.infer("1", big) - np.concatenate([expected["1"]] * 2)).max() <= TOLERANCE
    with pytest.raises(TritonInferError, match="version 2"):
        backend.infer("2", inputs[:1])
    with pytest.raises(TritonInferError) as refused:  # wrong crop size: refused by Triton, per request
        backend.infer("1", np.zeros((1, 3, 64, 64), np.float32))
    assert refused.value.status == "400"
    assert backend.load("1", onnx_files["1"]).version == "seed1"  # idempotent
    with pytest.raises(BackendLoadError, match="immutable"):
        backend.load("1", onnx_files["2"])


def test_hot_swap_under_load(backend, onnx_files, inputs, expected, server) -> None:
    if backend.loaded_versions() != ["1"]:
        backend.load("1", onnx_files["1"])
    with Traffic(backend, inputs, expected, ["1"]) as traffic:
        t0 = time.monotonic()
        backend.load("2", onnx_files["2"])
        t1 = time.monotonic()
        traffic.route(["1", "2"])
        traffic.wait_served(PHASE_ANSWERS, "2", since=t1)
        t2 = time.monotonic()
        backend.load("3", onnx_files["3"])
        t3 = time.monotonic()
        traffic.route(["2", "3"])  # the router stops sending to v1 before it is unloaded
        traffic.wait_served(PHASE_ANSWERS, "3", since=t3)
        t4 = time.monotonic()
        backend.unload("1")
        t5 = time.monotonic()
    print(
        f"load-in-place v2: {t1 - t0:.2f} s, v3: {t3 - t2:.2f} s, unload v1: {t5 - t4:.2f} s; "
        f"{len(traffic.done)} requests, {Counter(v for _, v in traffic.done)}, "
        f"max latency {traffic.max_latency_s:.2f} s"
    )
    assert traffic.failures == []
    assert traffic.wrong == []
    assert traffic.served(t0, t1)["1"] > 0  # v1 kept answering while v2 loaded
    assert traffic.served(t2, t3)["2"] > 0 and traffic.served(t4, t5)["3"] > 0
    assert all(Counter(v for _, v in traffic.done)[v] > 0 for v in ("1", "2", "3"))
    assert backend.loaded_versions() == ["2", "3"]
    assert version_dirs(server.repo, MODEL) == ["2", "3"]  # keep_versions=2: the unloaded v1 was pruned
    assert parse_pbtxt(read_config(server.repo, MODEL))["version_policy"] == {"specific": {"versions": ["2", "3"]}}


def test_broken_candidate_is_refused_and_old_versions_keep_serving(
    backend, onnx_files, inputs, expected, server, tmp_path
) -> None:
    before = backend.loaded_versions()
    config_before = read_config(server.repo, MODEL)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(onnx_files["1"].read_bytes()[:4096])
    with Traffic(backend, inputs, expected, before) as traffic:
        with pytest.raises(BackendLoadError, match="not a readable ONNX model"):
            backend.load("4", truncated)
        started = time.monotonic()
        with pytest.raises(BackendLoadError, match="Triton failed to load.*PoseLoopNoSuchOp"):
            backend.load("4", onnx_files["broken"])  # passes our checks; onnxruntime refuses it (HTTP 400)
        failed = time.monotonic()
        with pytest.raises(BackendLoadError, match="non-finite"):
            backend.load("4", offset_model(onnx_files["1"], tmp_path / "nan.onnx", float("nan")))  # loads, NaN out
    print(f"refused broken candidate in {failed - started:.2f} s; {len(traffic.done)} requests served")
    assert traffic.failures == [] and traffic.wrong == []
    assert sum(traffic.served(started, failed).values()) > 0
    assert traffic.served(failed, time.monotonic())  # and while the NaN version was loaded, then dropped
    assert backend.loaded_versions() == before
    assert read_config(server.repo, MODEL) == config_before and "4" not in version_dirs(server.repo, MODEL)


def test_external_repository_mode(server, onnx_files, inputs, expected) -> None:
    """repo=None: the version directories exist server-side already; only repository API calls are made."""
    external = TritonBackend(server.url, None, MODEL, server.repository_secret)
    try:
        assert external.loaded_versions() == ["2", "3"]
        external.unload("2")
        assert external.loaded_versions() == ["3"]
        external.load("2", onnx_files["2"])  # 2/ is still on disk: a rollback to it
        assert external.loaded_versions() == ["2", "3"]
        assert np.abs(external.infer("2", inputs[:2]) - expected["2"][:2]).max() <= TOLERANCE
    finally:
        external.close()
    with TritonBackend(server.url, None, MODEL) as anonymous, pytest.raises(RuntimeError, match="restricted"):
        anonymous.loaded_versions()  # no secret, no repository API


def test_triton_sync_owns_the_repository_and_followers_serve_what_it_loads(
    server, onnx_files, inputs, expected, tmp_path
) -> None:
    """The scale-out pattern: a sync process loads every servable registry version into its server; an API-side
    backend with control=False never touches the repository, it serves a version once the sync made it READY."""
    from models.registry import ModelRegistry
    from serving.triton.sync import TritonSync

    registry = ModelRegistry(tmp_path / "registry")
    first = registry.register(onnx_files["1"], actor="test").version
    second = registry.register(onnx_files["2"], actor="test").version
    registry.set_active(first, "test")
    owner = TritonBackend(server.url, server.repo, "synced", server.repository_secret, grpc_url=server.grpc_url)
    follower = TritonBackend(server.url, None, "synced", control=False, ready_timeout_s=5)
    try:
        with pytest.raises(BackendLoadError, match="not ready"):  # nothing synced yet: it waits, never loads
            follower.load(first, registry.get(first).onnx_path)
        report = TritonSync(registry, owner).once()
        assert sorted(report.loaded) == [first, second] and owner.loaded_versions() == [first, second]
        assert TritonSync(registry, owner).once().loaded == []  # idempotent
        follower.load(second, registry.get(second).onnx_path)  # a promotion on an API replica: READY already
        assert np.abs(follower.infer(second, inputs[:2]) - expected["2"][:2]).max() <= TOLERANCE
        registry.mark_rejected(second, "bad", "test")
        assert TritonSync(registry, owner).once().unloaded == [second]
        assert owner.loaded_versions() == [first] and follower.loaded_versions() == []
    finally:
        follower.close()
        owner.close()


def detector_triton(server) -> TritonBackend:
    """A second pose model, `detpose`, with the person detector beside it (model `detpose_detector`).
    Close it before the test ends: an open client would hold up the server's stop (the last test)."""
    if not DETECTOR.exists():
        pytest.skip(f"{DETECTOR} not found")
    return TritonBackend(
        server.url, server.repo, "detpose", server.repository_secret, grpc_url=server.grpc_url, detector_path=DETECTOR
    )


def test_detector_is_a_second_model_matching_onnxruntime(server, onnx_files) -> None:
    with detector_triton(server) as triton:
        triton.load("1", onnx_files["1"])  # the first pose load also makes the detector READY
        assert (server.repo / "detpose_detector" / "1" / "model.onnx").exists()  # written beside the pose model
        assert triton.loaded_versions() == ["1"] and triton.detector is not None
        x = np.random.default_rng(1).standard_normal(NANODET_G_416.input_shape).astype(np.float32)
        got = triton.detector.runner.run(x)
    session = ort.InferenceSession(str(DETECTOR), providers=["CPUExecutionProvider"])
    names = list(NANODET_G_416.output_names)
    for name, want in zip(names, session.run(names, {"input": x})):
        assert got[name].shape == want.shape and np.abs(got[name] - want).max() <= 1e-4, name


def test_triton_detector_finds_the_players_the_embedded_one_finds(server) -> None:
    import cv2

    from serving.backends.detector import embedded_detector
    from tests.data_paths import data_path

    image = cv2.cvtColor(cv2.imread(str(data_path("wild", "basketball1.png"))), cv2.COLOR_BGR2RGB)
    with detector_triton(server) as triton:  # no pose version loaded here: the first detection loads the detector
        assert triton.detector is not None
        served = triton.detector.detect(image, 0.35, 20)
    local = embedded_detector(DETECTOR, intra_op_threads=1).detect(image, 0.35, 20)
    assert len(served) >= 2 and len(served) == len(local)
    np.testing.assert_allclose(served.boxes, local.boxes, atol=0.05)
    assert detector_input(image)[0].shape == NANODET_G_416.input_shape


def test_triton_sync_keeps_the_detector_loaded_for_followers(server, onnx_files, tmp_path) -> None:
    """API replicas (control=False) only wait for `<model>_detector`; the sync loads it — also when every pose
    version is already loaded, and again after the server dropped it (it asks the server, not its own memory)."""
    import tritonclient.http as httpclient

    from models.registry import ModelRegistry
    from serving.detection import DetectionError
    from serving.triton.sync import TritonSync

    if not DETECTOR.exists():
        pytest.skip(f"{DETECTOR} not found")
    registry = ModelRegistry(tmp_path / "registry")
    registry.set_active(registry.register(onnx_files["1"], actor="test").version, "test")
    args = (server.url, server.repo, "syncdet", server.repository_secret)
    plain = TritonBackend(*args, grpc_url=server.grpc_url)  # an earlier sync, before a detector was configured
    owner = TritonBackend(*args, grpc_url=server.grpc_url, detector_path=DETECTOR)
    follower = TritonBackend(server.url, None, "syncdet", control=False, ready_timeout_s=3, detector_path=DETECTOR)
    image = np.zeros((120, 160, 3), np.uint8)
    try:
        assert TritonSync(registry, plain).once().detector is None  # no detector configured: nothing to do
        assert follower.detector is not None
        with pytest.raises(DetectionError, match="syncdet_detector"):  # the follower never loads it itself
            follower.detector.detect(image, 0.35, 20)
        report = TritonSync(registry, owner).once()
        assert report.loaded == [] and report.detector == "loaded" and report.failed == {}
        assert len(follower.detector.detect(image, 0.35, 20)) == 0  # READY now: it runs (nobody in a flat image)
        assert TritonSync(registry, owner).once().detector == "ready"  # idempotent
        client = httpclient.InferenceServerClient(server.url.split("://", 1)[-1])
        try:  # the server loses it (as after a restart): the owner's cached READY must not hide that
            client.unload_model("syncdet_detector", headers={REPOSITORY_SECRET_HEADER: server.repository_secret})
            wait_for(lambda: not client.is_model_ready("syncdet_detector", "1"), 30, "the detector to unload")
        finally:
            client.close()
        assert TritonSync(registry, owner).once().detector == "loaded"
        assert len(follower.detector.detect(image, 0.35, 20)) == 0
    finally:
        for backend in (follower, owner, plain):
            backend.close()


def test_stop_leaves_no_processes_or_shm(server, backend, onnx_files) -> None:
    backend.load("2", onnx_files["2"])
    backend.close()  # open keep-alive connections would make the server wait out its exit timeout
    members = server.group_processes()
    assert server.pid in members and len(members) >= 2  # the server and its backend stubs
    assert server.shm_segments()
    started = time.monotonic()
    server.stop()
    stop_s = time.monotonic() - started
    print(f"stop took {stop_s:.2f} s")
    assert stop_s < server.exit_timeout_s  # no client left a connection open (Triton would wait it out)
    assert server.group_processes() == [] and server.shm_segments() == []
    assert [pid for pid in members if _alive(pid)] == []


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] != "Z"  # zombies are dead


def test_triton_modules_never_import_torch() -> None:
    code = (
        "import sys\nimport serving.triton.repository, serving.triton.server, serving.triton.backend\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "print(bad)\nsys.exit(1 if bad else 0)\n"
    )
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "torch" not in (repo / "serving" / "triton" / "python_model.py").read_text()
