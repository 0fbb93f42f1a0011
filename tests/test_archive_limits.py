"""Uploaded archives that amplify memory, disk or CPU, or break the per-member report (issue: a loop you can trust —
tar long names and PAX headers, header chains, names that are not UTF-8 or name no file, one gzip inflated twice,
zip entries overlapping one compressed kernel, server paths in error messages). Archive is read directly: no server."""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile

import cv2
import numpy as np
import pytest

from continual.uploads import MAX_NAME_CHARS, UploadStore
from core.inputs import InputError
from serving.archives import MAX_MEMBER_NAME_CHARS, Archive, ArchiveLimits, describe

LIMITS = ArchiveLimits(max_members=100, max_member_bytes=1 << 20, max_expanded_bytes=8 << 20)


def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return cv2.imencode(".png", rng.integers(0, 255, (24, 32, 3), np.uint8))[1].tobytes()


def tar_of(members: list[tuple[str | bytes, bytes]], mode: str = "w:gz", fmt: int = tarfile.GNU_FORMAT) -> bytes:
    """A tar of (name, data); a bytes name is written raw (not UTF-8)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=fmt, encoding="utf-8", errors="surrogateescape") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name.decode("utf-8", "surrogateescape") if isinstance(name, bytes) else name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def gnu_long_name_headers(name_bytes: int, count: int = 1) -> bytes:
    """`count` GNU long-name ('L') headers in a row, each announcing a name of `name_bytes`, then a file."""
    out = b""
    for _ in range(count):
        info = tarfile.TarInfo("././@LongLink")
        info.type, info.size = tarfile.GNUTYPE_LONGNAME, name_bytes
        out += info.tobuf(tarfile.GNU_FORMAT) + b"a" * name_bytes + b"\x00" * (-name_bytes % 512)
    data = png(1)
    info = tarfile.TarInfo("x.png")
    info.size = len(data)
    return out + info.tobuf(tarfile.GNU_FORMAT) + data + b"\x00" * (-len(data) % 512) + b"\x00" * 1024


def open_archive(data: bytes, limits: ArchiveLimits = LIMITS) -> Archive:
    return Archive(io.BytesIO(data), "upload", limits)


def report(data: bytes) -> dict[str, bytes | InputError]:
    archive = open_archive(data)
    try:
        return {name: payload for name, payload, _boxes in archive.images()}
    finally:
        archive.close()


@pytest.mark.parametrize(
    "data",
    [
        gnu_long_name_headers(256 << 10),  # a 256 KiB GNU long name (the attack used 256 MiB)
        gnu_long_name_headers(100, count=20),  # a chain of extension headers
    ],
)
def test_oversized_or_chained_tar_headers_refuse_the_archive(data) -> None:
    with pytest.raises(InputError) as err:
        open_archive(data)
    assert err.value.status == 413 and err.value.code == "archive_header_too_large"


def test_oversized_pax_header_refuses_the_archive() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("x.png")
        info.pax_headers = {"comment": "c" * (200 << 10)}
        data = png(2)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(InputError) as err:
        open_archive(buf.getvalue())
    assert err.value.code == "archive_header_too_large" and "PAX" in err.value.message


def test_bad_member_names_are_rejections_and_the_rest_is_stored(tmp_path) -> None:
    long_name = "d/" * (MAX_MEMBER_NAME_CHARS // 2) + "long.png"
    members = [
        ("good1.png", png(3)),
        (b"caf\xe9\xff.png", png(4)),  # Latin-1 bytes: not UTF-8
        ("/", png(5)),
        (long_name, png(6)),
        ("good2.png", png(7)),
    ]
    data = tar_of(members, fmt=tarfile.PAX_FORMAT)
    items = report(data)
    assert isinstance(items["good1.png"], bytes) and isinstance(items["good2.png"], bytes)
    problems = {name: err.code for name, err in items.items() if isinstance(err, InputError)}
    assert sorted(problems.values()) == ["invalid_name", "invalid_name", "name_too_long"], problems
    assert all(len(name) <= MAX_NAME_CHARS for name in items)
    assert all(name.encode("utf-8") for name in items)  # every shown name is valid UTF-8

    store = UploadStore(tmp_path)  # end to end: nothing raises, good ones stored, bad ones reported and recorded
    archive = open_archive(data)
    try:
        batch = store.add_many(archive.images(), "archive:test", "tester")
    finally:
        archive.close()
    assert [a["name"] for a in batch.accepted] == ["good1.png", "good2.png"]
    assert len(batch.rejected) == 3 and store.stats(0)["rejected"] == 3
    on_disk = [p for p in (tmp_path / "images").rglob("*") if p.is_file()]
    assert len(on_disk) == 2  # no unindexed file left by a half-processed archive


class CountingReader(io.BytesIO):
    """The spooled upload, counting the bytes read from it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self.bytes_read += len(chunk)
        return chunk


@pytest.mark.parametrize("mode", ["w:gz", "w:bz2", "w:xz"])
def test_a_compressed_tar_is_inflated_once(mode) -> None:
    rng = np.random.default_rng(0)
    members = [(f"{i}.bin", rng.bytes(200_000)) for i in range(5)] + [("boxes.json", b"{}")]
    data = tar_of(members, mode)
    upload = CountingReader(data)
    archive = Archive(upload, "once.tgz", LIMITS)
    try:
        assert len([name for name, _data, _boxes in archive.images()]) == 5
    finally:
        archive.close()
    assert upload.bytes_read < 1.2 * len(data) + 512  # one pass over the compressed bytes, not two


def overlapping_zip(entries: int) -> bytes:
    """One deflated 512 KiB kernel, and `entries` central-directory records all pointing at it (same name, so
    zipfile's local-header check passes and each one would be inflated)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("k0000.png", bytes(512 << 10))
    raw = buf.getvalue()
    cd_start = raw.index(b"PK\x01\x02")
    eocd = raw.index(b"PK\x05\x06")
    record = raw[cd_start:eocd]
    directory = record * entries
    end = bytearray(raw[eocd:])
    struct.pack_into("<HHII", end, 8, entries, entries, len(directory), cd_start)
    return raw[:cd_start] + directory + bytes(end)


def test_zip_entries_overlapping_one_kernel_are_refused() -> None:
    data = overlapping_zip(10)  # 5 MiB inflated from ~1 KB if each entry were read
    assert zipfile.ZipFile(io.BytesIO(data)).testzip() is None  # a "valid" zip to zipfile
    with pytest.raises(InputError) as err:
        open_archive(data)
    assert err.value.status == 400 and err.value.code == "malformed_archive" and "overlap" in err.value.message


def test_error_messages_carry_no_server_paths() -> None:
    err = OSError(28, "No space left on device", "/tmp/poseloop-spool/abc123.part")
    text = describe(err)
    assert "/tmp" not in text and "No space left" in text and "<path>" in text
    with pytest.raises(InputError) as bad:
        open_archive(tar_of([("a.png", png(8))])[:200])  # a gzip cut short
    assert bad.value.code == "malformed_archive" and "/" not in bad.value.message.replace("'archive'", "")
