"""Dataset loaders: every dataset becomes a list of `PersonRecord` (see `records.py` for conventions).

The data live outside the repository, in `../shared/datasets` relative to the repository root
(override with $POSELOOP_DATA); code that needs them must cope with their absence.
"""

from __future__ import annotations

import os
from pathlib import Path

from .coco import load_coco_keypoints
from .lsp import load_lsp, load_lspet_unlabeled, lsp_split
from .mpii import load_mpii
from .records import PersonRecord, box_from_keypoints, read_image_size
from .unlabeled import load_image_folder, read_boxes_json

REPO_ROOT = Path(__file__).resolve().parents[2]


def default_data_root() -> Path:
    """$POSELOOP_DATA if set, else <repo>/../shared/datasets. The folder may not exist."""
    env = os.environ.get("POSELOOP_DATA")
    return Path(env) if env else (REPO_ROOT.parent / "shared" / "datasets").resolve()


__all__ = [
    "PersonRecord",
    "box_from_keypoints",
    "default_data_root",
    "load_coco_keypoints",
    "load_image_folder",
    "load_lsp",
    "load_lspet_unlabeled",
    "load_mpii",
    "lsp_split",
    "read_boxes_json",
    "read_image_size",
]
