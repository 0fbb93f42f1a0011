"""Shared fixtures: the real dataset root (tests needing it skip cleanly when absent) and one small trained
model (checkpoint + ONNX) that every continual-loop test starts from."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.datasets import default_data_root


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
