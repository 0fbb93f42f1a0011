"""MPII Human Pose in the HRNet/MMPose json format (16 joints).

Format: a list of {"image", "center": [x, y], "scale", "joints": 16 x [x, y], "joints_vis": 16 x 0/1},
one entry per person. Conventions:
- `joints` and `center` are MATLAB 1-based, as in the original MPII annotation; like HRNet's loader
  (`lib/dataset/mpii.py`, "MPII uses matlab format, index is based 1") we subtract 1.
- `joints_vis` says whether a joint is labeled, not whether it is visible: 1 -> visibility 2,
  0 -> visibility 0 (coordinates set to 0; the json stores -1, -1 there).
- `scale` is the person size w.r.t. 200 px, so the box is the square of side scale * 200 centred
  at `center`. HRNet additionally moves the centre down by 15 * scale and enlarges the square by
  1.25 before cropping; that is crop padding, left to the crop transform, not part of the box.
- The PCKh normaliser needs MPII head boxes, which this json lacks: `head_size` is taken from an
  optional "head_size" field (already including SC_BIAS) or "headbox" [[x1, y1], [x2, y2]]
  (0.6 x diagonal, HRNet's SC_BIAS), else None (see `training.evaluation.mpii_head_size_from_box`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from models.schemas import MPII16

from .records import PersonRecord, box_from_keypoints

PIXEL_STD = 200.0  # MPII `scale` unit
SC_BIAS = 0.6  # MPII head size = 0.6 x head-box diagonal (official evaluation, HRNet)


def _head_size(entry: dict) -> float | None:
    if "head_size" in entry:
        return float(entry["head_size"])
    if "headbox" in entry:
        (x1, y1), (x2, y2) = entry["headbox"]
        return SC_BIAS * float(np.hypot(x2 - x1, y2 - y1))
    return None


def load_mpii(json_file: str | Path, image_dir: str | Path) -> list[PersonRecord]:
    """MPII person records in file order; record ids "mpii/<image stem>_<person index in image>"."""
    with open(json_file) as f:
        entries = json.load(f)
    image_dir = Path(image_dir)
    seen: dict[str, int] = defaultdict(int)
    records = []
    for entry in entries:
        joints = np.asarray(entry["joints"], dtype=np.float64).reshape(MPII16.num_keypoints, 2)
        labeled = np.asarray(entry["joints_vis"]).reshape(MPII16.num_keypoints) > 0
        keypoints = np.where(labeled[:, None], joints - 1.0, 0.0)  # 1-based -> 0-based
        visibility = np.where(labeled, 2, 0).astype(np.int8)
        center = np.asarray(entry["center"], dtype=np.float64) - 1.0
        side = float(entry["scale"]) * PIXEL_STD
        if entry["center"][0] == -1 or side <= 0:  # HRNet's marker for "no centre"
            box = box_from_keypoints(keypoints, visibility)
        else:
            box = np.array([center[0] - side / 2, center[1] - side / 2, side, side], dtype=np.float32)
        stem = Path(entry["image"]).stem
        records.append(
            PersonRecord(
                image_path=image_dir / entry["image"],
                box=box,
                keypoints=keypoints,
                visibility=visibility,
                schema=MPII16.name,
                record_id=f"mpii/{stem}_{seen[stem]}",
                head_size=_head_size(entry),
            )
        )
        seen[stem] += 1
    return records
