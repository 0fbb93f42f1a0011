"""Durable store of human-labeled persons (POST /v1/labeled): images + their keypoint annotations, in the style
of continual/uploads.py, and the labeled-records file a retrain job trains and gates on.

Layout under `root` (settings.loop.data_dir / "labeled"):
    images/<sha[:2]>/<sha256>.<ext>   immutable, written durably (core.fileio) before any row names them
    index.sqlite                      tables `images` (one row per image bytes) and `persons` (seq = registration
                                      order; UNIQUE key = image sha256 + schema + box + keypoints); WAL mode

Deduplication: the same image bytes are stored once; the same person (image + annotation) again is a
"duplicate"; another annotation on a known image is a new person. Train / gate split: by image hash, so every
person of an image is on the same side, deterministically on every machine: `part_of(sha)` puts GATE_PERCENT of
images in the gate part. A retrain job trains on the train part and its gate scores both models on the gate
part, which the candidate never saw (continual/retrain.py). `max_seq()` fixes a snapshot like
UploadStore.max_seq(): persons are only ever added, so snapshot(k) is stable.

Keypoints are stored as given (image pixels, (x, y, v) per joint) in their own schema (the model's or COCO-17);
training/data.py maps them to the model's schema by joint name when it builds the records.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from continual.coco_labels import LabeledPerson
from continual.uploads import EXTENSIONS, safe_name
from core.fileio import atomic_write_bytes, fsync_dir
from core.inputs import ImageHeader
from core.sqlite import open_wal, transaction

GATE_PERCENT = 20  # share of images (by hash) whose persons form the gate part
LABELED_RECORDS_FORMAT = "poseloop.labeled_records/1"  # read by training.data.load_labeled_records
Part = Literal["train", "gate"]
_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    sha256 TEXT PRIMARY KEY, path TEXT NOT NULL, width INT, height INT, bytes INT, name TEXT, part TEXT,
    source TEXT, actor TEXT, created TEXT);
CREATE TABLE IF NOT EXISTS persons (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, sha256 TEXT NOT NULL, key TEXT UNIQUE NOT NULL, schema TEXT NOT NULL,
    box TEXT NOT NULL, keypoints TEXT NOT NULL, part TEXT NOT NULL, source TEXT, actor TEXT, created TEXT);
"""


def part_of(sha: str) -> Part:
    """The image's side of the split: the same on every machine, for every person of the image."""
    return "gate" if int(sha[:8], 16) % 100 < GATE_PERCENT else "train"


@dataclass(frozen=True)
class LabeledRecord:
    """One stored person: absolute image `path`, box (x, y, w, h) and (K, 3) keypoints in its image's pixels."""

    seq: int
    sha256: str
    path: Path
    width: int
    height: int
    box: list[float]
    keypoints: list[list[float]]
    schema: str
    part: Part


@dataclass(frozen=True)
class ImageOutcome:
    sha256: str
    part: Part
    accepted: int  # persons stored now
    duplicates: int  # persons already stored


class LabeledStore:
    """Store rooted at `root`; created on first use. Thread- and process-safe (SQLite, one connection per call)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.images_dir = self.root / "images"
        self.db_path = self.root / "index.sqlite"
        self._schema_lock = threading.Lock()
        self._schema_ready = False

    # ------------------------------------------------------------------ writes
    def add_image(
        self,
        data: bytes,
        header: ImageHeader,
        name: str,
        schema: str,
        persons: tuple[LabeledPerson, ...],
        source: str,
        actor: str,
    ) -> ImageOutcome:
        """Store one checked image (the caller decoded it and checked sizes, boxes and keypoints) and its persons:
        the file durably first, then the rows in one transaction."""
        sha = hashlib.sha256(data).hexdigest()
        part = part_of(sha)
        relative = Path("images", sha[:2], f"{sha}.{EXTENSIONS[header.format]}")
        if not (self.root / relative).is_file():
            self._write_file(self.root / relative, data)
        accepted = 0
        with self._db() as db:
            db.execute(
                "INSERT INTO images (sha256, path, width, height, bytes, name, part, source, actor, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sha256) DO NOTHING",
                (
                    sha,
                    relative.as_posix(),
                    header.width,
                    header.height,
                    len(data),
                    safe_name(name),
                    part,
                    source,
                    actor,
                    _now(),
                ),
            )
            for person in persons:
                box = [round(v, 2) for v in person.box]
                keypoints = [[round(x, 2), round(y, 2), v] for x, y, v in person.keypoints]
                key = hashlib.sha256(json.dumps([sha, schema, box, keypoints]).encode()).hexdigest()
                cursor = db.execute(
                    "INSERT INTO persons (sha256, key, schema, box, keypoints, part, source, actor, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
                    (sha, key, schema, json.dumps(box), json.dumps(keypoints), part, source, actor, _now()),
                )
                accepted += cursor.rowcount
        return ImageOutcome(sha, part, accepted, len(persons) - accepted)

    # ------------------------------------------------------------------ reads
    def max_seq(self) -> int:
        """The newest person's seq; 0 when nothing is registered."""
        with self._db() as db:
            return db.execute("SELECT COALESCE(MAX(seq), 0) FROM persons").fetchone()[0]

    def stats(self) -> dict[str, object]:
        """images, persons, per part {images, persons}, per schema persons, max_seq, disk_bytes."""
        with self._db() as db:
            images, image_bytes = db.execute("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM images").fetchone()
            persons, top = db.execute("SELECT COUNT(*), COALESCE(MAX(seq), 0) FROM persons").fetchone()
            parts = {
                part: {"images": n_images, "persons": n_persons}
                for part, n_images, n_persons in db.execute(
                    "SELECT part, COUNT(DISTINCT sha256), COUNT(*) FROM persons GROUP BY part"
                )
            }
            schemas = dict(db.execute("SELECT schema, COUNT(*) FROM persons GROUP BY schema").fetchall())
        index_bytes = sum(p.stat().st_size for p in self.root.glob("index.sqlite*") if p.is_file())
        empty = {"images": 0, "persons": 0}
        return {
            "images": images,
            "persons": persons,
            "train": parts.get("train", empty),
            "gate": parts.get("gate", empty),
            "gate_percent": GATE_PERCENT,
            "schemas": schemas,
            "max_seq": top,
            "disk_bytes": image_bytes + index_bytes,
        }

    def snapshot(self, max_seq: int | None = None) -> list[LabeledRecord]:
        """Persons with seq <= max_seq (all when None), in registration order."""
        with self._db() as db:
            rows = db.execute(
                "SELECT p.seq, p.sha256, i.path, i.width, i.height, p.box, p.keypoints, p.schema, p.part "
                "FROM persons p JOIN images i ON i.sha256 = p.sha256 WHERE p.seq <= ? ORDER BY p.seq",
                (max_seq if max_seq is not None else 2**63 - 1,),
            ).fetchall()
        return [
            LabeledRecord(seq, sha, self.root / path, w, h, json.loads(box), json.loads(kpts), schema, part)
            for seq, sha, path, w, h, box, kpts, schema, part in rows
        ]

    def image_shas(self, max_seq: int | None = None) -> set[str]:
        """The images holding persons with seq <= max_seq (a retrain leaves them out of its unlabeled pool)."""
        return {r.sha256 for r in self.snapshot(max_seq)}

    def export_records(self, path: Path, max_seq: int) -> dict[str, int]:
        """Write snapshot(max_seq) as a labeled-records file (LABELED_RECORDS_FORMAT, durably); returns the
        persons per part. Keypoints as (K, 2) image pixels plus COCO visibility; record ids "labeled/<seq>"."""
        records = self.snapshot(max_seq)
        persons = [
            {
                "id": f"labeled/{r.seq}",
                "image": str(r.path),
                "sha256": r.sha256,
                "box": r.box,
                "keypoints": [[x, y] for x, y, _v in r.keypoints],
                "visibility": [int(v) for _x, _y, v in r.keypoints],
                "schema": r.schema,
                "part": r.part,
            }
            for r in records
        ]
        doc = {"format": LABELED_RECORDS_FORMAT, "labeled_seq": max_seq, "persons": persons}
        atomic_write_bytes(Path(path), json.dumps(doc).encode())
        return {part: sum(p["part"] == part for p in persons) for part in ("train", "gate")}

    # ------------------------------------------------------------------ internals
    def _write_file(self, path: Path, data: bytes) -> None:
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.images_dir)
        atomic_write_bytes(path, data)

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with self._schema_lock:
            if not self._schema_ready:
                self.images_dir.mkdir(parents=True, exist_ok=True)
                open_wal(self.db_path, _SCHEMA)
                self._schema_ready = True
        with transaction(self.db_path) as db:
            yield db


def labeled_store(data_dir: Path) -> LabeledStore:
    """The store of a deployment (API and workers agree on its place)."""
    return LabeledStore(Path(data_dir) / "labeled")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
