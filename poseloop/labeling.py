"""`poseloop export-labeling` (ops_cli.py): the N most informative uploads as a labeling task on disk.

DIR gets images/<sha256>.<ext> (the uploads, fetched with the ops token), annotations.json (COCO keypoints with
the active model's pre-annotations: correct them in any COCO tool), label_studio_tasks.json (Label Studio import
tasks with keypointlabels predictions; `--image-url` is the prefix Label Studio loads DIR/images/ from, by default
its local-files serving) and label_config.xml (the labeling interface). Import the corrected COCO JSON with the
images through POST /v1/labeled to close the loop.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.fileio import atomic_write_bytes
from poseloop.client import PoseLoopClient


class LabelingClient(PoseLoopClient):
    """The pool routes a labeling round trip needs (GET /v1/unlabeled/export, /{sha}/image, POST /v1/labeled)."""

    def labeling_export(self, n: int, strategy: str, image_url: str) -> dict[str, Any]:
        return self._json("GET", "/v1/unlabeled/export", params={"n": n, "strategy": strategy, "image_url": image_url})

    def upload_image(self, image_path: str) -> bytes:
        return self._ok(self._send("GET", image_path)).content


def write_task(api: LabelingClient, out: Path, n: int, strategy: str, image_url: str) -> dict[str, Any]:
    """Fetch the export and its images into `out` (each file written durably); returns the export."""
    task = api.labeling_export(n, strategy, image_url)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    for item in task["items"]:
        atomic_write_bytes(images / item["file_name"], api.upload_image(item["image_path"]))
    files = {
        "annotations.json": json.dumps(task["coco"], indent=1),
        "label_studio_tasks.json": json.dumps(task["label_studio"], indent=1),
        "label_config.xml": task["label_config"],
    }
    for name, text in files.items():
        atomic_write_bytes(out / name, text.encode())
    return task
