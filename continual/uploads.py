"""Durable, content-addressed store of unlabeled images (the retrain job's unlabeled pool) with an SQLite index.

Layout under `root`:
    images/<sha[:2]>/<sha256>.<ext>   immutable; written to a temp file beside it, fsynced, renamed, directory
                                      fsynced, all before its index row exists (so a row always names a whole file)
    index.sqlite (+ -wal, -shm)       tables `images` (seq = upload order) and `rejections`; WAL mode, synchronous
                                      FULL, one connection per call: the API and training workers on the same host
                                      share it (WAL needs shared memory, so not across hosts over NFS)

Same bytes = one image (dedup by sha256): a second upload is a "duplicate" and keeps the first upload's boxes.
A crash between the rename and the insert leaves an unindexed file that the next upload of those bytes reuses.
Writers are serialised by SQLite and `seq` is assigned inside the write transaction, so once a reader has seen
max_seq() = k, no image with seq <= k can still appear: snapshot(k) is a stable training pool.
Every image passes the /v1/pose input checks (core.inputs) and is fully decoded once, so training never
meets a file it cannot read; boxes are in the pixels of the decoded (EXIF-rotated) image.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from core.fileio import atomic_write_bytes, fsync_dir
from core.inputs import InputError, check_image, decode_image, parse_boxes
from core.sqlite import open_wal

EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp", "bmp": "bmp"}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, sha256 TEXT UNIQUE NOT NULL, path TEXT NOT NULL, width INT, height INT,
    boxes TEXT, bytes INT, name TEXT, source TEXT, actor TEXT, created TEXT);
CREATE TABLE IF NOT EXISTS rejections (
    id INTEGER PRIMARY KEY, name TEXT, reason TEXT, actor TEXT, created TEXT);
CREATE TABLE IF NOT EXISTS checks (
    sha256 TEXT PRIMARY KEY, thumbnail TEXT, teacher_version TEXT, teacher_confidence REAL, persons INT,
    created TEXT);
CREATE TABLE IF NOT EXISTS quarantine (
    sha256 TEXT PRIMARY KEY, reason TEXT, created TEXT);
"""
MAX_REASON_CHARS = 500  # a quarantine reason is a log line, not an echo of whatever failed


@dataclass(frozen=True)
class AddResult:
    """`status` "accepted" (stored now) or "duplicate" (these bytes were already stored, with `seq`)."""

    status: Literal["accepted", "duplicate"]
    sha256: str
    seq: int


@dataclass(frozen=True)
class UploadRecord:
    """One stored image: absolute `path`; `boxes` [[x, y, w, h], ...] in image pixels, None = the whole image."""

    seq: int
    sha256: str
    path: Path
    width: int
    height: int
    boxes: list[list[float]] | None


@dataclass
class BatchReport:
    """Per-item outcome of one upload request (the POST /v1/unlabeled response body)."""

    accepted: list[dict[str, str]] = field(default_factory=list)
    duplicates: list[dict[str, str]] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        counts = {"accepted": len(self.accepted), "duplicates": len(self.duplicates), "rejected": len(self.rejected)}
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "counts": {**counts, "total": sum(counts.values())},
        }


class UploadStore:
    """Store rooted at `root`; the directory and index are created on first use. Thread- and process-safe."""

    def __init__(self, root: Path, max_pixels: int = 40_000_000, max_boxes: int = 64) -> None:
        self.root = Path(root)
        self.images_dir = self.root / "images"
        self.db_path = self.root / "index.sqlite"
        self.max_pixels, self.max_boxes = max_pixels, max_boxes
        self._schema_lock = threading.Lock()
        self._schema_ready = False

    # ------------------------------------------------------------------ writes
    def add(self, data: bytes, name: str, boxes: object, source: str, actor: str) -> AddResult:
        """Validate, store durably, then index one image. `boxes` is untrusted JSON (one [x, y, w, h] is taken
        as a one-box list); InputError names what is wrong with the image or which box is bad."""
        header = check_image(data, self.max_pixels)
        height, width = decode_image(data, self.max_pixels, header).shape[:2]
        if isinstance(boxes, list) and len(boxes) == 4 and not any(isinstance(v, list) for v in boxes):
            boxes = [boxes]
        parsed = parse_boxes(boxes, width, height, self.max_boxes)
        if parsed is not None and len(parsed) == 0:
            raise InputError(422, "invalid_boxes", "empty box list (leave the boxes out to use the whole image)")
        sha = hashlib.sha256(data).hexdigest()
        known = self._seq_of(sha)
        if known is not None:
            return AddResult("duplicate", sha, known)
        relative = Path("images", sha[:2], f"{sha}.{EXTENSIONS[header.format]}")
        self._write_file(self.root / relative, data)
        boxes_json = None if parsed is None else json.dumps(parsed.tolist())
        with self._db() as db:
            cursor = db.execute(
                "INSERT INTO images (sha256, path, width, height, boxes, bytes, name, source, actor, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sha256) DO NOTHING",
                (sha, relative.as_posix(), width, height, boxes_json, len(data), name, source, actor, _now()),
            )
            if cursor.rowcount == 1:
                assert cursor.lastrowid is not None, "an INSERT that stored a row has its rowid"
                return AddResult("accepted", sha, cursor.lastrowid)
        seq = self._seq_of(sha)  # another writer stored the same bytes first
        if seq is None:
            raise RuntimeError(f"upload {sha} was neither inserted nor found in the index")
        return AddResult("duplicate", sha, seq)

    def reject(self, name: str, reason: str, actor: str) -> None:
        """Record a refused item (counted by stats)."""
        with self._db() as db:
            db.execute(
                "INSERT INTO rejections (name, reason, actor, created) VALUES (?, ?, ?, ?)",
                (name, reason, actor, _now()),
            )

    def add_many(self, items: Iterable[tuple[str, bytes | InputError, object]], source: str, actor: str) -> BatchReport:
        """add() each (name, data or the error met while reading it, boxes); a bad item is rejected on its own."""
        report = BatchReport()
        for name, data, boxes in items:
            try:
                if isinstance(data, InputError):
                    raise data
                result = self.add(data, name, boxes, source, actor)
            except InputError as err:
                reason = f"{err.code}: {err.message}"
                self.reject(name, reason, actor)
                report.rejected.append({"name": name, "reason": reason})
                continue
            target = report.accepted if result.status == "accepted" else report.duplicates
            target.append({"id": result.sha256, "name": name})
        return report

    # ------------------------------------------------------------------ reads
    def max_seq(self) -> int:
        """The newest image's seq; 0 when empty."""
        with self._db() as db:
            return db.execute("SELECT COALESCE(MAX(seq), 0) FROM images").fetchone()[0]

    def count_since(self, seq: int) -> int:
        """Images stored after `seq` (e.g. since the pool a model was trained on)."""
        with self._db() as db:
            return db.execute("SELECT COUNT(*) FROM images WHERE seq > ?", (seq,)).fetchone()[0]

    def stats(self, since_seq: int) -> dict[str, int]:
        """total, new_since_active (seq > since_seq), rejected, max_seq, disk_bytes (images plus index)."""
        with self._db() as db:
            total, new, image_bytes, top = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(seq > ?), 0), COALESCE(SUM(bytes), 0), COALESCE(MAX(seq), 0) "
                "FROM images",
                (since_seq,),
            ).fetchone()
            rejected = db.execute("SELECT COUNT(*) FROM rejections").fetchone()[0]
            checked, confidence = db.execute("SELECT COUNT(*), AVG(teacher_confidence) FROM checks").fetchone()
            quarantined = db.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]
        index_bytes = sum(p.stat().st_size for p in self.root.glob("index.sqlite*") if p.is_file())
        return {
            "total": total,
            "new_since_active": new,
            "rejected": rejected,
            "max_seq": top,
            "disk_bytes": image_bytes + index_bytes,
            "checked": checked,
            "quarantined": quarantined,
            "mean_teacher_confidence": None if confidence is None else round(confidence, 4),
        }

    # ------------------------------------------------------------------ ingest checks (poseloop.worker.checks)
    def unchecked(self, limit: int) -> list[UploadRecord]:
        """Oldest images without an ingest check yet (quarantined ones are never offered again)."""
        with self._db() as db:
            rows = db.execute(
                "SELECT seq, sha256, path, width, height, boxes FROM images WHERE sha256 NOT IN "
                "(SELECT sha256 FROM checks) AND sha256 NOT IN (SELECT sha256 FROM quarantine) ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            UploadRecord(seq, sha, self.root / path, width, height, json.loads(boxes) if boxes else None)
            for seq, sha, path, width, height, boxes in rows
        ]

    def record_check(self, sha: str, thumbnail: Path, teacher_version: str, confidence: float, persons: int) -> None:
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO checks VALUES (?, ?, ?, ?, ?, ?)",
                (sha, str(thumbnail.relative_to(self.root)), teacher_version, confidence, persons, _now()),
            )

    def quarantine(self, sha: str, reason: str) -> None:
        """Take an image that broke a worker out of the checks and of every retrain pool (the file is kept, for
        inspection); its row stays, so the upload is not lost and a re-upload is still a duplicate."""
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO quarantine VALUES (?, ?, ?)", (sha, reason[:MAX_REASON_CHARS], _now()))

    def thumbnail_path(self, sha: str) -> Path:
        return self.root / "thumbs" / sha[:2] / f"{sha}.jpg"

    def snapshot(self, max_seq: int | None = None) -> list[UploadRecord]:
        """Images with seq <= max_seq (all when None), in upload order."""
        with self._db() as db:
            rows = db.execute(
                "SELECT seq, sha256, path, width, height, boxes FROM images WHERE seq <= ? AND sha256 NOT IN "
                "(SELECT sha256 FROM quarantine) ORDER BY seq",
                (max_seq if max_seq is not None else 2**63 - 1,),
            ).fetchall()
        return [
            UploadRecord(seq, sha, self.root / path, width, height, json.loads(boxes) if boxes else None)
            for seq, sha, path, width, height, boxes in rows
        ]

    # ------------------------------------------------------------------ internals
    def _seq_of(self, sha: str) -> int | None:
        with self._db() as db:
            row = db.execute("SELECT seq FROM images WHERE sha256 = ?", (sha,)).fetchone()
        return row[0] if row else None

    def _write_file(self, path: Path, data: bytes) -> None:
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.images_dir)  # the new shard directory's own entry
        atomic_write_bytes(path, data)

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """A fresh connection, one transaction (committed on success), closed afterwards."""
        self._ensure_schema()
        db = sqlite3.connect(self.db_path, timeout=30.0)
        try:
            db.execute("PRAGMA synchronous = FULL")
            with db:
                yield db
        finally:
            db.close()

    def _ensure_schema(self) -> None:
        with self._schema_lock:
            if self._schema_ready:
                return
            self.images_dir.mkdir(parents=True, exist_ok=True)
            open_wal(self.db_path, _SCHEMA)
            self._schema_ready = True


def sidecar_boxes(doc: object, what: str) -> dict[str, object]:
    """A boxes sidecar {"<name>": boxes}; LSPET's {"boxes": {...}, "format": ...} wrapper is unwrapped."""
    if isinstance(doc, dict) and isinstance(doc.get("boxes"), dict):
        doc = doc["boxes"]
    if not isinstance(doc, dict):
        raise InputError(
            422,
            "invalid_boxes",
            f"{what} must be a JSON object {{name: [[x, y, w, h], ...]}}, got {type(doc).__name__}",
        )
    return doc


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
