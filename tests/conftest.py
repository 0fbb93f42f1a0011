"""Shared fixtures: the real dataset root (tests needing it skip cleanly when absent) and one small trained
model (checkpoint + ONNX) that every continual-loop test starts from, trained once per run even when
pytest-xdist spreads the files over several workers."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from filelock import FileLock

from training.datasets import default_data_root

# Tests using these fixtures need the real datasets, a trained model or a Redis server: `make test-fast` leaves
# them out (marker `integration`); `make test` runs everything.
INTEGRATION_FIXTURES = {"data_root", "small_model", "redis_server"}


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if INTEGRATION_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.integration)


def shared_dir(tmp_path_factory, name: str) -> Path:
    """A session directory every pytest-xdist worker of this run shares (`make test` runs two): the parent of
    the workers' own base temp directories; without xdist, the session's own."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = root / f"shared-{name}"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session", autouse=True)
def shared_pseudo_label_cache(tmp_path_factory):
    """Retrain jobs (the distill recipe) of every test, in-process or in a worker subprocess, and of every xdist
    worker, share one label cache: the tests upload the same LSPET images against the same small model, so the
    teacher runs about once per run, not once per job. A hit is checked by key (teacher hashes, pool and
    calibration ids); entries are written atomically, so two workers labelling at once only duplicate work."""
    path = shared_dir(tmp_path_factory, "pseudo_labels")
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

    root = shared_dir(tmp_path_factory, "small_model")
    with FileLock(root / "train.lock"):  # one xdist worker trains it, the others wait and reuse it
        return train_small_model(root)
