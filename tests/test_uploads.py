"""Unlabeled uploads: the UploadStore on disk, POST /v1/unlabeled and its stats over a real uvicorn server, and
`poseloop ingest` from a real video and a folder of real LSPET images against that server."""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import sqlite3
import tarfile
import threading
import time
import zipfile

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from continual.settings import Settings
from continual.uploads import UploadStore
from core.inputs import InputError
from models.registry import ModelRegistry
from poseloop.cli import app as cli_app
from serving.app import create_app
from tests.data_paths import data_path
from tests.serving_fixtures import api_settings, auth, encode, sample_image, thread_server, tiny_pose_onnx

UPLOAD, OPS, INFER = (secrets.token_urlsafe(16) for _ in range(3))
MAX_UPLOAD_BYTES = 1 << 20
MAX_IMAGE_BYTES = 300_000
MAX_FILES = 20


def png(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    return encode(sample_image(seed, size), ".png")


def jpeg(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    return encode(sample_image(seed, size), ".jpg")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------- store
def test_store_add_dedup_and_durable_file(tmp_path) -> None:
    store = UploadStore(tmp_path)
    data = png(1)
    first = store.add(data, "a.png", [[2, 3, 30, 40]], "test", "alice")
    assert first.status == "accepted" and first.sha256 == sha(data) and first.seq == 1
    stored = tmp_path / "images" / first.sha256[:2] / f"{first.sha256}.png"
    assert sha(stored.read_bytes()) == first.sha256
    again = store.add(data, "copy.png", None, "test", "bob")
    assert (again.status, again.sha256, again.seq) == ("duplicate", first.sha256, 1)
    assert store.add(jpeg(1), "b.jpg", None, "test", "alice").seq == 2
    files = [p for p in (tmp_path / "images").rglob("*") if p.is_file()]
    assert sorted(p.name for p in files) == sorted([stored.name, f"{sha(jpeg(1))}.jpg"])  # no temp files left
    assert UploadStore(tmp_path).snapshot()[0].boxes == [[2.0, 3.0, 30.0, 40.0]]  # another process's view
    with sqlite3.connect(tmp_path / "index.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_store_indexes_only_after_the_file_is_written(tmp_path, monkeypatch) -> None:
    store = UploadStore(tmp_path)

    def disk_full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("continual.uploads.atomic_write_bytes", disk_full)
    with pytest.raises(OSError):
        store.add(png(2), "a.png", None, "test", "alice")
    assert store.max_seq() == 0 and store.snapshot() == []


def test_store_validation_reuses_pose_checks(tmp_path) -> None:
    store = UploadStore(tmp_path, max_pixels=100 * 100)
    cases = [
        (jpeg(3)[:400], None, "truncated_image"),
        (b"GIF89a....", None, "unsupported_image_type"),
        (png(3, (200, 100)), None, "image_too_large"),
        (png(3), [[100, 100, 5, 5]], "box_outside_image"),
        (png(3), [[0, 0, -1, 5]], "invalid_boxes"),
        (png(3), [], "invalid_boxes"),
        (png(3), [[0, 0, float("nan"), 5]], "invalid_boxes"),
    ]
    for data, boxes, code in cases:
        with pytest.raises(InputError) as err:
            store.add(data, "x", boxes, "test", "alice")
        assert err.value.code == code, (code, err.value.message)
    assert store.max_seq() == 0


def test_store_snapshot_stats_and_count_since(tmp_path) -> None:
    store = UploadStore(tmp_path)
    seqs = [
        store.add(png(10 + i), f"{i}.png", [1, 1, 20, 20] if i == 2 else None, "test", "alice").seq for i in range(4)
    ]
    assert seqs == [1, 2, 3, 4] and store.max_seq() == 4
    snap = store.snapshot()
    assert [r.seq for r in snap] == seqs and [r.sha256 for r in snap] == [sha(png(10 + i)) for i in range(4)]
    assert snap[2].boxes == [[1.0, 1.0, 20.0, 20.0]] and snap[0].boxes is None  # one box = a one-box list
    assert all(r.path.is_absolute() and r.path.exists() and (r.width, r.height) == (64, 48) for r in snap)
    assert [r.seq for r in store.snapshot(max_seq=2)] == [1, 2]
    assert store.count_since(1) == 3 and store.count_since(4) == 0
    store.reject("bad.txt", "unsupported_image_type: ...", "alice")
    stats = store.stats(since_seq=3)
    assert {k: stats[k] for k in ("total", "new_since_active", "rejected", "max_seq")} == {
        "total": 4,
        "new_since_active": 1,
        "rejected": 1,
        "max_seq": 4,
    }
    assert stats["disk_bytes"] >= sum(r.path.stat().st_size for r in snap) + (tmp_path / "index.sqlite").stat().st_size


def test_store_concurrent_adds_of_the_same_bytes(tmp_path) -> None:
    stores = [UploadStore(tmp_path), UploadStore(tmp_path)]  # separate instances, as in two processes
    for round_ in range(8):
        data, barrier, results = png(100 + round_), threading.Barrier(2), []

        def add(store: UploadStore, name: str, data=data, barrier=barrier, results=results) -> None:
            barrier.wait()
            results.append(store.add(data, name, None, "test", name))

        threads = [threading.Thread(target=add, args=(s, f"t{i}")) for i, s in enumerate(stores)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(r.status for r in results) == ["accepted", "duplicate"]
        assert len({r.seq for r in results}) == 1
    assert store_rows(tmp_path) == 8 and not list((tmp_path / "images").rglob(".*.tmp"))


def store_rows(root) -> int:
    with sqlite3.connect(root / "index.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM images").fetchone()[0]


# ---------------------------------------------------------------------- API
@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """(base URL, settings, registry) of a server with small upload limits and an empty registry."""
    root = tmp_path_factory.mktemp("uploads_api")
    settings = api_settings(
        root,
        {UPLOAD: {"roles": ["upload"], "name": "uploader"}, OPS: ["ops"], INFER: ["infer"]},
        max_upload_bytes=MAX_UPLOAD_BYTES,
        max_upload_files=MAX_FILES,
        max_image_bytes=MAX_IMAGE_BYTES,
    )
    with thread_server(create_app(settings)) as base:
        yield base, settings, ModelRegistry(settings.registry.dir)


@pytest.fixture(scope="module")
def client(live):
    with httpx.Client(base_url=live[0], timeout=30) as c:
        yield c


def store_of(live) -> UploadStore:
    return UploadStore(live[1].loop.data_dir / "uploads")


def post(client, files=None, data=None, token=UPLOAD) -> httpx.Response:
    return client.post("/v1/unlabeled", files=files, data=data, headers=auth(token))


def names(doc: dict, key: str) -> list[str]:
    return [item["name"] for item in doc[key]]


def test_upload_auth(client) -> None:
    files = [("files", ("a.png", png(200)))]
    r = client.post("/v1/unlabeled", files=files)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
    r = post(client, files, token=INFER)
    assert r.status_code == 403 and "upload" in r.json()["error"]["message"]
    assert client.get("/v1/unlabeled/stats", headers=auth(INFER)).status_code == 403
    assert client.get("/v1/unlabeled/stats").status_code == 401
    for token in (UPLOAD, OPS):
        assert client.get("/v1/unlabeled/stats", headers=auth(token)).status_code == 200


def test_batch_keeps_good_images_and_names_bad_ones(live, client) -> None:
    good, other = png(201), jpeg(202)
    files = [
        ("files", ("good.png", good)),
        ("files", ("other.jpg", other)),
        ("files", ("cut.jpg", jpeg(203)[:300])),
        ("files", ("notes.txt", b"not an image")),
        ("files", ("again.png", good)),
        ("files", ("huge.png", encode(np.random.default_rng(0).integers(0, 255, (400, 400, 3), np.uint8), ".png"))),
    ]
    r = post(client, files)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["accepted"] == [{"id": sha(good), "name": "good.png"}, {"id": sha(other), "name": "other.jpg"}]
    assert doc["duplicates"] == [{"id": sha(good), "name": "again.png"}]
    reasons = {item["name"]: item["reason"] for item in doc["rejected"]}
    assert set(reasons) == {"cut.jpg", "notes.txt", "huge.png"}
    assert reasons["cut.jpg"].startswith("truncated_image") and reasons["notes.txt"].startswith("unsupported_image")
    assert reasons["huge.png"].startswith("image_too_large") and "max_image_bytes" in reasons["huge.png"]
    assert doc["counts"] == {"accepted": 2, "duplicates": 1, "rejected": 3, "total": 6}
    stored = {rec.sha256: rec for rec in store_of(live).snapshot()}
    assert sha(stored[sha(good)].path.read_bytes()) == sha(good) and stored[sha(other)].path.suffix == ".jpg"


def test_boxes_sidecar_object_and_list(live, client) -> None:
    a, b, c = png(210, (120, 90)), png(211, (120, 90)), png(212, (120, 90))
    boxes = {"a.png": [[10, 5, 50, 80]], "b.png": [[10, 5, 50, 80], [500, 5, 10, 10]]}
    r = post(
        client,
        [("files", ("a.png", a)), ("files", ("b.png", b)), ("files", ("c.png", c))],
        {"boxes": json.dumps(boxes)},
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    assert names(doc, "accepted") == ["a.png", "c.png"]
    (rejected,) = doc["rejected"]
    assert rejected["name"] == "b.png" and "box 1" in rejected["reason"] and "outside" in rejected["reason"]
    stored = {rec.sha256: rec.boxes for rec in store_of(live).snapshot()}
    assert stored[sha(a)] == [[10.0, 5.0, 50.0, 80.0]] and stored[sha(c)] is None

    d, e = png(213, (120, 90)), png(214, (120, 90))
    r = post(client, [("files", ("d.png", d)), ("files", ("e.png", e))], {"boxes": json.dumps([None, [1, 2, 30, 40]])})
    assert names(r.json(), "accepted") == ["d.png", "e.png"]
    assert {rec.sha256: rec.boxes for rec in store_of(live).snapshot()}[sha(e)] == [[1.0, 2.0, 30.0, 40.0]]


def tar_bytes(members: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


IMG = ("files", ("a.png", b"x"))


def text(field: str, value: str) -> tuple[str, tuple[None, str]]:
    return field, (None, value)


@pytest.mark.parametrize(
    ("parts", "status", "code", "named"),
    [
        ([IMG, text("boxes", "{not json")], 400, "malformed_json", "'boxes'"),
        ([IMG, text("boxes", "[null, null]")], 422, "invalid_boxes", "'boxes'"),
        ([IMG, text("boxes", '{"zzz.png": [1, 2, 3, 4]}')], 422, "invalid_boxes", "zzz.png"),
        ([IMG, text("boxes", "3")], 422, "invalid_boxes", "'boxes'"),
        ([text("source", "x")], 400, "no_files", "'files'"),
        ([text("files", "not a file")], 422, "invalid_files", "'files'"),
        ([IMG, text("file", "typo")], 422, "unknown_field", "'file'"),
        ([IMG, ("archive", ("a.tar", b"x"))], 422, "invalid_archive", "'archive'"),
        ([("archive", ("a.bin", b"plain bytes, no archive"))], 415, "unsupported_archive", "'archive'"),
        ([("archive", ("a.tgz", b"\x1f\x8b\x08\x00garbage" * 10))], 400, "malformed_archive", "'archive'"),
        ([("archive", ("a.zip", b"PK\x03\x04garbage" * 10))], 400, "malformed_archive", "'archive'"),
        ([("archive", ("a.zip", zip_bytes({"a.png": b"x"}))), text("boxes", "{}")], 422, "invalid_boxes", "boxes.json"),
    ],
)
def test_malformed_requests_name_the_problem(live, client, parts, status, code, named) -> None:
    before = store_of(live).stats(0)
    r = post(client, parts)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and named in error["message"], error
    after = store_of(live).stats(0)
    assert (after["total"], after["rejected"]) == (before["total"], before["rejected"])  # nothing stored or recorded


def test_wrong_content_type_is_415(client) -> None:
    r = client.post("/v1/unlabeled", content=png(1), headers={**auth(UPLOAD), "Content-Type": "image/png"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"


def test_tar_gz_of_real_lspet_images_with_their_boxes_json(live, client) -> None:
    boxes_path = data_path("lspet", "boxes.json")
    lspet_boxes = json.loads(boxes_path.read_text())["boxes"]
    names_ = ["im00011.jpg", "im00012.jpg", "im00013.jpg"]
    images = {f"lspet/images/{n}": (boxes_path.parent / "images" / n).read_bytes() for n in names_}
    sidecar = {"format": "xywh", "boxes": {n: lspet_boxes[n] for n in names_[:2]}}  # the third: whole image
    members = {"lspet/boxes.json": json.dumps(sidecar).encode(), **images, "lspet/README": b"text"}
    r = post(client, [("archive", ("lspet.tgz", tar_bytes(members)))])
    assert r.status_code == 200, r.text
    doc = r.json()
    assert names(doc, "accepted") == list(images) and names(doc, "rejected") == ["lspet/README"]
    stored = {rec.sha256: rec for rec in store_of(live).snapshot()}
    for name, data in zip(names_, images.values()):
        expected = [lspet_boxes[name]] if name in sidecar["boxes"] else None
        assert stored[sha(data)].boxes == expected


def test_plain_tar_and_zip_archives(live, client) -> None:
    a, b, bad = png(220, (80, 60)), jpeg(221, (80, 60)), png(222, (80, 60))
    boxes = {"a.png": [5, 5, 40, 40], "sub/b.jpg": [[1, 1, 20, 20], [30, 10, 20, 40]], "bad.png": [[0, 0, 0, 9]]}
    members = {"boxes.json": json.dumps(boxes).encode(), "a.png": a, "sub/b.jpg": b, "bad.png": bad}
    r = post(client, [("archive", ("batch.tar", tar_bytes(members, "w")))], {"source": "camera-7"})
    assert r.status_code == 200, r.text
    assert names(r.json(), "accepted") == ["a.png", "sub/b.jpg"]
    (rejected,) = r.json()["rejected"]
    assert rejected["name"] == "bad.png" and "box 0" in rejected["reason"]
    stored = {rec.sha256: rec.boxes for rec in store_of(live).snapshot()}
    assert stored[sha(a)] == [[5.0, 5.0, 40.0, 40.0]] and len(stored[sha(b)]) == 2

    c = png(223, (80, 60))
    r = post(client, [("archive", ("batch.zip", zip_bytes({**members, "c.png": c})))])
    doc = r.json()
    assert names(doc, "accepted") == ["c.png"] and names(doc, "duplicates") == ["a.png", "sub/b.jpg"]
    assert names(doc, "rejected") == ["bad.png"]


def test_size_and_count_limits_refuse_the_whole_request(live, client) -> None:
    before = store_of(live).stats(0)
    filler = [("files", (f"{i}.bin", secrets.token_bytes(200_000))) for i in range(6)]  # ~1.2 MB > 1 MiB
    r = post(client, [("files", ("ok.png", png(230)))] + filler)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert "max_upload_bytes" in r.json()["error"]["message"]

    request = client.build_request("POST", "/v1/unlabeled", files=[("files", ("ok.png", png(231)))] + filler)
    body = request.read()

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    r = client.post(
        "/v1/unlabeled", content=chunks(), headers={**auth(UPLOAD), "Content-Type": request.headers["content-type"]}
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    r = post(client, [("files", (f"{i}.png", png(240 + i, (8, 8)))) for i in range(MAX_FILES + 1)])
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_files"
    members = {f"{i}.png": png(240 + i, (8, 8)) for i in range(MAX_FILES + 1)}
    for archive in (("many.tgz", tar_bytes(members)), ("many.zip", zip_bytes(members))):
        r = post(client, [("archive", archive)])
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_files", r.text
    bomb = tar_bytes({"zeros.png": bytes(9 * MAX_UPLOAD_BYTES)})  # gzip: ~9 KB that expands to 9 MiB
    r = post(client, [("archive", ("bomb.tgz", bomb))])
    assert r.status_code == 413 and r.json()["error"]["code"] == "archive_too_large"
    after = store_of(live).stats(0)
    assert (after["total"], after["rejected"]) == (before["total"], before["rejected"])


def test_stats_counts_new_since_the_active_model(live, client, tmp_path) -> None:
    _base, _settings, registry = live
    post(client, [("files", (f"s{i}.png", png(300 + i))) for i in range(3)])
    stats = client.get("/v1/unlabeled/stats", headers=auth(OPS)).json()
    snap = store_of(live).snapshot()
    assert stats["total"] == len(snap) and stats["max_seq"] == snap[-1].seq
    assert stats["active_version"] is None and stats["new_since_active"] == stats["total"]  # no model yet
    assert stats["disk_bytes"] >= sum(rec.path.stat().st_size for rec in snap)

    r = post(client, [("files", ("bad1", b"nope")), ("files", ("bad2", b"nope either"))])
    assert r.status_code == 422 and r.json()["error"]["code"] == "all_rejected"  # not a silent 200
    assert r.json()["counts"]["rejected"] == 2 and all(
        item["reason"].startswith("unsupported_image_type") for item in r.json()["rejected"]
    )
    assert client.get("/v1/unlabeled/stats", headers=auth(UPLOAD)).json()["rejected"] == stats["rejected"] + 2

    trained_on = snap[-3].seq  # the model's pool ended three images ago
    info = registry.register(
        tiny_pose_onnx(tmp_path / "m.onnx"), data_summary={"unlabeled_seq": trained_on}, actor="test"
    )
    assert client.post("/v1/ops/promote", json={"version": info.version}, headers=auth(OPS)).status_code == 200
    stats = client.get("/v1/unlabeled/stats", headers=auth(UPLOAD)).json()
    assert stats["active_version"] == info.version and stats["active_unlabeled_seq"] == trained_on
    assert stats["new_since_active"] == 2


# ---------------------------------------------------------------------- poseloop ingest
def ingest(*args: str):
    return CliRunner().invoke(cli_app, ["ingest", *args], catch_exceptions=False)


def test_ingest_video_twice_gives_duplicates(live) -> None:
    video = data_path("wild", "vtest.avi")
    args = [str(video), "--every", "50", "--limit", "5", "--url", live[0], "--batch", "2", "--token"]
    first = ingest(*args, UPLOAD)
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["accepted"] == 5
    second = json.loads(ingest(*args, UPLOAD).stdout)
    assert (second["accepted"], second["duplicates"], second["rejected"]) == (0, 5, 0)
    frames = [rec for rec in store_of(live).snapshot() if rec.width == 768 and rec.height == 576]
    assert len(frames) == 5  # vtest.avi is 768×576

    bad = ingest(*args, INFER)
    assert bad.exit_code == 1 and "403" in bad.output and "upload" in bad.output
    unreachable = ingest(str(video), "--limit", "1", "--url", "http://127.0.0.1:9", "--token", UPLOAD)
    assert unreachable.exit_code == 1 and "cannot reach" in unreachable.output


def test_ingest_folder_with_lspet_boxes(live, tmp_path) -> None:
    boxes_path = data_path("lspet", "boxes.json")
    lspet_boxes = json.loads(boxes_path.read_text())["boxes"]
    folder = tmp_path / "pool"
    folder.mkdir()
    for name in ("im00021.jpg", "im00022.jpg", "im00023.jpg", "im00024.jpg"):
        (folder / name).write_bytes((boxes_path.parent / "images" / name).read_bytes())
    (folder / "boxes.json").write_text(json.dumps({"boxes": lspet_boxes}))
    result = ingest(str(folder), "--every", "2", "--url", live[0], "--token", UPLOAD)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["accepted"] == 2  # im00021 and im00023
    stored = {rec.sha256: rec.boxes for rec in store_of(live).snapshot()}
    for name in ("im00021.jpg", "im00023.jpg"):
        assert stored[sha((folder / name).read_bytes())] == [lspet_boxes[name]]
    assert sha((folder / "im00022.jpg").read_bytes()) not in stored


def test_ingest_goes_on_past_a_batch_of_only_bad_files(live, tmp_path) -> None:
    """A batch whose every file is rejected is a 422 `all_rejected` from the API; ingest counts its reasons and
    sends the next batch instead of stopping the run."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a_broken.jpg").write_bytes(b"not a jpeg at all")
    good = data_path("lspet", "images", "im00025.jpg")
    (folder / "b_good.jpg").write_bytes(good.read_bytes())
    result = ingest(str(folder), "--batch", "1", "--url", live[0], "--token", UPLOAD)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["accepted"], summary["rejected"]) == (1, 1)
    assert summary["rejections"][0]["name"] == "a_broken.jpg"


# ---------------------------------------------------------------------- pool quota, pixel budget, sweep
@pytest.fixture
def small_pool(tmp_path):
    """(client, app) of a server whose pool quota holds a few small images and whose requests wait 0.3 s."""
    settings = Settings(
        registry_dir=tmp_path / "registry",
        data_dir=tmp_path / "data",
        ort_threads=1,
        registry_poll_s=0,
        max_pool_bytes=16_000,
        request_timeout_s=0.3,
        tokens={UPLOAD: {"roles": ["upload"], "name": "uploader"}},
    )
    app = create_app(settings)
    with thread_server(app) as base, httpx.Client(base_url=base, timeout=30) as c:
        yield c, app


def test_pool_quota_refuses_with_413_or_507_naming_it(small_pool) -> None:
    client, app = small_pool
    store = app.state.service.uploads
    images = [png(400 + i, (48, 36)) for i in range(8)]
    assert all(3_000 < len(data) < 5_000 for data in images)
    r = post(client, [("files", (f"{i}.png", data)) for i, data in enumerate(images)])  # alone > the quota
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_exceeds_pool_quota"
    assert "max_pool_bytes" in r.json()["error"]["message"] and store.max_seq() == 0
    r = post(client, [("files", (f"{i}.png", data)) for i, data in enumerate(images[:3])])
    assert r.status_code == 200 and r.json()["counts"]["accepted"] == 3
    used = store.stored_bytes()
    r = post(client, [("files", ("more.png", images[3])), ("files", ("more2.png", images[4]))])
    assert r.status_code == 507 and r.json()["error"]["code"] == "pool_quota_exceeded", r.text
    message = r.json()["error"]["message"]
    assert "max_pool_bytes" in message and str(used) in message and "/tmp" not in message
    assert store.max_seq() == 3 and store.stored_bytes() == used  # nothing more stored
    r = post(client, [("archive", ("more.tgz", tar_bytes({"m.png": images[5], "n.png": images[6]})))])
    assert r.status_code == 507 and r.json()["error"]["code"] == "pool_quota_exceeded"


def test_uploads_decode_within_the_pose_pixel_budget(small_pool) -> None:
    client, app = small_pool
    budget = app.state.service.pixel_budget
    budget.acquire(budget.limit, 1)  # as if /v1/pose requests held every pixel
    try:
        r = post(client, [("files", ("a.png", png(500)))])
        assert r.status_code == 503 and r.headers["retry-after"], r.text
        assert r.json()["rejected"][0]["reason"].startswith("overloaded")
    finally:
        budget.release(budget.limit)
    r = post(client, [("files", ("a.png", png(500)))])
    assert r.status_code == 200 and r.json()["counts"]["accepted"] == 1 and budget.used == 0


def test_bombs_and_an_all_rejected_archive_answer_422(client, live) -> None:
    from tests.test_input_limits import png_1bit, rle_bmp

    before = store_of(live).stats(0)["total"]
    r = post(client, [("files", ("rle.bmp", rle_bmp(6000, 6000))), ("files", ("bits.png", png_1bit(6300)))])
    assert r.status_code == 422 and r.json()["error"]["code"] == "all_rejected"
    assert {item["reason"].split(":")[0] for item in r.json()["rejected"]} == {"decompression_bomb"}
    r = post(client, [("archive", ("junk.tgz", tar_bytes({"a.txt": b"text", "b.txt": b"more"})))])
    assert r.status_code == 422 and names(r.json(), "rejected") == ["a.txt", "b.txt"]
    r = post(client, [("archive", ("empty.tgz", tar_bytes({"boxes.json": b"{}"})))])
    assert r.status_code == 422 and r.json()["error"]["code"] == "no_images"
    assert store_of(live).stats(0)["total"] == before


def test_sweep_removes_stale_leftovers_only(tmp_path, caplog) -> None:
    store = UploadStore(tmp_path)
    kept = store.add(png(600), "a.png", None, "test", "alice")
    shard = tmp_path / "images" / kept.sha256[:2]
    stale_tmp, fresh_tmp = shard / ".x.png.1.2.tmp", shard / ".y.png.1.3.tmp"
    stale_orphan, fresh_orphan = shard / ("0" * 64 + ".png"), shard / ("1" * 64 + ".png")
    thumbs_tmp = tmp_path / "thumbs" / "ab" / ".t.jpg.1.4.tmp"
    thumbs_tmp.parent.mkdir(parents=True)
    for path in (stale_tmp, fresh_tmp, stale_orphan, fresh_orphan, thumbs_tmp):
        path.write_bytes(b"partial")
    now = time.time()
    for path in (stale_tmp, stale_orphan, thumbs_tmp, store.snapshot()[0].path):
        os.utime(path, (now - 7200, now - 7200))
    with caplog.at_level("INFO", logger="poseloop.uploads"):
        removed = store.sweep(min_age_s=3600, now=now)
    assert removed == {"temp_files": 2, "unindexed_images": 1}
    assert not stale_tmp.exists() and not stale_orphan.exists() and not thumbs_tmp.exists()
    assert fresh_tmp.exists() and fresh_orphan.exists()  # may be another process's write in progress
    assert store.snapshot()[0].path.exists()  # indexed images are never touched, however old
    assert "removed 2 temp file(s) and 1 unindexed image(s)" in caplog.text


# ---------------------------------------------------------------------- pool browsing, thumbnails, delete
def test_items_pages_by_seq_and_filters_by_source(live, client) -> None:
    r = post(client, [("files", (f"page{i}.png", png(600 + i))) for i in range(5)], data={"source": "cam-7"})
    ids = [item["id"] for item in r.json()["accepted"]]
    first = client.get("/v1/unlabeled/items", params={"source": "cam-7", "limit": 3}, headers=auth(UPLOAD)).json()
    assert [i["sha256"] for i in first["items"]] == ids[:3] and first["next_after_seq"] == first["items"][-1]["seq"]
    rest = client.get(
        "/v1/unlabeled/items",
        params={"source": "cam-7", "limit": 3, "after_seq": first["next_after_seq"]},
        headers=auth(OPS),
    ).json()
    assert [i["sha256"] for i in rest["items"]] == ids[3:] and rest["next_after_seq"] is None
    item = first["items"][0]
    assert (item["name"], item["source"], item["width"], item["height"]) == ("page0.png", "cam-7", 64, 48)
    assert item["check"] == "pending" and item["bytes"] == len(png(600)) and not item["has_thumbnail"]
    assert client.get("/v1/unlabeled/items", headers=auth(INFER)).status_code == 403
    r = client.get("/v1/unlabeled/items", params={"limit": 0}, headers=auth(OPS))
    assert r.status_code == 422 and "limit" in r.json()["error"]["message"]


def test_stats_per_source_count_images_bytes_and_rejections(live, client) -> None:
    post(client, [("files", ("s-a.png", png(650))), ("files", ("s-bad.png", b"nope"))], data={"source": "drone"})
    sources = client.get("/v1/unlabeled/stats", headers=auth(OPS)).json()["sources"]
    assert sources["drone"] == {"images": 1, "bytes": len(png(650)), "rejected": 1}


def test_thumbnail_after_the_ingest_check(live, client) -> None:
    data = png(660)
    sha_ = post(client, [("files", ("t.png", data))]).json()["accepted"][0]["id"]
    r = client.get(f"/v1/unlabeled/{sha_}/thumbnail", headers=auth(UPLOAD))
    assert r.status_code == 404 and r.json()["error"]["code"] == "no_thumbnail"
    store = store_of(live)
    thumb = store.thumbnail_path(sha_)
    thumb.parent.mkdir(parents=True, exist_ok=True)
    thumb.write_bytes(jpeg(660, (32, 24)))
    store.record_check(sha_, thumb, "1", 0.42, 1)
    r = client.get(f"/v1/unlabeled/{sha_}/thumbnail", headers=auth(UPLOAD))
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and r.content == thumb.read_bytes()
    item = next(i for i in client.get("/v1/unlabeled/items", headers=auth(OPS)).json()["items"] if i["sha256"] == sha_)
    assert item["check"] == "checked" and item["teacher_confidence"] == 0.42 and item["has_thumbnail"]
    assert client.get(f"/v1/unlabeled/{'0' * 64}/thumbnail", headers=auth(OPS)).json()["error"]["code"] == (
        "unknown_upload"
    )
    assert client.get("/v1/unlabeled/not-a-sha/thumbnail", headers=auth(OPS)).status_code == 422


def test_delete_removes_the_file_for_good_and_audits_it(live, client) -> None:
    data = png(670)
    sha_ = post(client, [("files", ("gone.png", data))], data={"source": "mistake"}).json()["accepted"][0]["id"]
    store = store_of(live)
    path = next(r.path for r in store.snapshot() if r.sha256 == sha_)
    assert client.delete(f"/v1/unlabeled/{sha_}", headers=auth(UPLOAD)).status_code == 403
    r = client.delete(f"/v1/unlabeled/{sha_}", params={"reason": "a face, no consent"}, headers=auth(OPS))
    assert r.status_code == 200, r.text
    assert r.json()["deleted"] == sha_ and r.json()["name"] == "gone.png" and r.json()["bytes"] == len(data)
    assert not path.exists() and sha_ not in {rec.sha256 for rec in store.snapshot()}  # no later retrain sees it
    audit = [json.loads(line) for line in (store.root / "audit.jsonl").read_text().splitlines()]
    assert audit[-1]["action"] == "delete" and audit[-1]["sha256"] == sha_
    assert audit[-1]["reason"] == "a face, no consent" and audit[-1]["actor"] != "-"
    assert client.delete(f"/v1/unlabeled/{sha_}", headers=auth(OPS)).status_code == 404
    assert client.get(f"/v1/unlabeled/{sha_}/image", headers=auth(OPS)).status_code == 404
    again = post(client, [("files", ("gone.png", data))]).json()  # the same bytes may come back, as new
    assert again["accepted"][0]["id"] == sha_ and store.get(sha_) is not None


def test_an_index_from_before_the_later_columns_is_migrated_in_place(tmp_path) -> None:
    """An uploads index written before per-source rejections and the flip disagreement existed opens, gains
    both columns (NULL in its old rows), keeps its rows, and takes new checks with a disagreement."""
    root = tmp_path / "up"
    root.mkdir()
    with sqlite3.connect(root / "index.sqlite") as db:
        db.executescript(
            "CREATE TABLE rejections (id INTEGER PRIMARY KEY, name TEXT, reason TEXT, actor TEXT, created TEXT);"
            "CREATE TABLE checks (sha256 TEXT PRIMARY KEY, thumbnail TEXT, teacher_version TEXT, "
            "teacher_confidence REAL, persons INT, created TEXT);"
            "INSERT INTO rejections VALUES (1, 'x.png', 'not an image', 't', '2026-01-01');"
        )
    store = UploadStore(root)
    assert store.stats(0)["rejected"] == 1
    sha_ = store.add(png(680), "new.png", None, "t", "t").sha256
    store.record_check(sha_, store.thumbnail_path(sha_), "1", 0.5, 1, 0.031)
    (item,) = store.items()
    assert item["disagreement"] == 0.031 and item["teacher_confidence"] == 0.5
    with sqlite3.connect(root / "index.sqlite") as db:
        assert {row[1] for row in db.execute("PRAGMA table_info(rejections)")} >= {"source"}
