"""Hot swap under concurrent load, end to end: a live server process (embedded ONNX Runtime, micro-batching),
8 client threads posting /v1/pose non-stop while 3 promotions, 1 broken candidate and 1 rollback happen
(1 → 2 → 3 → broken (rejected) → rollback to 2 → 3 again).

Checks: no request fails; every response's X-Model-Version was active at some moment between the request's
start and its response (from the client-side timeline of promote calls); and its keypoints are exactly what
that version computes locally, so the label is truthful. Three differently initialised exported MobileNetV2
models make every version's keypoints distinguishable.
"""

from __future__ import annotations

import json
import math
import secrets
import threading
import time
from dataclasses import dataclass

import httpx
import numpy as np
import pytest

from models.registry import ModelRegistry
from serving.backends import VersionView
from serving.backends.embedded import EmbeddedBackend
from serving.backends.onnxruntime import OnnxRuntimeBackend
from serving.batching import BatchError, MicroBatcher
from serving.manager import ModelManager
from serving.pipeline import PosePipeline
from tests.serving_fixtures import (
    auth,
    encode,
    export_posenet,
    process_server,
    sample_image,
    tiny_pose_onnx,
    wait_for,
)

pytestmark = pytest.mark.integration  # real server processes: `make test`, not `make test-fast`

INFER, OPS = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
SEEDS = (11, 12, 13)
CLIENTS = 8
PHASE_REQUESTS = 40  # responses each phase (before the first change, after each) must see before the next
REQUESTS = [  # (image, boxes); always explicit boxes: this test is about hot swap, not the person detector
    (sample_image(20, (160, 120)), [[0.0, 0.0, 160.0, 120.0]]),
    (sample_image(21, (200, 150)), [[10.0, 10.0, 60.0, 120.0], [90.0, 20.0, 70.0, 125.0]]),
    (sample_image(22, (120, 160)), [[-10.0, 20.0, 100.0, 150.0]]),
]


@dataclass
class Sample:
    request: int
    start: float
    end: float
    status: int
    version: str | None
    keypoints: np.ndarray | None
    scores: np.ndarray | None
    error: str = ""


@pytest.fixture(scope="module")
def registry_with_versions(tmp_path_factory):
    root = tmp_path_factory.mktemp("hot_swap")
    registry = ModelRegistry(root / "registry")
    paths = {}
    for seed in SEEDS:
        info = registry.register(export_posenet(root, seed), metrics={"seed": seed}, actor="test")
        paths[info.version] = info.onnx_path
    broken = registry.register(tiny_pose_onnx(root / "broken.onnx", broken="nan"), actor="test")
    return root, registry, paths, broken.version


def references(paths) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """version → per request (keypoints (N, K, 2), scores (N, K)) computed locally by that version."""
    out = {}
    for version, path in paths.items():
        with OnnxRuntimeBackend(path, intra_op_threads=1) as backend:
            pipeline = PosePipeline(backend)
            out[version] = []
            for image, boxes in REQUESTS:
                poses = pipeline.predict(image, boxes)
                out[version].append(
                    (np.stack([p.keypoints for p in poses]), np.stack([p.keypoint_scores for p in poses]))
                )
    return out


def client_loop(
    client: httpx.Client, stop: threading.Event, started: threading.Event, samples: list[Sample], seed: int
) -> None:
    bodies = [
        {"files": {"image": ("x.png", encode(img)), **({"boxes": (None, json.dumps(b))} if b else {})}}
        for img, b in REQUESTS
    ]
    rng = np.random.default_rng(seed)
    with client:
        while not stop.is_set():
            i = int(rng.integers(len(REQUESTS)))
            start = time.monotonic()
            try:
                r = client.post("/v1/pose", **bodies[i])
            except httpx.HTTPError as err:
                samples.append(Sample(i, start, time.monotonic(), 0, None, None, None, repr(err)))
                continue
            end = time.monotonic()
            if r.status_code != 200:
                samples.append(Sample(i, start, end, r.status_code, None, None, None, r.text[:200]))
                continue
            persons = r.json()["persons"]
            kp = np.array([[[k["x"], k["y"]] for k in p["keypoints"]] for p in persons])
            sc = np.array([[k["score"] for k in p["keypoints"]] for p in persons])
            samples.append(Sample(i, start, end, 200, r.headers["x-model-version"], kp, sc))
            assert r.json()["model_version"] == r.headers["x-model-version"]
            started.set()


def active_intervals(timeline: list[tuple[str, float, float]]) -> dict[str, list[tuple[float, float]]]:
    """version → [(earliest it may have become active, latest it may have stopped being active)]."""
    intervals: dict[str, list[tuple[float, float]]] = {}
    for i, (version, start, _end) in enumerate(timeline):
        until = timeline[i + 1][2] if i + 1 < len(timeline) else math.inf
        intervals.setdefault(version, []).append((start, until))
    return intervals


def test_hot_swap_under_load_is_lossless_and_labels_are_truthful(registry_with_versions) -> None:
    _root, registry, paths, broken = registry_with_versions
    refs = references(paths)
    for a in refs:  # every version's keypoints differ from every other's somewhere by > 2 px
        for b in refs:
            if a < b:
                assert max(np.abs(refs[a][i][0] - refs[b][i][0]).max() for i in range(len(REQUESTS))) > 2.0

    env = {
        "POSELOOP_REGISTRY_DIR": str(registry.root),
        "POSELOOP_ORT_THREADS": "1",
        "POSELOOP_REGISTRY_POLL_S": "0",
        "POSELOOP_TOKENS": json.dumps({INFER: ["infer"], OPS: ["ops"]}),
        "POSELOOP_MAX_WAIT_MS": "5",
    }
    timeline: list[tuple[str, float, float]] = []
    swaps: list[dict] = []
    with process_server(env) as (base, _proc), httpx.Client(base_url=base, timeout=60, headers=auth(OPS)) as ops:
        assert ops.get("/readyz").status_code == 503

        def change(path: str, payload: dict | None, expect: int = 200) -> None:
            start = time.monotonic()
            r = ops.post(path, json=payload)
            end = time.monotonic()
            assert r.status_code == expect, r.text
            if expect == 200:
                timeline.append((r.json()["active"], start, end))
                swaps.append(r.json())

        change("/v1/ops/promote", {"version": "1"})
        stop, samples = threading.Event(), []
        started = [threading.Event() for _ in range(CLIENTS)]
        clients = [httpx.Client(base_url=base, timeout=30, headers=auth(INFER)) for _ in range(CLIENTS)]
        threads = [
            threading.Thread(target=client_loop, args=(c, stop, e, samples, i))
            for i, (c, e) in enumerate(zip(clients, started))
        ]
        for t in threads:
            t.start()
        try:
            assert all(e.wait(30) for e in started)  # every client is sending

            def phase(name: str) -> None:  # let the clients get PHASE_REQUESTS more answers
                mark = len(samples)
                wait_for(lambda: len(samples) >= mark + PHASE_REQUESTS, 120, f"{PHASE_REQUESTS} answers {name}", 0.02)

            phase("before the first change")
            for path, payload, expect in (
                ("/v1/ops/promote", {"version": "2"}, 200),
                ("/v1/ops/promote", {"version": "3"}, 200),
                ("/v1/ops/promote", {"version": broken}, 422),  # broken candidate: rejected, 3 keeps serving
                ("/v1/ops/rollback", None, 200),  # back to 2
                ("/v1/ops/promote", {"version": "3"}, 200),
            ):
                change(path, payload, expect)
                phase(f"after {path} {payload}")
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        metrics = httpx.get(base + "/metrics").text

    assert [v for v, _, _ in timeline] == ["1", "2", "3", "2", "3"]
    failed = [s for s in samples if s.status != 200]
    assert not failed, failed[:5]
    assert len(samples) >= 6 * PHASE_REQUESTS
    intervals = active_intervals(timeline)
    by_version: dict[str, int] = {}
    for s in samples:
        by_version[s.version] = by_version.get(s.version, 0) + 1
        assert any(lo <= s.end and s.start <= hi for lo, hi in intervals[s.version]), (s.version, s.start, s.end)
        ref_kp, ref_sc = refs[s.version][s.request]
        assert s.keypoints.shape == ref_kp.shape
        assert np.abs(s.keypoints - ref_kp).max() <= 0.5, (s.version, s.request)
        assert np.abs(s.scores - ref_sc).max() <= 1e-3
    assert set(by_version) == {"1", "2", "3"}, by_version  # every version served under load
    assert broken not in by_version

    info = registry.get(broken)
    assert info.state == "rejected" and "non-finite" in info.reason
    assert registry.active().version == "3" and registry.previous_active().version == "2"
    batched = [line for line in metrics.splitlines() if line.startswith("poseloop_batch_requests_")]
    count = float(next(line for line in batched if line.startswith("poseloop_batch_requests_count")).split()[-1])
    total = float(next(line for line in batched if line.startswith("poseloop_batch_requests_sum")).split()[-1])
    assert total > count  # some batches held several requests
    print(f"\nhot swap: {len(samples)} requests, per version {by_version}, mean requests/batch {total / count:.2f}")
    for swap in swaps:
        print(f"  {swap['action']} {swap['previous']} → {swap['active']}: {swap['timing_ms']}")


# ---------------------------------------------------------------------- manager and batcher, in process
class FlakyBackend(EmbeddedBackend):
    """EmbeddedBackend that records every infer call and fails the ones whose batch has `fail_size` crops."""

    def __init__(self) -> None:
        super().__init__(intra_op_threads=1)
        self.calls: list[tuple[str, int]] = []
        self.fail_size: int | None = None
        self.unloaded: list[str] = []
        self.loads = 0

    def infer(self, version, batch):
        self.calls.append((version, len(batch)))
        if len(batch) == self.fail_size:
            raise RuntimeError("simulated backend failure")
        return super().infer(version, batch)

    def unload(self, version) -> None:
        self.unloaded.append(version)
        super().unload(version)

    def load(self, version, onnx_path):
        self.loads += 1
        return super().load(version, onnx_path)


@pytest.fixture
def tiny_registry(tmp_path):
    registry = ModelRegistry(tmp_path / "registry")
    for seed in range(4):
        registry.register(tiny_pose_onnx(tmp_path / f"t{seed}.onnx", seed=seed), actor="test")
    return registry


def test_lease_keeps_its_version_loaded_across_promotions(tiny_registry) -> None:
    backend = FlakyBackend()
    manager = ModelManager(tiny_registry, backend)
    manager.start()
    assert manager.active_version is None
    manager.promote("1", actor="t")
    with manager.lease() as held:
        manager.promote("2", actor="t")
        manager.promote("3", actor="t")  # 1 is neither active nor previous, but a request still holds it
        assert held.version == "1" and "1" in backend.loaded_versions()
        assert backend.infer("1", np.zeros((1, 3, 64, 48), np.float32)).shape == (1, 14, 16, 12)
    manager._janitor.submit(lambda: None).result()  # let the deferred unload run
    assert backend.unloaded == ["1"] and backend.loaded_versions() == ["2", "3"]
    loads = backend.loads
    report = manager.rollback(actor="t")  # previous (2) is still loaded: no load at all
    assert report.version == "2" and backend.loads == loads and manager.active_version == "2"
    manager.close()


def test_replica_follows_promotions_made_elsewhere(tiny_registry) -> None:
    a, b = ModelManager(tiny_registry, EmbeddedBackend(1)), ModelManager(tiny_registry, EmbeddedBackend(1))
    a.promote("2", actor="replica-a")
    assert b.active_version is None and b.sync() and b.active_version == "2"
    assert not b.sync()  # nothing new
    a.promote("3", actor="replica-a")
    assert b.sync() and b.active_version == "3"
    a.close()
    b.close()


def test_batches_hold_whole_requests_and_survive_backend_errors(tiny_registry) -> None:
    backend = FlakyBackend()
    manager = ModelManager(tiny_registry, backend)
    manager.promote("1", actor="t")
    batcher = MicroBatcher(manager, max_batch=4, max_wait_ms=50)
    image = sample_image(3, (80, 60))
    boxes3 = np.array([[0, 0, 40, 50], [20, 5, 40, 50], [40, 0, 40, 60]], float)
    try:
        with batcher.expecting(), batcher.expecting():  # two requests announced: the batch waits for both
            batcher.start()
            first = batcher.submit(image, boxes3)  # 3 crops
            second = batcher.submit(image, boxes3[:2])  # 2 crops: 3 + 2 > 4, so it goes into the next batch
        results = [first.result(10), second.result(10)]
        assert backend.calls == [("1", 3), ("1", 2)] and [len(r.poses) for r in results] == [3, 2]
        big = batcher.submit(image, np.tile(boxes3, (3, 1))).result(10)  # 9 crops: own batch, chunks of ≤ 4
        assert backend.calls[2:] == [("1", 4), ("1", 4), ("1", 1)] and len(big.poses) == 9
        backend.fail_size = 3
        with pytest.raises(BatchError, match="simulated backend failure"):
            batcher.submit(image, boxes3).result(10)
        backend.fail_size = None
        assert len(batcher.submit(image, boxes3).result(10).poses) == 3  # the worker survived
        expected = PosePipeline(VersionView(backend, "1", manager.active().metadata)).predict(image, boxes3)
        assert np.allclose(results[0].poses[2].keypoints, expected[2].keypoints)
    finally:
        batcher.close()
        manager.close()
