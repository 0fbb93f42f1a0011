"""Model registry on a local (or shared) disk: immutable versions, a locked state index, an append-only audit log.

Layout under `root`:
    versions/<v>/model.onnx, checkpoint<.suffix> (optional), meta.json   immutable once visible
    index.json      {"active", "previous_active", "versions": {v: {"state", "reason", "created", "updated",
                    "on_disk"}}}; replaced atomically (tmp + fsync + rename + fsync of the directory)
    audit.jsonl     one JSON object per line, fsynced: ts, actor, action, version, from, to, reason
    registry.lock   fcntl.flock target: every read-modify-write of the index happens under it, so API
                    replicas and training workers on one volume can share the registry
    .staging/       where a version is assembled before its directory is renamed into versions/

Versions are increasing integers as strings. A version is visible only once it is in the index; the index
entry is written after its directory was renamed into place, so a crash mid-register leaves at most an
invisible directory (removed by the next prune) and never a half-written visible version.

States: candidate → active → retired (replaced) → active again (rollback); candidate/retired → rejected
(with a reason; terminal: a fixed model is registered again). `previous_active` is the version that was
active just before the current one, so a rollback followed by a rollback swaps back (like `kubectl rollout
undo`). Pruning keeps the newest `keep_last` versions plus every candidate and the active and previous
active versions; older retired/rejected versions lose their files (the index keeps their history).
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.fileio import atomic_copy, atomic_write_bytes, fsync_dir
from models.metadata import ModelMetadata

STATES = ("candidate", "active", "retired", "rejected")
MODEL_FILE = "model.onnx"
META_FILE = "meta.json"
STALE_STAGING_S = 6 * 3600


class RegistryError(RuntimeError):
    """An operation the registry refuses (bad transition, missing files, unreadable model)."""


class VersionNotFound(RegistryError, LookupError):
    """No such version in the registry."""


@dataclass(frozen=True)
class VersionInfo:
    """One registered version: its state and its immutable meta.json record."""

    version: str
    state: str
    reason: str | None
    created: str
    updated: str
    on_disk: bool
    path: Path
    meta: Mapping[str, Any]

    @property
    def onnx_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def checkpoint_path(self) -> Path | None:
        name = self.meta.get("checkpoint")
        return self.path / name if name else None

    @property
    def parent(self) -> str | None:
        return self.meta.get("parent")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (what GET /v1/models lists)."""
        return {
            "version": self.version,
            "status": self.state,
            "reason": self.reason,
            "created": self.created,
            "updated": self.updated,
            "on_disk": self.on_disk,
            "parent": self.parent,
            "metrics": self.meta.get("metrics") or {},
            "size_bytes": self.meta.get("size_bytes"),
            "files": self.meta.get("files", {}),
            "data_summary": self.meta.get("data_summary"),
            "config": self.meta.get("config"),
            "model": self.meta.get("onnx", {}),
            "actor": self.meta.get("actor"),
        }


class ModelRegistry:
    """Registry rooted at `root` (created if missing). Safe across threads and processes sharing the disk."""

    def __init__(self, root: str | Path, keep_last: int = 5) -> None:
        if keep_last < 2:
            raise ValueError(f"keep_last must be >= 2, got {keep_last}")
        self.root = Path(root)
        self.keep_last = keep_last
        self.versions_dir = self.root / "versions"
        self.staging_dir = self.root / ".staging"
        self.index_path = self.root / "index.json"
        self.audit_path = self.root / "audit.jsonl"
        self.lock_path = self.root / "registry.lock"
        for d in (self.root, self.versions_dir, self.staging_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._meta_cache: dict[str, dict] = {}

    # ------------------------------------------------------------------ writes
    def register(
        self,
        onnx_path: str | Path,
        checkpoint_path: str | Path | None = None,
        metrics: Mapping[str, Any] | None = None,
        parent: str | None = None,
        data_summary: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
        actor: str = "unknown",
    ) -> VersionInfo:
        """Copy the files in as a new `candidate` version (the next integer) and return it.

        The ONNX must carry the PoseLoop metadata contract (RegistryError otherwise; nothing is written).
        """
        onnx_path = Path(onnx_path)
        try:
            summary = onnx_summary(ModelMetadata.from_onnx(onnx_path))
        except Exception as err:
            raise RegistryError(f"cannot register {onnx_path}: {type(err).__name__}: {err}") from err
        if parent is not None and parent not in self._read_index()["versions"]:
            raise VersionNotFound(f"parent version {parent!r} is not in the registry")
        stage = self.staging_dir / f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex}"
        stage.mkdir()
        try:
            files = {MODEL_FILE: atomic_copy(onnx_path, stage / MODEL_FILE)}
            checkpoint_name = None
            if checkpoint_path is not None:
                checkpoint_name = "checkpoint" + Path(checkpoint_path).suffix
                files[checkpoint_name] = atomic_copy(Path(checkpoint_path), stage / checkpoint_name)
            with self._locked():
                index = self._read_index()
                version = str(self._next_version(index))
                now = _now()
                meta = {
                    "version": version,
                    "created": now,
                    "actor": actor,
                    "parent": parent,
                    "metrics": dict(metrics or {}),
                    "data_summary": dict(data_summary or {}) or None,
                    "config": dict(config or {}) or None,
                    "files": files,
                    "checkpoint": checkpoint_name,
                    "size_bytes": sum(f["size"] for f in files.values()),
                    "onnx": summary,
                    "source": str(onnx_path),
                }
                atomic_write_bytes(stage / META_FILE, (json.dumps(meta, indent=2) + "\n").encode())
                fsync_dir(stage)
                os.rename(stage, self.versions_dir / version)
                fsync_dir(self.versions_dir)
                fsync_dir(self.staging_dir)
                index["versions"][version] = {
                    "state": "candidate",
                    "reason": None,
                    "created": now,
                    "updated": now,
                    "on_disk": True,
                }
                self._write_index(index)
                self._audit(
                    actor,
                    "register",
                    version,
                    None,
                    "candidate",
                    None,
                    sha256=files[MODEL_FILE]["sha256"],
                    parent=parent,
                )
                self._prune_locked(index, actor)
        finally:
            if stage.exists():
                shutil.rmtree(stage, ignore_errors=True)
        return self.get(version)

    def set_active(self, version: str, actor: str, reason: str | None = None, action: str = "promote") -> VersionInfo:
        """Make `version` the active one (the old active becomes retired and previous_active); no-op if active."""
        with self._locked():
            self._activate_locked(self._read_index(), version, actor, reason, action)
        return self.get(version)

    def promote_if(self, version: str, expected_active: str | None, actor: str, reason: str) -> str | None:
        """Automatic promotion (the retrain gate): activate `version` only if promotion is not pinned and the
        active version is still `expected_active` (the one the candidate was measured against). Returns None
        when promoted, else why not — checked under the lock, so a concurrent rollback or pin always wins."""
        with self._locked():
            index = self._read_index()
            pin = index.get("pinned")
            if pin:
                return f"automatic promotion is pinned by {pin['actor']} ({pin.get('reason') or 'no reason'})"
            if index["active"] != expected_active:
                return (
                    f"the active version changed while the job ran ({expected_active} → {index['active']}); "
                    "not promoted automatically"
                )
            self._activate_locked(index, version, actor, reason, "promote")
        return None

    def set_pinned(self, pinned: bool, actor: str, reason: str | None = None) -> dict[str, Any] | None:
        """Freeze (or unfreeze) automatic promotion; manual promote/rollback still work. Audited."""
        with self._locked():
            index = self._read_index()
            index["pinned"] = {"actor": actor, "reason": reason, "since": _now()} if pinned else None
            self._write_index(index)
            self._audit(actor, "pin" if pinned else "unpin", index["active"] or "-", None, None, reason)
            return index["pinned"]

    def pinned(self) -> dict[str, Any] | None:
        return self._read_index().get("pinned")

    def _activate_locked(
        self, index: dict[str, Any], version: str, actor: str, reason: str | None, action: str
    ) -> None:
        entry = self._entry(index, version)
        if index["active"] == version:
            return
        if entry["state"] == "rejected":
            raise RegistryError(f"version {version} was rejected ({entry['reason']}); register a fixed model")
        if not entry["on_disk"] or not (self.versions_dir / version / MODEL_FILE).exists():
            raise RegistryError(f"version {version} has no files on disk (pruned)")
        old, now = index["active"], _now()
        if old is not None:
            index["versions"][old].update(state="retired", reason=f"replaced by {version}", updated=now)
            index["previous_active"] = old
        from_state = entry["state"]
        entry.update(state="active", reason=reason, updated=now)
        index["active"] = version
        self._write_index(index)
        self._audit(actor, action, version, from_state, "active", reason, previous_active=old)
        if old is not None:
            self._audit(actor, "retire", old, "active", "retired", f"replaced by {version}")
        self._prune_locked(index, actor)

    def mark_rejected(self, version: str, reason: str, actor: str) -> VersionInfo:
        """candidate/retired → rejected with `reason`. The active version cannot be rejected (roll back first)."""
        with self._locked():
            index = self._read_index()
            entry = self._entry(index, version)
            if index["active"] == version:
                raise RegistryError(f"version {version} is active; promote or roll back to another one first")
            if entry["state"] != "rejected":
                from_state = entry["state"]
                entry.update(state="rejected", reason=reason, updated=_now())
                self._write_index(index)
                self._audit(actor, "reject", version, from_state, "rejected", reason)
        return self.get(version)

    def prune(self, actor: str = "registry") -> list[str]:
        """Delete the files of old retired/rejected versions (see module docstring); returns their versions."""
        with self._locked():
            return self._prune_locked(self._read_index(), actor)

    # -------------------------------------------------------------- reads (no lock: the index is replaced atomically)
    def list(self) -> list[VersionInfo]:
        index = self._read_index()
        return [self._info(v, e) for v, e in sorted(index["versions"].items(), key=lambda kv: int(kv[0]))]

    def get(self, version: str) -> VersionInfo:
        index = self._read_index()
        return self._info(version, self._entry(index, version))

    def active(self) -> VersionInfo | None:
        index = self._read_index()
        return self._info(index["active"], index["versions"][index["active"]]) if index["active"] else None

    def previous_active(self) -> VersionInfo | None:
        index = self._read_index()
        prev = index["previous_active"]
        return self._info(prev, index["versions"][prev]) if prev else None

    def events(self, limit: int = 100) -> builtins.list[dict[str, Any]]:
        """The last `limit` audit events, oldest first."""
        if limit <= 0 or not self.audit_path.exists():
            return []
        lines = self.audit_path.read_text().splitlines()
        events = []
        for line in lines[-limit:]:
            with contextlib.suppress(json.JSONDecodeError):  # a torn last line after a power cut
                events.append(json.loads(line))
        return events

    # ------------------------------------------------------------------ internals
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive flock (each call opens its own file description, so it also excludes other threads)."""
        with open(self.lock_path, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _read_index(self) -> dict[str, Any]:
        if not self.index_path.exists():
            return {"format": 1, "active": None, "previous_active": None, "versions": {}}
        return json.loads(self.index_path.read_text())

    def _write_index(self, index: dict[str, Any]) -> None:
        atomic_write_bytes(self.index_path, (json.dumps(index, indent=1, sort_keys=True) + "\n").encode())

    def _audit(
        self,
        actor: str,
        action: str,
        version: str,
        from_state: str | None,
        to_state: str | None,
        reason: str | None,
        **extra: Any,
    ) -> None:
        event = {
            "ts": _now(),
            "actor": actor,
            "action": action,
            "version": version,
            "from": from_state,
            "to": to_state,
            "reason": reason,
            **extra,
        }
        with open(self.audit_path, "a") as fh:
            fh.write(json.dumps(event) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _entry(self, index: dict[str, Any], version: str) -> dict[str, Any]:
        entry = index["versions"].get(str(version))
        if entry is None:
            raise VersionNotFound(f"model version {version!r} is not in the registry")
        return entry

    def _info(self, version: str, entry: Mapping[str, Any]) -> VersionInfo:
        meta = self._meta_cache.get(version)
        if meta is None:
            path = self.versions_dir / version / META_FILE
            meta = json.loads(path.read_text()) if path.exists() else {}
            if meta:
                self._meta_cache[version] = meta
        return VersionInfo(
            version=version,
            state=entry["state"],
            reason=entry["reason"],
            created=entry["created"],
            updated=entry["updated"],
            on_disk=entry["on_disk"],
            path=self.versions_dir / version,
            meta=meta,
        )

    def _next_version(self, index: dict[str, Any]) -> int:
        numbers = [int(v) for v in index["versions"]]
        numbers += [int(p.name) for p in self.versions_dir.iterdir() if p.name.isdigit()]
        return max(numbers, default=0) + 1

    def _prune_locked(self, index: dict[str, Any], actor: str) -> builtins.list[str]:
        versions = sorted(index["versions"], key=int, reverse=True)
        protected = {index["active"], index["previous_active"], *versions[: self.keep_last]}
        pruned = []
        for v in versions:
            entry = index["versions"][v]
            if v in protected or not entry["on_disk"] or entry["state"] not in ("retired", "rejected"):
                continue
            shutil.rmtree(self.versions_dir / v, ignore_errors=True)
            entry["on_disk"] = False
            pruned.append(v)
        if pruned:
            self._write_index(index)
            for v in pruned:
                self._audit(
                    actor,
                    "prune",
                    v,
                    index["versions"][v]["state"],
                    index["versions"][v]["state"],
                    f"beyond the newest {self.keep_last} versions",
                )
        for path in self.versions_dir.iterdir():  # directories of registrations that died before their index write
            if path.name not in index["versions"]:
                shutil.rmtree(path, ignore_errors=True)
        self._sweep_staging()
        return pruned

    def _sweep_staging(self) -> None:
        """Remove staging directories of dead local processes, and any older than STALE_STAGING_S."""
        host = socket.gethostname()
        for path in self.staging_dir.iterdir():
            parts = path.name.rsplit("-", 2)
            local_dead = len(parts) == 3 and parts[0] == host and parts[1].isdigit() and not _pid_alive(int(parts[1]))
            with contextlib.suppress(FileNotFoundError):
                if local_dead or time.time() - path.stat().st_mtime > STALE_STAGING_S:
                    shutil.rmtree(path, ignore_errors=True)


def onnx_summary(meta: ModelMetadata) -> dict[str, Any]:
    """The part of the ONNX metadata contract worth listing next to a version."""
    return {
        "schema": meta.schema.name,
        "num_keypoints": meta.schema.num_keypoints,
        "input_size_wh": [meta.input_size.w, meta.input_size.h],
        "heatmap_stride": meta.heatmap_stride,
        "backbone": meta.backbone,
        "head": meta.head,
        "decode": meta.decode,
        "export_version": meta.version,
        "trained_on": meta.trained_on,
    }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
