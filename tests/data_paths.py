"""Paths under the shared dataset root for tests; a missing path skips the test with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.datasets import default_data_root

DATA = default_data_root()


def data_path(*parts: str) -> Path:
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found: ../shared/datasets (or $POSELOOP_DATA) is needed for this test")
    return path
