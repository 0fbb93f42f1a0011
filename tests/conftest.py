"""Shared fixtures: the real dataset root (tests needing it skip cleanly when absent) and one small trained
model (checkpoint + ONNX) that every continual-loop test starts from."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from training.datasets import default_data_root

# Tests using these fixtures need the real datasets, a trained model or a Redis server: `make test-fast` leaves
# them out (marker `integration`); `make test` runs everything.
INTEGRATION_FIXTURES = {"data_root", "small_model", "redis_server"}


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if INTEGRATION_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def shared_pseudo_label_cache(tmp_path_factory):
    """Retrain jobs (the distill recipe) of every test, in-process or in a worker subprocess, share one label
    cache: the tests upload the same LSPET images against the same small model, so the teacher runs once per
    session, not once per job. A cache hit is checked by key (teacher hashes, pool and calibration ids)."""
    import os

    path = tmp_path_factory.mktemp("pseudo_labels")
    previous = os.environ.get("POSELOOP_RETRAIN_PSEUDO_LABEL_DIR")
    os.environ["POSELOOP_RETRAIN_PSEUDO_LABEL_DIR"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("POSELOOP_RETRAIN_PSEUDO_LABEL_DIR", None)
    else:
        os.environ["POSELOOP_RETRAIN_PSEUDO_LABEL_DIR"] = previous


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server on a free port with AOF in tmp_path (tests.redis_fixtures.RedisServer)."""
    from tests.redis_fixtures import RedisServer

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed (apt install redis-server; .ci/run does)")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = default_data_root()
    if not (root / "lsp" / "joints.mat").exists():
        pytest.skip(f"real datasets not found at {root} (set $POSELOOP_DATA); skipping data-dependent test")
    return root


@pytest.fixture(scope="session")
def small_model(tmp_path_factory, data_root) -> tuple[Path, Path]:
    """(model.onnx, best.pt) of a short real supervised run (tests.loop_fixtures.train_small_model)."""
    from tests.loop_fixtures import train_small_model

    return train_small_model(tmp_path_factory.mktemp("small_model"))
