"""`poseloop ingest`: feed unlabeled images from a video or a folder to a running API (POST /v1/unlabeled).

Video: every Nth frame (0, N, 2N, ...), JPEG-encoded in memory and named <stem>_f<frame:06d>.jpg; decoding and
encoding are deterministic, so ingesting the same video again yields duplicates, not new images.
Folder: every Nth image file in sorted path order (recursive), uploaded as is; boxes from --boxes or the
folder's own boxes.json, in LSPET format {"boxes": {"name": [x, y, w, h]}} or a bare mapping, looked up by the
path relative to the folder, then by file name (one [x, y, w, h] or a list of boxes per image).
No torch import: this runs on any machine that can reach the API.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import cv2
import httpx
from tqdm import tqdm

from continual.uploads import sidecar_boxes
from core.inputs import InputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
JPEG_QUALITY = 95
TIMEOUT_S = 300.0  # one batch: upload plus hashing, decoding and fsync of every image on the server


class IngestError(RuntimeError):
    """A failure the command reports in one line (bad source, HTTP error, server unreachable)."""


@dataclass
class IngestSummary:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[dict[str, str]] = field(default_factory=list)

    def add(self, response: dict) -> None:
        self.accepted += len(response["accepted"])
        self.duplicates += len(response["duplicates"])
        self.rejected += response["rejected"]

    def to_dict(self) -> dict:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": len(self.rejected),
            "rejections": self.rejected,
        }


@dataclass(frozen=True)
class Item:
    name: str
    data: bytes
    boxes: object  # raw JSON boxes, checked by the server; None = the whole image


def ingest(
    source: Path,
    every: int,
    url: str,
    token: str,
    batch: int = 32,
    boxes: Path | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> IngestSummary:
    """Upload every `every`th image of `source` (at most `limit`) in batches of `batch`; IngestError on failure."""
    if every < 1 or batch < 1 or (limit is not None and limit < 1):
        raise IngestError("--every, --batch and --limit must be >= 1")
    total: int | None
    if source.is_dir():
        sidecar = boxes or (source / "boxes.json" if (source / "boxes.json").is_file() else None)
        items, total = folder_items(source, every, load_boxes(sidecar) if sidecar else {})
    elif source.is_file():
        if boxes is not None:
            raise IngestError("--boxes applies to a folder of images, not to a video")
        items, total = video_items(source, every)
    else:
        raise IngestError(f"{source} does not exist")
    if limit is not None:
        total = min(total, limit) if total is not None else limit
    summary = IngestSummary()
    headers = {"Authorization": f"Bearer {token}"}
    with (
        httpx.Client(base_url=url, headers=headers, timeout=TIMEOUT_S) as client,
        tqdm(total=total, unit="img", disable=not progress, desc=f"ingest {source.name}") as bar,
    ):
        chunks = islice(items, limit)
        while chunk := list(islice(chunks, batch)):
            summary.add(_post(client, chunk, f"ingest:{source.name}"))
            bar.update(len(chunk))
    return summary


def folder_items(folder: Path, every: int, boxes: dict[str, object]) -> tuple[Iterator[Item], int]:
    """(items, how many) for every `every`th image file under `folder`."""
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())[::every]

    def items() -> Iterator[Item]:
        for path in paths:
            name = path.relative_to(folder).as_posix()
            yield Item(name, path.read_bytes(), boxes[name] if name in boxes else boxes.get(path.name))

    return items(), len(paths)


def video_items(video: Path, every: int) -> tuple[Iterator[Item], int | None]:
    """(items, about how many, None if the container does not say) for every `every`th frame of `video`."""
    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise IngestError(f"{video} is neither a folder nor a video OpenCV can open")
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))

    def items() -> Iterator[Item]:
        index = 0
        try:
            while capture.grab():  # grab() skips a frame without the colour conversion of retrieve()
                if index % every == 0:
                    ok, frame = capture.retrieve()
                    if not ok or frame is None:
                        raise IngestError(f"frame {index} of {video} could not be decoded")
                    ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                    if not ok:
                        raise IngestError(f"frame {index} of {video} could not be JPEG-encoded")
                    yield Item(f"{video.stem}_f{index:06d}.jpg", jpeg.tobytes(), None)
                index += 1
        finally:
            capture.release()

    return items(), -(-frames // every) if frames > 0 else None


def load_boxes(path: Path) -> dict[str, object]:
    try:
        return sidecar_boxes(json.loads(path.read_text()), str(path))
    except (OSError, json.JSONDecodeError, InputError) as err:
        raise IngestError(f"cannot read boxes from {path}: {err}") from None


def _post(client: httpx.Client, chunk: list[Item], source: str) -> dict:
    files = [("files", (item.name, item.data, "application/octet-stream")) for item in chunk]
    data = {"source": source}
    boxes = {item.name: item.boxes for item in chunk if item.boxes is not None}
    if boxes:
        data["boxes"] = json.dumps(boxes)
    try:
        response = client.post("/v1/unlabeled", files=files, data=data)
    except httpx.HTTPError as err:
        raise IngestError(f"cannot reach {client.base_url}: {type(err).__name__}: {err}") from None
    if response.status_code == 422 and _error_code(response) == "all_rejected":
        return response.json()  # a batch of only bad files: its per-file reasons count, the run goes on
    if response.status_code != 200:
        try:
            error = response.json()["error"]
            detail = f"{error['code']}: {error['message']}"
        except (ValueError, KeyError, TypeError):
            detail = response.text[:300]
        raise IngestError(f"POST /v1/unlabeled answered {response.status_code}: {detail}")
    return response.json()


def _error_code(response: httpx.Response) -> str | None:
    try:
        return response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
