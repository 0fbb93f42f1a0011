"""Leeds Sports Pose (labeled, 14 joints) and LSP Extended (the unlabeled pool, boxes only).

Conventions verified on this release (drawings in docs/images/lsp_flags_check.png):
- `joints.mat` holds `joints`, shape (3, 14, 1000): x, y, flag. Flag 1 = occluded, 0 = visible
  (the occluded joints are the far side of side-on and back-facing people); every joint has
  coordinates. Mapped to COCO visibility: flag 0 -> 2, flag 1 -> 1.
- Coordinates are taken as MATLAB 1-based (the labels ship as a MATLAB matrix; for MPII, also
  MATLAB, HRNet and MMPose subtract 1) and shifted by -1 to 0-based pixel-centre coordinates.
  A half pixel cannot be seen in drawings of these ~150 px people and the data barely constrain
  it: after the shift all 14,000 joints lie in x in [3.35, W - 4.06], y in [-0.75, H - 0.96]
  (the left wrist of im0632 is 0.25 px above the image edge at -0.5); unshifted, the right ankle
  of im0126 would be 0.54 px below the image.
- Split convention of the project: im0001-0800 train, im0801-1000 validation (the official test
  half im1001-2000 is held out); label budgets are the first N train images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from scipy.io import loadmat

from models.schemas import LSP14

from .records import PersonRecord, box_from_keypoints, read_image_size
from .unlabeled import load_image_folder

LSP_NUM_IMAGES = 1000
LSP_TRAIN = range(800)  # 0-based positions: im0001-im0800
LSP_VAL = range(800, 1000)  # im0801-im1000
# protocol v2 (DataConfig.lsp_protocol): budgets from im0001-0400, dev im0701-0800, report the rest
LSP_V2_TRAIN = range(400)
LSP_V2_DEV = range(700, 800)
LSP_V2_REPORT = [*range(400, 700), *range(800, 1000)]


def _load_joints(root: Path) -> np.ndarray:
    """(1000, 14, 3) array of x, y (1-based, as stored) and flag."""
    joints = loadmat(str(root / "lsp" / "joints.mat"))["joints"]
    if joints.shape[:2] != (3, LSP14.num_keypoints):
        raise ValueError(f"unexpected LSP joints.mat shape {joints.shape}, expected (3, 14, N)")
    return np.transpose(joints, (2, 1, 0))


def load_lsp(root: str | Path, indices: Sequence[int] | None = None) -> list[PersonRecord]:
    """LSP records, one person per image, in `indices` order.

    Args:
        root: the dataset root holding `lsp/joints.mat` and `lsp/images/im0001.jpg`...
        indices: 0-based positions in joints.mat (0 is im0001); None for all 1000.
    """
    root = Path(root)
    joints = _load_joints(root)
    if indices is None:
        indices = range(len(joints))
    records = []
    for i in indices:
        if not 0 <= i < len(joints):
            raise IndexError(f"LSP index {i} out of range [0, {len(joints)})")
        name = f"im{i + 1:04d}"
        path = root / "lsp" / "images" / f"{name}.jpg"
        keypoints = joints[i, :, :2] - 1.0  # MATLAB 1-based -> 0-based pixel centres
        visibility = np.where(joints[i, :, 2] > 0.5, 1, 2).astype(np.int8)  # flag 1 = occluded
        box = box_from_keypoints(keypoints, visibility, image_size=read_image_size(path))
        records.append(
            PersonRecord(
                image_path=path,
                box=box,
                keypoints=keypoints,
                visibility=visibility,
                schema=LSP14.name,
                record_id=f"lsp/{name}",
            )
        )
    return records


def lsp_split(
    root: str | Path,
    split: Literal["train", "val", "all", "report"],
    label_budget: int | None = None,
    protocol: Literal["v1", "v2"] = "v1",
) -> list[PersonRecord]:
    """Project splits of LSP. v1: train = im0001-0800, val = im0801-1000, all = im0001-1000. v2: train =
    im0001-0400, val = the dev split im0701-0800, report = im0401-0700 + im0801-1000 (never used for a choice).

    `label_budget` N keeps the first N train images (deterministic, no sampling); train only.
    """
    if protocol == "v2":
        ranges: dict[str, Sequence[int]] = {"train": LSP_V2_TRAIN, "val": LSP_V2_DEV, "report": LSP_V2_REPORT}
    else:
        ranges = {"train": LSP_TRAIN, "val": LSP_VAL, "all": range(LSP_NUM_IMAGES)}
    if split not in ranges:
        raise ValueError(f"unknown LSP split {split!r} for protocol {protocol}; expected one of {sorted(ranges)}")
    indices = ranges[split]
    if label_budget is not None:
        if split != "train":
            raise ValueError("label_budget applies to the train split only")
        if not 1 <= label_budget <= len(indices):
            raise ValueError(f"label_budget must be in [1, {len(indices)}], got {label_budget}")
        indices = indices[:label_budget]
    return load_lsp(root, indices)


def load_lspet_unlabeled(root: str | Path) -> list[PersonRecord]:
    """LSPET images as unlabeled records (keypoints None), one box each from `lspet/boxes.json`.

    Boxes are used as given: the annotated extent plus a 15% margin, rounded to 0.1 px, so a box
    may pass the image edge by < 0.1 px (im01529). Order: sorted file names, im00001.jpg first;
    record ids "lspet/im00001"...
    """
    root = Path(root) / "lspet"
    return load_image_folder(root / "images", boxes=root / "boxes.json", schema=LSP14.name, id_prefix="lspet")
