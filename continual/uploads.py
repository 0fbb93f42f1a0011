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
meets a file it cannot read; boxes are in the pixels of the decoded (EXIF-rotated) image. Decoding holds the
image's pixels against the caller's PixelBudget (the API's, shared with /v1/pose), acquired from the header alone.

Names (file names, archive member names) are stored and echoed as valid UTF-8 of at most MAX_NAME_CHARS; reasons
of at most MAX_REASON_CHARS. `quota_bytes` bounds the stored image bytes (507 per image past it; the API also
checks a whole request first). `sweep()` (at process start) deletes temp files and unindexed images that a killed
process left, once they are older than any write in progress could be.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from core.fileio import atomic_write_bytes, fsync_dir
from core.inputs import InputError, PixelBudget, check_image, decode_image, parse_boxes
from core.sqlite import open_wal, transaction

EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp", "bmp": "bmp"}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, sha256 TEXT UNIQUE NOT NULL, path TEXT NOT NULL, width INT, height INT,
    boxes TEXT, bytes INT, name TEXT, source TEXT, actor TEXT, created TEXT);
CREATE TABLE IF NOT EXISTS rejections (
    id INTEGER PRIMARY KEY, name TEXT, reason TEXT, actor TEXT, created TEXT);
CREATE TABLE IF NOT EXISTS checks (
    sha256 TEXT PRIMARY KEY, thumbnail TEXT, teacher_version TEXT, teacher_confidence REAL, persons INT,
    created TEXT, disagreement REAL);
CREATE TABLE IF NOT EXISTS quarantine (
    sha256 TEXT PRIMARY KEY, reason TEXT, created TEXT);
CREATE TABLE IF NOT EXISTS deleted (
    sha256 TEXT PRIMARY KEY, actor TEXT, reason TEXT, created TEXT);
"""
CHECK_STATES = ("pending", "checked", "quarantined")
# How the active-learning export ranks checked uploads: the served model's mean keypoint confidence (lowest
# first) or its flip disagreement (largest first; serving.pipeline.PosePipeline.predict_with_flip_gap).
LABELING_ORDER = {
    "low_confidence": ("c.teacher_confidence", "ASC"),
    "disagreement": ("c.disagreement", "DESC"),
}
MAX_REASON_CHARS = 500  # a rejection or quarantine reason is a log line, not an echo of whatever failed
MAX_NAME_CHARS = 255  # a stored / echoed name (a file name, an archive member path)
SWEEP_MIN_AGE_S = 600.0  # younger temp files and unindexed images may belong to a write in progress
log = logging.getLogger("poseloop.uploads")
# Columns added after the first release: an older index gets them (NULL in old rows) when first opened.
MIGRATIONS = (("rejections", "source", "TEXT"), ("checks", "disagreement", "REAL"))


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
    rejected_status: list[int] = field(default_factory=list, repr=False)  # the HTTP status of each rejection

    @property
    def all_rejected(self) -> bool:
        """Nothing was stored or found stored: every item (if any) was refused."""
        return not self.accepted and not self.duplicates

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
    def add(
        self,
        data: bytes,
        name: str,
        boxes: object,
        source: str,
        actor: str,
        budget: PixelBudget | None = None,
        budget_timeout_s: float = 30.0,
        room_bytes: int | None = None,
    ) -> AddResult:
        """Validate, store durably, then index one image. `boxes` is untrusted JSON (one [x, y, w, h] is taken
        as a one-box list); InputError names what is wrong with the image or which box is bad. `budget`: the
        decoded pixels are held against it while decoding (503 if they do not fit within budget_timeout_s);
        `room_bytes`: what the pool quota still allows (a new image larger than that is refused with 507)."""
        header = check_image(data, self.max_pixels)
        pixels = header.width * header.height
        if budget is not None:
            try:
                budget.acquire(pixels, budget_timeout_s)
            except TimeoutError:
                raise InputError(
                    503, "overloaded", f"too many large images are being decoded ({pixels} pixels wait); retry later"
                ) from None
        try:
            height, width = decode_image(data, self.max_pixels, header).shape[:2]
        finally:
            if budget is not None:
                budget.release(pixels)
        name = safe_name(name)
        if isinstance(boxes, list) and len(boxes) == 4 and not any(isinstance(v, list) for v in boxes):
            boxes = [boxes]
        parsed = parse_boxes(boxes, width, height, self.max_boxes)
        if parsed is not None and len(parsed) == 0:
            raise InputError(422, "invalid_boxes", "empty box list (leave the boxes out to use the whole image)")
        sha = hashlib.sha256(data).hexdigest()
        known = self._seq_of(sha)
        if known is not None:
            return AddResult("duplicate", sha, known)
        if room_bytes is not None and len(data) > room_bytes:
            raise InputError(
                507,
                "pool_quota_exceeded",
                f"the unlabeled pool is full: this image needs {len(data)} bytes, {max(room_bytes, 0)} are left "
                "(max_pool_bytes); nothing more is stored until images are removed or the quota is raised",
            )
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
                db.execute("DELETE FROM deleted WHERE sha256 = ?", (sha,))  # uploaded again after a delete
                assert cursor.lastrowid is not None, "an INSERT that stored a row has its rowid"
                return AddResult("accepted", sha, cursor.lastrowid)
        seq = self._seq_of(sha)  # another writer stored the same bytes first
        if seq is None:
            raise RuntimeError(f"upload {sha} was neither inserted nor found in the index")
        return AddResult("duplicate", sha, seq)

    def reject(self, name: str, reason: str, actor: str, source: str | None = None) -> None:
        """Record a refused item (counted by stats, per source); name and reason are cut to their bounds."""
        with self._db() as db:
            db.execute(
                "INSERT INTO rejections (name, reason, actor, created, source) VALUES (?, ?, ?, ?, ?)",
                (safe_name(name), safe_text(reason, MAX_REASON_CHARS), actor, _now(), source),
            )

    def add_many(
        self,
        items: Iterable[tuple[str, bytes | InputError, object]],
        source: str,
        actor: str,
        budget: PixelBudget | None = None,
        budget_timeout_s: float = 30.0,
        quota_bytes: int | None = None,
    ) -> BatchReport:
        """add() each (name, data or the error met while reading it, boxes); a bad item is rejected on its own,
        with its reason. `quota_bytes`: the pool's quota, checked against the bytes stored when the call began
        plus what it stored (concurrent requests may pass it by at most one request)."""
        report = BatchReport()
        room = None if quota_bytes is None else quota_bytes - self.stored_bytes()
        for raw_name, data, boxes in items:
            name = safe_name(raw_name)
            try:
                if isinstance(data, InputError):
                    raise data
                try:
                    result = self.add(data, name, boxes, source, actor, budget, budget_timeout_s, room)
                except OSError as err:
                    if err.errno != errno.ENOSPC:
                        raise
                    raise InputError(507, "insufficient_storage", "the server's disk is full; not stored") from None
            except InputError as err:
                reason = safe_text(f"{err.code}: {err.message}", MAX_REASON_CHARS)
                self.reject(name, reason, actor, source)
                report.rejected.append({"name": name, "reason": reason})
                report.rejected_status.append(err.status)
                continue
            if result.status == "accepted" and room is not None:
                room -= len(data)
            target = report.accepted if result.status == "accepted" else report.duplicates
            target.append({"id": result.sha256, "name": name})
        return report

    def sweep(self, min_age_s: float = SWEEP_MIN_AGE_S, now: float | None = None) -> dict[str, int]:
        """Delete what a killed process (kill -9, power cut) left: temp files of core.fileio (`.<name>.<pid>.
        <thread>.tmp`, under images/ and thumbs/) and image files without an index row, when older than
        `min_age_s` (a younger one may be another process's write in progress). Logged; returns the counts."""
        cutoff = (time.time() if now is None else now) - min_age_s
        removed = {"temp_files": 0, "unindexed_images": 0}
        if not self.root.is_dir():
            return removed
        for path in self.root.rglob(".*.tmp"):
            if _older_than(path, cutoff):
                path.unlink(missing_ok=True)
                removed["temp_files"] += 1
        if self.images_dir.is_dir():
            with self._db() as db:
                indexed = {row[0] for row in db.execute("SELECT path FROM images")}
            for path in self.images_dir.glob("*/*"):
                relative = path.relative_to(self.root).as_posix()
                if path.name.startswith(".") or relative in indexed or not _older_than(path, cutoff):
                    continue
                path.unlink(missing_ok=True)
                removed["unindexed_images"] += 1
        level = logging.WARNING if any(removed.values()) else logging.INFO
        log.log(
            level,
            "upload sweep of %s: removed %d temp file(s) and %d unindexed image(s)",
            self.root,
            removed["temp_files"],
            removed["unindexed_images"],
        )
        return removed

    # ------------------------------------------------------------------ reads
    def max_seq(self) -> int:
        """The newest image's seq; 0 when empty."""
        with self._db() as db:
            return db.execute("SELECT COALESCE(MAX(seq), 0) FROM images").fetchone()[0]

    def stored_bytes(self) -> int:
        """Bytes of the stored images (what the pool quota counts)."""
        with self._db() as db:
            return db.execute("SELECT COALESCE(SUM(bytes), 0) FROM images").fetchone()[0]

    def count_since(self, seq: int) -> int:
        """Images stored after `seq` (e.g. since the pool a model was trained on)."""
        with self._db() as db:
            return db.execute("SELECT COUNT(*) FROM images WHERE seq > ?", (seq,)).fetchone()[0]

    def stats(self, since_seq: int) -> dict:
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
            sources: dict[str, dict[str, int]] = {
                name or "-": {"images": n, "bytes": size, "rejected": 0}
                for name, n, size in db.execute(
                    "SELECT source, COUNT(*), COALESCE(SUM(bytes), 0) FROM images GROUP BY 1"
                )
            }
            for name, n in db.execute("SELECT source, COUNT(*) FROM rejections GROUP BY 1"):
                sources.setdefault(name or "-", {"images": 0, "bytes": 0, "rejected": 0})["rejected"] = n
        index_bytes = sum(p.stat().st_size for p in self.root.glob("index.sqlite*") if p.is_file())
        return {
            "sources": sources,
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

    def record_check(
        self,
        sha: str,
        thumbnail: Path,
        teacher_version: str,
        confidence: float,
        persons: int,
        disagreement: float | None = None,
    ) -> None:
        """One ingest check's result; `disagreement` is None when the model found no person to compare views on."""
        thumb = str(thumbnail.relative_to(self.root))
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO checks (sha256, thumbnail, teacher_version, teacher_confidence, persons, "
                "created, disagreement) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (sha, thumb, teacher_version, confidence, persons, _now(), disagreement),
            )

    def quarantine(self, sha: str, reason: str) -> None:
        """Take an image that broke a worker out of the checks and of every retrain pool (the file is kept, for
        inspection); its row stays, so the upload is not lost and a re-upload is still a duplicate."""
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO quarantine VALUES (?, ?, ?)", (sha, reason[:MAX_REASON_CHARS], _now()))

    # ------------------------------------------------------------------ browsing, deleting, labeling candidates
    def items(self, after_seq: int = 0, limit: int = 50, source: str | None = None) -> list[dict]:
        """Stored images with seq > after_seq in upload order (a page; the next starts after the last seq), each
        with its ingest-check state ("pending", "checked", "quarantined") and teacher confidence."""
        where, args = "i.seq > ?", list[object]([after_seq])
        if source is not None:
            where, args = where + " AND i.source = ?", [*args, source]
        with self._db() as db:
            rows = db.execute(
                "SELECT i.seq, i.sha256, i.name, i.source, i.bytes, i.width, i.height, i.boxes, i.created, "
                "c.teacher_confidence, c.disagreement, c.persons, c.thumbnail, q.reason FROM images i "
                "LEFT JOIN checks c ON c.sha256 = i.sha256 LEFT JOIN quarantine q ON q.sha256 = i.sha256 "
                f"WHERE {where} ORDER BY i.seq LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [_pool_item(*row) for row in rows]

    def get(self, sha: str) -> UploadRecord | None:
        with self._db() as db:
            row = db.execute(
                "SELECT seq, sha256, path, width, height, boxes FROM images WHERE sha256 = ?", (sha,)
            ).fetchone()
        if row is None:
            return None
        seq, sha, path, width, height, boxes = row
        return UploadRecord(seq, sha, self.root / path, width, height, json.loads(boxes) if boxes else None)

    def delete(self, sha: str, actor: str, reason: str | None = None) -> dict | None:
        """Remove one image from the pool for good: its index rows first (so no later snapshot names it), then
        its file and thumbnail (unlinked, directory fsynced), then an audit line (audit.jsonl, fsynced).
        None when no such image is stored. A job planned before keeps its seq but no longer finds the image."""
        with self._db() as db:
            row = db.execute("SELECT seq, path, name, source, bytes FROM images WHERE sha256 = ?", (sha,)).fetchone()
            if row is None:
                return None
            for table in ("images", "checks", "quarantine"):
                db.execute(f"DELETE FROM {table} WHERE sha256 = ?", (sha,))
            db.execute(
                "INSERT OR REPLACE INTO deleted VALUES (?, ?, ?, ?)",
                (sha, actor, None if reason is None else safe_text(reason, MAX_REASON_CHARS), _now()),
            )
        seq, path, name, source, size = row
        for file in (self.root / path, self.thumbnail_path(sha)):
            if file.exists():
                file.unlink()
                fsync_dir(file.parent)
        event = {
            "ts": _now(),
            "actor": actor,
            "action": "delete",
            "sha256": sha,
            "seq": seq,
            "name": name,
            "source": source,
            "bytes": size,
            "reason": reason,
        }
        with open(self.root / "audit.jsonl", "a") as fh:
            fh.write(json.dumps(event) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        log.info("upload %s (%s) deleted by %s", sha, name, actor)
        return event

    def labeling_candidates(
        self, n: int, exclude: set[str], strategy: str = "low_confidence"
    ) -> list[tuple[UploadRecord, float]]:
        """The `n` most informative checked images by `strategy` (LABELING_ORDER: lowest confidence, or largest
        flip disagreement — images checked before disagreement was recorded, or with no person, have none and are
        not candidates for it), quarantined ones and `exclude` (e.g. already labeled) left out: (record, score)."""
        score, direction = LABELING_ORDER[strategy]
        with self._db() as db:
            rows = db.execute(
                f"SELECT i.seq, i.sha256, i.path, i.width, i.height, i.boxes, {score} FROM images i "
                "JOIN checks c ON c.sha256 = i.sha256 WHERE i.sha256 NOT IN (SELECT sha256 FROM quarantine) "
                f"AND {score} IS NOT NULL ORDER BY {score} {direction}, i.seq"
            ).fetchall()
        out = []
        for seq, sha, path, w, h, boxes, value in rows:
            if sha not in exclude:
                out.append(
                    (
                        UploadRecord(seq, sha, self.root / path, w, h, json.loads(boxes) if boxes else None),
                        float(value),
                    )
                )
            if len(out) == n:
                break
        return out

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
        with transaction(self.db_path) as db:
            yield db

    def _ensure_schema(self) -> None:
        with self._schema_lock:
            if self._schema_ready:
                return
            self.images_dir.mkdir(parents=True, exist_ok=True)
            open_wal(self.db_path, _SCHEMA)
            with contextlib.closing(sqlite3.connect(self.db_path, timeout=30.0)) as db, db:
                for table, column, kind in MIGRATIONS:
                    if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
                        with contextlib.suppress(sqlite3.OperationalError):  # another process added it meanwhile
                            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            self._schema_ready = True


def _pool_item(
    seq, sha, name, src, size, w, h, boxes, created, confidence, disagreement, persons, thumb, quarantined
) -> dict:
    """One row of UploadStore.items' query as the pool page's item."""
    return {
        "seq": seq,
        "sha256": sha,
        "name": name,
        "source": src,
        "bytes": size,
        "width": w,
        "height": h,
        "boxes": json.loads(boxes) if boxes else None,
        "created": created,
        "check": "quarantined" if quarantined else ("checked" if thumb else "pending"),
        "teacher_confidence": confidence,
        "disagreement": disagreement,
        "persons": persons,
        "has_thumbnail": bool(thumb),
        "quarantine_reason": quarantined,
    }


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


def safe_text(text: str, limit: int) -> str:
    """`text` as valid UTF-8 (surrogates, e.g. undecodable bytes of a tar name, become U+FFFD), cut to `limit` chars."""
    clean = text if text.isascii() else text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


def safe_name(name: str) -> str:
    return safe_text(name, MAX_NAME_CHARS)


def _older_than(path: Path, cutoff: float) -> bool:
    try:
        return path.is_file() and path.stat().st_mtime < cutoff
    except OSError:  # removed meanwhile
        return False


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
