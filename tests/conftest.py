"""Shared fixtures: the real dataset root (tests needing it skip cleanly when absent)."""
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
