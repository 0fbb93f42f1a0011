"""Faults classified at promotion: a version the backend cannot load is rejected with the reason; a backend that is
unavailable (Triton unreachable, a readiness timeout) is the serving side's fault — the version stays a candidate,
the caller gets 503 + Retry-After, and the same version loads once the backend is back."""

from pathlib import Path

import pytest

from models.registry import ModelRegistry
from serving.backends import BackendUnavailable
from serving.backends.embedded import EmbeddedBackend
from serving.manager import ModelManager, PromotionError
from tests.serving_fixtures import auth, tiny_pose_onnx


class FlakyBackend(EmbeddedBackend):
    """The real in-process backend, unavailable for its first `outages` loads (as Triton is while it restarts)."""

    def __init__(self, outages: int) -> None:
        super().__init__(1)
        self.outages = outages

    def load(self, version: str, onnx_path: Path):
        if self.outages > 0:
            self.outages -= 1
            raise BackendUnavailable(f"version {version} not ready after 30 s")
        return super().load(version, onnx_path)


@pytest.fixture
def registry(tmp_path) -> ModelRegistry:
    registry = ModelRegistry(tmp_path / "registry")
    registry.register(tiny_pose_onnx(tmp_path / "a.onnx", seed=0), actor="test")
    registry.register(tiny_pose_onnx(tmp_path / "b.onnx", seed=1), actor="test")
    registry.register(tiny_pose_onnx(tmp_path / "broken.onnx", broken="nan"), actor="test")
    return registry


def test_an_unavailable_backend_keeps_the_version_a_candidate(registry) -> None:
    manager = ModelManager(registry, FlakyBackend(outages=1))
    with pytest.raises(PromotionError) as caught:
        manager.promote("1", "ops")
    assert caught.value.status == 503 and caught.value.code == "backend_unavailable"
    assert registry.get("1").state == "candidate" and registry.active() is None
    assert manager.promote("1", "ops").version == "1"  # the backend is back: the same version loads
    assert registry.active().version == "1"


def test_a_version_the_backend_cannot_load_is_rejected_with_its_reason(registry) -> None:
    manager = ModelManager(registry, FlakyBackend(outages=0))
    manager.promote("1", "ops")
    with pytest.raises(PromotionError) as caught:
        manager.promote("3", "ops")
    assert caught.value.status == 422 and caught.value.code == "load_failed"
    assert registry.get("3").state == "rejected" and "non-finite" in registry.get("3").reason
    assert registry.active().version == "1"  # the old version keeps serving


def test_the_api_answers_503_with_retry_after(tmp_path, registry) -> None:
    from fastapi.testclient import TestClient

    from continual.settings import Settings
    from serving.app import create_app

    ops = "ops-token-for-the-fault-test"
    settings = Settings(
        registry_dir=registry.root, data_dir=tmp_path / "data", registry_poll_s=0, tokens={ops: ["ops"]}
    )
    app = create_app(settings, ModelManager(registry, FlakyBackend(outages=1)))
    with TestClient(app, headers=auth(ops)) as client:
        answer = client.post("/v1/ops/promote", json={"version": "2"})
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "10"
        assert answer.json()["error"]["code"] == "backend_unavailable"
        assert client.post("/v1/ops/promote", json={"version": "2"}).status_code == 200
