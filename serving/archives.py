"""Images out of an uploaded archive (tar, plain or gzip/bzip2/xz-compressed, or zip), read from a seekable file
(the spooled upload) without ever holding the archive in memory; the type is decided by magic bytes.

A tar is read twice in stream mode ("r|*"): the first pass checks the limits (entries, declared sizes) and finds
boxes.json, the second yields the images, so nothing is stored from an archive that breaks a limit or is corrupt.
A zip is opened through its central directory, whose entry count and size are checked first. Every member is
bounded by `max_member_bytes`, and the whole expanded content by `max_expanded_bytes` (compression bombs).
Members are never extracted by name (the store names files by content), so absolute or ../ paths are harmless.

boxes.json: the shallowest member of that name (e.g. `boxes.json` or `lspet/boxes.json`); an image's boxes are
looked up by its path relative to the directory holding boxes.json, then by its file name.
"""

from __future__ import annotations

import lzma
import posixpath
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from continual.uploads import sidecar_boxes
from core.inputs import InputError, parse_json

BOXES_NAME = "boxes.json"
MAX_BOXES_JSON = 64 << 20
_ZIP_DIR_BYTES_PER_ENTRY = 1024  # a generous central-directory record (46 bytes + name + extras)
_TAR_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)
_ZIP_ERRORS = (zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError, OSError, zlib.error, lzma.LZMAError)


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int  # entries of any kind (files, directories, links)
    max_member_bytes: int  # per image
    max_expanded_bytes: int  # all members together, uncompressed


class Archive:
    """An opened, limit-checked archive: `images()` yields (name, bytes or the InputError for that member, boxes)."""

    def __init__(self, file: BinaryIO, name: str, limits: ArchiveLimits) -> None:
        self.file, self.name, self.limits = file, name, limits
        head = file.read(512)
        file.seek(0)
        if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
            self.kind = "zip"
            self._zip = self._open_zip()
            boxes_member, self._boxes = self._zip_boxes()
        elif head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")) or head[257:262] == b"ustar":
            self.kind = "tar"
            boxes_member, self._boxes = self._scan_tar()
        else:
            raise InputError(
                415,
                "unsupported_archive",
                f"'archive' {name!r} is not a tar, tar.gz or zip file (starts with {head[:8].hex()})",
            )
        self._boxes_member = boxes_member
        self._boxes_dir = posixpath.dirname(boxes_member) if boxes_member else ""

    def images(self) -> Iterator[tuple[str, bytes | InputError, object]]:
        members = self._zip_members() if self.kind == "zip" else self._tar_members()
        for name, data in members:
            if name != self._boxes_member:
                yield name, data, self._boxes_for(name)

    # ------------------------------------------------------------------ tar
    def _scan_tar(self) -> tuple[str | None, dict[str, object]]:
        """Pass 1: limits, integrity and boxes.json; InputError (400/413) before anything is stored."""
        boxes_member, boxes, count = None, {}, 0
        try:
            with tarfile.open(fileobj=self.file, mode="r|*") as tar:
                for member in tar:
                    count += 1
                    if count > self.limits.max_members:
                        raise InputError(
                            413,
                            "too_many_files",
                            f"'archive' has more than {self.limits.max_members} entries (max_upload_files)",
                        )
                    self._check_expanded(member.offset_data + member.size)
                    name = _normalise(member.name)
                    if (
                        member.isfile()
                        and posixpath.basename(name) == BOXES_NAME
                        and (boxes_member is None or name.count("/") < boxes_member.count("/"))
                    ):
                        if member.size > MAX_BOXES_JSON:
                            raise _boxes_too_large(name, member.size)
                        boxes_member, boxes = name, self._read_boxes(_member_bytes(tar, member))
        except _TAR_ERRORS as err:
            raise InputError(
                400, "malformed_archive", f"'archive' {self.name!r} is not a readable tar: {type(err).__name__}: {err}"
            ) from None
        finally:
            self.file.seek(0)
        return boxes_member, boxes

    def _tar_members(self) -> Iterator[tuple[str, bytes | InputError]]:
        """Pass 2: the members' bytes, each read only once it is known to be within its limit."""
        try:
            with tarfile.open(fileobj=self.file, mode="r|*") as tar:
                for member in tar:
                    if member.isdir():
                        continue
                    name = _normalise(member.name)
                    if not member.isfile():
                        yield name, InputError(422, "not_a_file", "archive member is a link or special file")
                    elif member.size > self.limits.max_member_bytes:
                        yield name, _too_large(member.size, self.limits.max_member_bytes)
                    else:
                        yield name, _member_bytes(tar, member)
        except _TAR_ERRORS as err:  # the file changed since pass 1, or a failing disk
            yield self.name, InputError(400, "malformed_archive", f"reading stopped: {type(err).__name__}: {err}")

    # ------------------------------------------------------------------ zip
    def _open_zip(self) -> zipfile.ZipFile:
        entries, directory_bytes = _zip_end_record(self.file)
        if entries > self.limits.max_members:
            raise InputError(
                413,
                "too_many_files",
                f"'archive' has {entries} entries, limit {self.limits.max_members} (max_upload_files)",
            )
        if directory_bytes > (self.limits.max_members + 1) * _ZIP_DIR_BYTES_PER_ENTRY:
            raise InputError(413, "archive_too_large", f"'archive' central directory is {directory_bytes} bytes")
        try:
            archive = zipfile.ZipFile(self.file)
        except _ZIP_ERRORS as err:
            raise InputError(
                400, "malformed_archive", f"'archive' {self.name!r} is not a readable zip: {type(err).__name__}: {err}"
            ) from None
        infos = archive.infolist()
        if len(infos) > self.limits.max_members:
            raise InputError(
                413,
                "too_many_files",
                f"'archive' has {len(infos)} entries, limit {self.limits.max_members} (max_upload_files)",
            )
        self._check_expanded(sum(i.file_size for i in infos))
        return archive

    def _zip_members(self) -> Iterator[tuple[str, bytes | InputError]]:
        for info in self._zip.infolist():
            if info.is_dir():
                continue
            name = _normalise(info.filename)
            if info.file_size > self.limits.max_member_bytes:
                yield name, _too_large(info.file_size, self.limits.max_member_bytes)
                continue
            try:
                with self._zip.open(info) as member:  # decompresses at most file_size bytes (and checks the CRC)
                    data: bytes | InputError = member.read()
            except _ZIP_ERRORS as err:
                data = InputError(400, "malformed_archive", f"zip member unreadable: {type(err).__name__}: {err}")
            yield name, data

    def _zip_boxes(self) -> tuple[str | None, dict[str, object]]:
        candidates = [
            i
            for i in self._zip.infolist()
            if not i.is_dir() and posixpath.basename(_normalise(i.filename)) == BOXES_NAME
        ]
        if not candidates:
            return None, {}
        info = min(candidates, key=lambda i: _normalise(i.filename).count("/"))
        name = _normalise(info.filename)
        if info.file_size > MAX_BOXES_JSON:
            raise _boxes_too_large(name, info.file_size)
        try:
            raw = self._zip.read(info)
        except _ZIP_ERRORS as err:
            raise InputError(400, "malformed_archive", f"'archive' member {name} is unreadable: {err}") from None
        return name, self._read_boxes(raw)

    # ------------------------------------------------------------------ shared
    def _check_expanded(self, size: int) -> None:
        if size > self.limits.max_expanded_bytes:
            raise InputError(
                413, "archive_too_large", f"'archive' expands to more than {self.limits.max_expanded_bytes} bytes"
            )

    def _read_boxes(self, raw: bytes) -> dict[str, object]:
        return sidecar_boxes(parse_json(raw, f"archive member {BOXES_NAME}"), f"archive member {BOXES_NAME}")

    def _boxes_for(self, name: str) -> object:
        relative = posixpath.relpath(name, self._boxes_dir) if self._boxes_dir else name
        return self._boxes[relative] if relative in self._boxes else self._boxes.get(posixpath.basename(name))


def _zip_end_record(file: BinaryIO) -> tuple[int, int]:
    """(entries, central directory bytes) from the end-of-central-directory record; (0, 0) if none is found
    (zipfile then reports the damage). Zip64 archives show 0xFFFF / 0xFFFFFFFF here, which the limits refuse."""
    file.seek(0, 2)
    size = file.tell()
    file.seek(max(0, size - (22 + 65535)))  # the record is 22 bytes plus a comment of at most 64 KiB
    tail = file.read()
    file.seek(0)
    pos = tail.rfind(b"PK\x05\x06")
    if pos < 0 or pos + 22 > len(tail):
        return 0, 0
    return int.from_bytes(tail[pos + 10 : pos + 12], "little"), int.from_bytes(tail[pos + 12 : pos + 16], "little")


def _boxes_too_large(name: str, size: int) -> InputError:
    return InputError(413, "boxes_too_large", f"'archive' member {name} is {size} bytes, limit {MAX_BOXES_JSON}")


def _member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    """A regular file member's bytes (`extractfile` returns None only for a member that is not a file)."""
    f = tar.extractfile(member)
    if f is None:
        raise InputError(422, "not_a_file", "archive member is a link or special file")
    return f.read()


def _normalise(name: str) -> str:
    return posixpath.normpath(name).lstrip("/")


def _too_large(size: int, limit: int) -> InputError:
    return InputError(413, "image_too_large", f"archive member is {size} bytes, limit {limit} (max_image_bytes)")
