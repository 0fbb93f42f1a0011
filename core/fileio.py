"""The one durable write (no torch): readers never see half a file, and a completed write survives a power cut.

Every file PoseLoop persists (registry index and versions, uploads, checkpoints, Triton repository files) goes
through `atomic_write`: a hidden temp file beside the target, written and fsynced, renamed over the target,
then the directory fsynced so the rename itself is durable.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call `write(file)` on a temp file beside `path`, fsync it, rename it over `path`, fsync the directory.
    The temp name is unique per process and thread: concurrent writers never share it; a failed write leaves
    the old file (or none) and no temp file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """`atomic_write` of a bytes value."""
    atomic_write(path, lambda f: f.write(data))


def atomic_copy(src: Path, dst: Path) -> dict[str, Any]:
    """Durably copy `src` to `dst` (streamed, never whole in memory); returns {"sha256", "size"} of the bytes
    written."""
    digest, size = hashlib.sha256(), 0

    def copy(out: BinaryIO) -> None:
        nonlocal size
        with open(src, "rb") as fin:
            while chunk := fin.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)

    atomic_write(dst, copy)
    return {"sha256": digest.hexdigest(), "size": size}


def fsync_dir(path: Path) -> None:
    """Make the directory's entries (a rename, a new file or subdirectory) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
