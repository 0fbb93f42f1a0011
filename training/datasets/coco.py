"""COCO person keypoints (and any dataset in the COCO keypoint json format with the 17 COCO joints)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from models.schemas import COCO17

from .records import PersonRecord


def load_coco(ann_file: str | Path) -> COCO:
    """pycocotools COCO index, without its progress prints."""
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(ann_file))


def _is_usable(ann: dict) -> bool:
    _, _, w, h = ann["bbox"]
    return not ann.get("iscrowd", 0) and ann.get("num_keypoints", 0) >= 1 and ann.get("area", 0) > 0 and w > 0 and h > 0


def load_coco_keypoints(
    ann_file: str | Path,
    image_dir: str | Path,
    max_instances: int | None = None,
) -> list[PersonRecord]:
    """Person records from a COCO keypoint annotation file.

    Kept: non-crowd instances with num_keypoints >= 1, area > 0 and a box of positive size.
    Order: the `images` list of the file, then annotation order within each image. The first
    `max_instances` of that list are the deterministic "first-N-instances" label budget of the
    semi-supervised COCO protocol. Keypoints stay as annotated (COCO is 0-based); unlabeled joints
    are (0, 0) with visibility 0.
    """
    if max_instances is not None and max_instances < 0:
        raise ValueError(f"max_instances must be >= 0, got {max_instances}")
    coco = load_coco(ann_file)
    person_ids = set(coco.getCatIds(catNms=["person"])) or set(coco.getCatIds())
    image_dir = Path(image_dir)
    records: list[PersonRecord] = []
    for image in coco.dataset["images"]:
        for ann in coco.imgToAnns.get(image["id"], []):
            if max_instances is not None and len(records) >= max_instances:
                return records  # budget reached: later instances are not even parsed
            if ann["category_id"] not in person_ids or not _is_usable(ann):
                continue
            flat = np.asarray(ann["keypoints"], dtype=np.float32).reshape(-1, 3)
            if len(flat) != COCO17.num_keypoints:
                raise ValueError(f"{ann_file}: annotation {ann['id']} has {len(flat)} keypoints, expected 17")
            records.append(
                PersonRecord(
                    image_path=image_dir / image["file_name"],
                    box=np.asarray(ann["bbox"], dtype=np.float32),
                    keypoints=flat[:, :2],
                    visibility=np.clip(flat[:, 2], 0, 2).astype(np.int8),
                    schema=COCO17.name,
                    record_id=f"coco/{ann['id']}",
                    image_id=int(image["id"]),
                    area=float(ann["area"]),
                )
            )
    return records
