"""Images out of an uploaded archive (tar, plain or gzip/bzip2/xz-compressed, or zip), read from a seekable file
(the spooled upload) without ever holding the archive in memory; the type is decided by magic bytes.

Whole-archive checks come first and refuse the archive (4xx) before anything is stored: entry count, the
inflated size (counted while inflating, never trusted from headers), header sizes, integrity. Then each member is
an image or a rejection with its reason (per-member report, never half-silent): a link, a name that is not UTF-8
or names no file (`/`), a name over MAX_MEMBER_NAME_CHARS, a member over `max_member_bytes`, or a member that
cannot be read. Members are never extracted by name (the store names files by content), so absolute or ../
paths are harmless.

tar: a compressed tar is inflated ONCE into a temporary file, counting bytes (413 past `max_expanded_bytes`),
then read in random-access mode: one pass over the headers (limits, boxes.json) and reads of the members found.
GNU long-name/long-link headers are bounded by MAX_GNU_NAME_BYTES, PAX headers by MAX_PAX_BYTES and chains of
such headers by MAX_HEADER_CHAIN, before tarfile reads them into memory.
zip: opened through its central directory, whose entry count, declared sizes and layout are checked first;
entries whose data overlap (the "overlapping kernel" bomb: thousands of entries inflating one compressed block)
are refused, so each compressed byte is inflated at most once and the total is bounded by the declared sizes.

boxes.json: the shallowest member of that name (e.g. `boxes.json` or `lspet/boxes.json`); an image's boxes are
looked up by its path relative to the directory holding boxes.json, then by its file name.
Error messages never carry server paths (temporary files); names in them are cut to their bounds.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import posixpath
import re
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from continual.uploads import safe_name, safe_text, sidecar_boxes
from core.inputs import InputError, parse_json

BOXES_NAME = "boxes.json"
MAX_BOXES_JSON = 64 << 20
MAX_GNU_NAME_BYTES = 4096  # PATH_MAX: a GNU long name or long link header
MAX_PAX_BYTES = 64 << 10  # one PAX extended (or global) header
MAX_HEADER_CHAIN = 8  # extension headers in a row before a member's own header
MAX_MEMBER_NAME_CHARS = 1024  # a member path longer than this is rejected (names are stored and echoed)
_INFLATE_CHUNK = 1 << 20
_ZIP_DIR_BYTES_PER_ENTRY = 1024  # a generous central-directory record (46 bytes + name + extras)
_ZIP_LOCAL_HEADER = 30
_TAR_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    RuntimeError,
    NotImplementedError,
    EOFError,
    OSError,
    zlib.error,
    lzma.LZMAError,
    UnicodeDecodeError,  # a name flagged UTF-8 that is not
)
_PATH = re.compile(r"(?<![\w.])/[^\s'\",:]+")  # an absolute path inside an exception message


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int  # entries of any kind (files, directories, links)
    max_member_bytes: int  # per image
    max_expanded_bytes: int  # all members together, uncompressed


class _HeaderTooLarge(InputError):
    def __init__(self, message: str) -> None:
        super().__init__(413, "archive_header_too_large", message)


class _BoundedTarInfo(tarfile.TarInfo):
    """TarInfo that refuses oversized GNU long-name and PAX headers before tarfile reads them into memory."""

    def _proc_gnulong(self, tarfile):  # tarfile's private API
        if self.size > MAX_GNU_NAME_BYTES:
            raise _HeaderTooLarge(f"a GNU long-name header of {self.size} bytes (limit {MAX_GNU_NAME_BYTES})")
        return _chained(tarfile, lambda: super(_BoundedTarInfo, self)._proc_gnulong(tarfile))  # type: ignore[misc]

    def _proc_pax(self, tarfile):  # tarfile's private API
        if self.size > MAX_PAX_BYTES:
            raise _HeaderTooLarge(f"a PAX header of {self.size} bytes (limit {MAX_PAX_BYTES})")
        return _chained(tarfile, lambda: super(_BoundedTarInfo, self)._proc_pax(tarfile))  # type: ignore[misc]


def _chained(tar: tarfile.TarFile, read: Callable[[], tarfile.TarInfo]) -> tarfile.TarInfo:
    """Run one extension header's processing (which reads the next header recursively), bounding the chain."""
    depth = getattr(tar, "_poseloop_chain", 0)
    if depth >= MAX_HEADER_CHAIN:
        raise _HeaderTooLarge(f"more than {MAX_HEADER_CHAIN} extension headers in a row")
    tar._poseloop_chain = depth + 1  # type: ignore[attr-defined]
    try:
        return read()
    finally:
        tar._poseloop_chain = depth  # type: ignore[attr-defined]


class Archive:
    """An opened, limit-checked archive: `images()` yields (name, bytes or the InputError for that member, boxes).
    `close()` removes the temporary inflated copy (if any)."""

    def __init__(self, file: BinaryIO, name: str, limits: ArchiveLimits) -> None:
        self.file, self.name, self.limits = file, safe_text(name, 200), limits
        self._inflated: BinaryIO | None = None
        head = file.read(512)
        file.seek(0)
        if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
            self.kind = "zip"
            self._zip = self._open_zip()
            boxes_member, self._boxes = self._zip_boxes()
        elif head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")) or head[257:262] == b"ustar":
            self.kind = "tar"
            raw = self.file if head[257:262] == b"ustar" else self._inflate(head)
            self._tar, self._members, boxes_member, self._boxes = self._scan_tar(raw)
        else:
            raise InputError(
                415,
                "unsupported_archive",
                f"'archive' {self.name!r} is not a tar, tar.gz or zip file (starts with {head[:8].hex()})",
            )
        self._boxes_member = boxes_member
        self._boxes_dir = posixpath.dirname(boxes_member) if boxes_member else ""

    @property
    def member_bytes(self) -> int:
        """Uncompressed bytes of the regular-file members (what storing all of them could add to the pool)."""
        if self.kind == "zip":
            return sum(i.file_size for i in self._zip.infolist() if not i.is_dir())
        return sum(m.size for m in self._members if m.isfile())

    def images(self) -> Iterator[tuple[str, bytes | InputError, object]]:
        members = self._zip_members() if self.kind == "zip" else self._tar_members()
        for name, data in members:
            if name != self._boxes_member:
                yield name, data, (self._boxes_for(name) if not isinstance(data, InputError) else None)

    def close(self) -> None:
        if self._inflated is not None:
            self._inflated.close()
            self._inflated = None

    # ------------------------------------------------------------------ tar
    def _inflate(self, head: bytes) -> BinaryIO:
        """The compressed tar inflated once into a temporary file; 413 as soon as it passes max_expanded_bytes."""
        out = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close() or on error below
        total = 0
        try:
            with _decompressor(head, self.file) as src:
                while chunk := src.read(_INFLATE_CHUNK):
                    total += len(chunk)
                    self._check_expanded(total)
                    out.write(chunk)
        except _TAR_ERRORS as err:
            out.close()
            raise InputError(
                400, "malformed_archive", f"'archive' {self.name!r} cannot be decompressed: {describe(err)}"
            ) from None
        except BaseException:
            out.close()
            raise
        finally:
            self.file.seek(0)
        out.seek(0)
        self._inflated = out
        return out

    def _scan_tar(self, raw: BinaryIO) -> tuple[tarfile.TarFile, list[tarfile.TarInfo], str | None, dict]:
        """One pass over the headers: limits, integrity and boxes.json; InputError (400/413) before anything is
        stored. The members found are read afterwards without parsing or inflating anything again."""
        boxes_member, boxes, members = None, {}, []
        try:
            tar = tarfile.open(fileobj=raw, mode="r:", tarinfo=_BoundedTarInfo)  # noqa: SIM115 - lives with self
            for member in tar:
                members.append(member)
                if len(members) > self.limits.max_members:
                    raise InputError(
                        413,
                        "too_many_files",
                        f"'archive' has more than {self.limits.max_members} entries (max_upload_files)",
                    )
                self._check_expanded(member.offset_data + member.size)
                name, problem = _member_name(member.name)
                if (
                    problem is None
                    and member.isfile()
                    and posixpath.basename(name) == BOXES_NAME
                    and (boxes_member is None or name.count("/") < boxes_member.count("/"))
                ):
                    if member.size > MAX_BOXES_JSON:
                        raise _boxes_too_large(name, member.size)
                    boxes_member, boxes = name, self._read_boxes(_member_bytes(tar, member))
        except _TAR_ERRORS as err:
            raise InputError(
                400, "malformed_archive", f"'archive' {self.name!r} is not a readable tar: {describe(err)}"
            ) from None
        return tar, members, boxes_member, boxes

    def _tar_members(self) -> Iterator[tuple[str, bytes | InputError]]:
        """The members' bytes, each read only once it is known to be within its limit."""
        for member in self._members:
            if member.isdir():
                continue
            name, problem = _member_name(member.name)
            if problem is not None:
                yield name, problem
            elif not member.isfile():
                yield name, InputError(422, "not_a_file", "archive member is a link or special file")
            elif member.size > self.limits.max_member_bytes:
                yield name, _too_large(member.size, self.limits.max_member_bytes)
            else:
                try:
                    data: bytes | InputError = _member_bytes(self._tar, member)
                except _TAR_ERRORS as err:  # a failing disk under the temporary file
                    data = InputError(400, "malformed_archive", f"archive member unreadable: {describe(err)}")
                yield name, data

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
            infos = archive.infolist()
            if len(infos) > self.limits.max_members:
                raise InputError(
                    413,
                    "too_many_files",
                    f"'archive' has {len(infos)} entries, limit {self.limits.max_members} (max_upload_files)",
                )
            self._check_expanded(sum(i.file_size for i in infos))
            _check_zip_layout(self.file, infos)
        except _ZIP_ERRORS as err:
            raise InputError(
                400, "malformed_archive", f"'archive' {self.name!r} is not a readable zip: {describe(err)}"
            ) from None
        return archive

    def _zip_members(self) -> Iterator[tuple[str, bytes | InputError]]:
        for info in self._zip.infolist():
            if info.is_dir():
                continue
            name, problem = _member_name(info.filename)
            if problem is not None:
                yield name, problem
                continue
            if info.file_size > self.limits.max_member_bytes:
                yield name, _too_large(info.file_size, self.limits.max_member_bytes)
                continue
            try:
                with self._zip.open(info) as member:  # decompresses at most file_size bytes (and checks the CRC)
                    data: bytes | InputError = member.read()
            except _ZIP_ERRORS as err:
                data = InputError(400, "malformed_archive", f"zip member unreadable: {describe(err)}")
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
            raise InputError(
                400, "malformed_archive", f"'archive' member {safe_name(name)} is unreadable: {describe(err)}"
            ) from None
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


def _decompressor(head: bytes, file: BinaryIO) -> gzip.GzipFile | bz2.BZ2File | lzma.LZMAFile:
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=file, mode="rb")
    if head.startswith(b"BZh"):
        return bz2.BZ2File(file)
    return lzma.LZMAFile(file)


def describe(err: BaseException) -> str:
    """An exception for a client: its type and message, absolute paths replaced, at most 200 characters."""
    return safe_text(f"{type(err).__name__}: {_PATH.sub('<path>', str(err))}", 200)


def _member_name(raw: str) -> tuple[str, InputError | None]:
    """(the name as stored and shown, the rejection if the member's name is unusable)."""
    name = _normalise(raw)
    shown = safe_name(name) or safe_name(raw) or "(empty name)"
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:  # tarfile carries undecodable bytes as surrogates
        return shown, InputError(422, "invalid_name", "archive member name is not valid UTF-8")
    if len(raw) > MAX_MEMBER_NAME_CHARS:
        return shown, InputError(
            422, "name_too_long", f"archive member name is {len(raw)} characters, limit {MAX_MEMBER_NAME_CHARS}"
        )
    if name in ("", ".", ".."):
        return shown, InputError(422, "invalid_name", f"archive member name {safe_text(raw, 40)!r} names no file")
    return name, None


def _check_zip_layout(file: BinaryIO, infos: list[zipfile.ZipInfo]) -> None:
    """Every entry's data lies inside the file and after the previous entry's (zipfile raises BadZipFile)."""
    file.seek(0, 2)
    size = file.tell()
    end = 0
    for info in sorted(infos, key=lambda i: i.header_offset):
        if info.header_offset < end:
            raise zipfile.BadZipFile(f"entries overlap at byte {info.header_offset} (overlapping-entry zip bomb)")
        file.seek(info.header_offset)
        local = file.read(_ZIP_LOCAL_HEADER)
        if len(local) < _ZIP_LOCAL_HEADER or not local.startswith(b"PK\x03\x04"):
            raise zipfile.BadZipFile(f"no local header at byte {info.header_offset}")
        extra = int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
        end = info.header_offset + _ZIP_LOCAL_HEADER + extra + info.compress_size
        if end > size:
            raise zipfile.BadZipFile(f"an entry runs past the end of the file ({end} > {size} bytes)")
    file.seek(0)


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
    return InputError(
        413, "boxes_too_large", f"'archive' member {safe_name(name)} is {size} bytes, limit {MAX_BOXES_JSON}"
    )


def _member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    """A regular file member's bytes (`extractfile` returns None only for a member that is not a file)."""
    f = tar.extractfile(member)
    if f is None:
        raise InputError(422, "not_a_file", "archive member is a link or special file")
    return f.read()


def _normalise(name: str) -> str:
    return posixpath.normpath(name).lstrip("/") if name else ""


def _too_large(size: int, limit: int) -> InputError:
    return InputError(413, "image_too_large", f"archive member is {size} bytes, limit {limit} (max_image_bytes)")
