"""Unlabeled images (uploads, LSPET, video frames saved to disk) as person records without keypoints."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from models.schemas import get_schema

from .records import PersonRecord, read_image_size

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def read_boxes_json(path: str | Path) -> dict[str, list[float]]:
    """Boxes file in the LSPET format: {"format": ..., "boxes": {"<file name>": [x, y, w, h]}}.

    A bare {"<file name>": [x, y, w, h]} mapping is accepted too.
    """
    with open(path) as f:
        data = json.load(f)
    boxes = data.get("boxes", data) if isinstance(data, dict) else None
    if not isinstance(boxes, dict):
        raise ValueError(f"{path}: expected {{'boxes': {{file name: [x, y, w, h]}}}}")
    return boxes


def list_images(directory: str | Path) -> list[Path]:
    """Image files directly inside `directory` (not recursive), sorted by name; hidden files skipped."""
    directory = Path(directory)
    if not directory.is_dir():
        raise NotADirectoryError(f"not a directory: {directory}")
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _checked_box(name: str, box: Sequence[float]) -> np.ndarray:
    array = np.asarray(box, dtype=np.float32)
    if array.shape != (4,) or not np.isfinite(array).all() or array[2] <= 0 or array[3] <= 0:
        raise ValueError(f"box for {name}: expected [x, y, w, h] with w, h > 0, got {box}")
    return array


def load_image_folder(
    path_or_list: str | Path | Sequence[str | Path],
    boxes: Mapping[str, Sequence[float]] | str | Path | None = None,
    schema: str = "lsp14",
    id_prefix: str = "images",
) -> list[PersonRecord]:
    """One unlabeled record per image (keypoints None).

    Args:
        path_or_list: a directory (its images, sorted by name; suffixes in IMAGE_SUFFIXES) or an
            explicit list of image paths (kept in the given order).
        boxes: person box [x, y, w, h] per file name (a dict, or a boxes.json path in the LSPET
            format). An image without a box gets the whole image [0, 0, w, h] (size read from the
            file header). A box naming no listed image is an error (usually a wrong folder).
        schema: the keypoint schema the records are meant for.
        id_prefix: record ids are "<id_prefix>/<file stem>".
    """
    get_schema(schema)
    if isinstance(path_or_list, (str, Path)):
        paths = list_images(path_or_list)
    else:
        paths = [Path(p) for p in path_or_list]
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        raise ValueError("image file names must be unique (boxes and record ids are keyed by name)")
    if isinstance(boxes, (str, Path)):
        boxes = read_boxes_json(boxes)
    boxes = dict(boxes or {})
    unknown = sorted(set(boxes) - set(names))
    if unknown:
        raise ValueError(f"{len(unknown)} boxes name no listed image, e.g. {unknown[:3]}")
    records = []
    for path in paths:
        if path.name in boxes:
            box = _checked_box(path.name, boxes[path.name])
        else:
            w, h = read_image_size(path)
            box = np.array([0, 0, w, h], dtype=np.float32)
        records.append(
            PersonRecord(
                image_path=path,
                box=box,
                keypoints=None,
                visibility=None,
                schema=schema,
                record_id=f"{id_prefix}/{path.stem}",
            )
        )
    return records
