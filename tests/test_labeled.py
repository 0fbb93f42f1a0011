"""Human-labeled data: COCO keypoints checks, the LabeledStore (dedup, train/gate split by image hash, the records
file build_splits reads), POST /v1/labeled + stats over a real uvicorn server, and the whole loop on a machine
without ../shared: its own uploads + labels train a candidate and the gate scores on the labels' gate part."""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest

from continual.coco_labels import parse_coco
from continual.labeled import GATE_PERCENT, LABELED_RECORDS_FORMAT, LabeledStore, part_of
from core.inputs import InputError, check_image
from models.registry import ModelRegistry
from models.schemas import COCO17, LSP14
from serving.app import create_app
from tests.serving_fixtures import api_settings, auth, encode, sample_image, thread_server, tiny_pose_onnx

OPS, UPLOAD = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
SIZE = (64, 48)  # w, h of the synthetic images


def person(seed: int, k: int = 14, size: tuple[int, int] = SIZE) -> dict:
    """A COCO annotation with every joint labeled inside a box that lies inside the image."""
    rng = np.random.default_rng(seed)
    w, h = size
    xy = rng.uniform([8, 6], [w - 8, h - 6], (k, 2)).round(1)
    keypoints = np.concatenate([xy, np.full((k, 1), 2)], 1).reshape(-1).tolist()
    return {"bbox": [4.0, 3.0, w - 8.0, h - 6.0], "keypoints": keypoints, "num_keypoints": k, "iscrowd": 0}


def coco_doc(names: list[str], schema=LSP14, persons_per_image: int = 1, size=SIZE) -> dict:
    images = [{"id": i + 1, "file_name": n, "width": size[0], "height": size[1]} for i, n in enumerate(names)]
    annotations = []
    for i in range(len(names)):
        for p in range(persons_per_image):
            ann = person(100 * i + p, schema.num_keypoints, size)
            annotations.append({**ann, "id": len(annotations) + 1, "image_id": i + 1, "category_id": 1})
    category = {"id": 1, "name": "person", "keypoints": list(schema.keypoints)}
    return {"images": images, "annotations": annotations, "categories": [category]}


def image(seed: int) -> bytes:
    return encode(sample_image(seed, SIZE), ".png")


# ---------------------------------------------------------------------- COCO checks
def test_schema_comes_from_category_names_or_the_keypoint_count() -> None:
    assert parse_coco(coco_doc(["a.png"]), "lsp14").schema == "lsp14"
    assert parse_coco(coco_doc(["a.png"], COCO17), "lsp14").schema == "coco17"  # mapped by joint name later
    nameless = coco_doc(["a.png"], COCO17)
    del nameless["categories"][0]["keypoints"]
    assert parse_coco(nameless, "lsp14").schema == "coco17"
    wrong = coco_doc(["a.png"])
    wrong["categories"][0]["keypoints"] = [f"joint{i}" for i in range(14)]
    with pytest.raises(InputError) as err:
        parse_coco(wrong, "lsp14")
    assert err.value.code == "unknown_schema" and "joint0" in err.value.message


def test_every_problem_is_named_and_nothing_passes() -> None:
    doc = coco_doc(["a.png", "b.png", "c.png"])
    doc["annotations"][0]["keypoints"] = doc["annotations"][0]["keypoints"][:-3]  # 13 joints
    doc["annotations"][1]["bbox"] = [40.0, 3.0, 40.0, 20.0]  # past the right edge of 64 px
    doc["annotations"][2]["keypoints"][0] = 99.0  # joint 0 at x = 99 in a 64-px-wide image
    doc["annotations"].append({**person(7), "id": 9, "image_id": 42})
    with pytest.raises(InputError) as err:
        parse_coco(doc, "lsp14")
    message = err.value.message
    assert err.value.status == 422 and err.value.code == "invalid_annotations" and "4 problem(s)" in message
    assert "'keypoints' must be 42 numbers" in message and "(a.png)" in message
    assert "bbox [40, 3, 40, 20] is not inside the 64×48 image" in message
    assert "keypoint 0 (99, " in message and "image_id 42 is not in 'images'" in message


def test_crowd_and_unlabeled_persons_are_skipped_not_stored() -> None:
    doc = coco_doc(["a.png", "b.png"])
    doc["annotations"][0]["iscrowd"] = 1
    doc["annotations"][1]["keypoints"] = [0] * 42
    doc["annotations"].append({**person(3), "id": 7, "image_id": 2})
    labels = parse_coco(doc, "lsp14")
    assert list(labels.images) == ["b.png"] and len(labels.images["b.png"].persons) == 1
    reasons = " | ".join(s["reason"] for s in labels.skipped)
    assert "iscrowd" in reasons and "no labeled keypoint" in reasons and "no usable person" in reasons
    assert labels.listed == {"a.png", "b.png"}


# ---------------------------------------------------------------------- store
def test_store_dedups_splits_by_image_hash_and_exports_records(tmp_path) -> None:
    from training.data import LABELED_RECORDS_FORMAT as READ_FORMAT
    from training.data import load_labeled_records

    assert READ_FORMAT == LABELED_RECORDS_FORMAT
    store = LabeledStore(tmp_path)
    labels = parse_coco(coco_doc([f"{i}.png" for i in range(30)]), "lsp14")
    parts = {}
    for i in range(30):
        data = image(i)
        outcome = store.add_image(
            data, check_image(data, 10**6), f"{i}.png", "lsp14", labels.images[f"{i}.png"].persons, "test", "alice"
        )
        assert (outcome.accepted, outcome.duplicates) == (1, 0)
        parts[outcome.sha256] = outcome.part
        assert outcome.part == part_of(hashlib.sha256(data).hexdigest())
    assert 0 < list(parts.values()).count("gate") < 30  # ~GATE_PERCENT of 30 images, deterministic by hash
    again = store.add_image(
        image(0), check_image(image(0), 10**6), "copy.png", "lsp14", labels.images["0.png"].persons, "test", "bob"
    )
    assert (again.accepted, again.duplicates) == (0, 1)
    stats = store.stats()
    assert stats["persons"] == stats["images"] == 30 and stats["gate_percent"] == GATE_PERCENT
    assert stats["gate"]["persons"] == list(parts.values()).count("gate") and stats["max_seq"] == 30

    records_file = tmp_path / "records.json"
    counts = store.export_records(records_file, max_seq=10)
    loaded = load_labeled_records(records_file)
    assert counts == {"train": len(loaded["train"]), "gate": len(loaded["gate"])} and sum(counts.values()) == 10
    first = loaded["train"][0] if loaded["train"] else loaded["gate"][0]
    assert first.schema == "lsp14" and first.keypoints.shape == (14, 2) and first.image_path.is_file()
    assert {r.record_id for r in loaded["train"]}.isdisjoint(r.record_id for r in loaded["gate"])


def test_build_splits_adds_the_train_part_and_can_run_on_labels_alone(tmp_path) -> None:
    from training.config import DataConfig
    from training.data import build_splits

    store = LabeledStore(tmp_path / "labeled")
    doc = coco_doc([f"{i}.png" for i in range(12)], COCO17)
    doc["annotations"][0]["keypoints"][3 * 9 : 3 * 9 + 3] = [0, 0, 0]  # left wrist not labeled
    labels = parse_coco(doc, "lsp14")
    for i in range(12):
        data = image(i)
        store.add_image(
            data, check_image(data, 10**6), f"{i}.png", "coco17", labels.images[f"{i}.png"].persons, "test", "alice"
        )
    path = tmp_path / "records.json"
    counts = store.export_records(path, store.max_seq())
    assert counts["train"] and counts["gate"]  # this fixed set of 12 images falls on both sides
    cfg = DataConfig(dataset="lsp", root=str(tmp_path / "absent"), labeled_records=str(path), labeled_records_only=True)
    splits = build_splits(cfg)
    assert (len(splits.train), len(splits.val), splits.schema) == (counts["train"], counts["gate"], "lsp14")
    record = next(r for r in splits.train + splits.val if r.record_id == "labeled/1")
    neck, wrist = LSP14.index("neck"), LSP14.index("left_wrist")
    assert record.visibility[neck] == 0 and record.visibility[wrist] == 0  # COCO has no neck; wrist unlabeled
    assert record.visibility[LSP14.index("left_knee")] == 2
    with pytest.raises(FileNotFoundError):  # the dataset's own splits are still read unless told otherwise
        build_splits(DataConfig(dataset="lsp", root=str(tmp_path / "absent"), labeled_records=str(path)))


# ---------------------------------------------------------------------- API
@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("labeled_api")
    settings = api_settings(
        root,
        {OPS: {"roles": ["ops"], "name": "annotator"}, UPLOAD: ["upload"]},
        max_upload_bytes=4 << 20,
        max_image_bytes=300_000,
    )
    registry = ModelRegistry(settings.registry.dir)
    info = registry.register(tiny_pose_onnx(root / "m.onnx"), actor="test")
    registry.set_active(info.version, "test")
    with thread_server(create_app(settings)) as base, httpx.Client(base_url=base, timeout=30) as client:
        yield client, settings


def post_labeled(client, doc: dict | None, files: dict[str, bytes], token: str = OPS, **data) -> httpx.Response:
    parts = [("files", (name, content)) for name, content in files.items()]
    if doc is not None:
        parts.append(("annotations", ("annotations.json", json.dumps(doc).encode())))
    return client.post("/v1/labeled", files=parts, data=data, headers=auth(token))


def stored_persons(settings) -> int:
    return LabeledStore(settings.loop.data_dir / "labeled").stats()["persons"]


def test_register_labeled_images_then_duplicates(live) -> None:
    client, _settings = live
    names = [f"r{i}.png" for i in range(6)]
    files = {n: image(500 + i) for i, n in enumerate(names)}
    assert post_labeled(client, coco_doc(names), files, token=UPLOAD).status_code == 403  # ops decides the gate
    r = post_labeled(client, coco_doc(names, persons_per_image=2), files, source="studio-batch-1")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["schema"] == "lsp14" and body["counts"] == {"images": 6, "persons": 12, "duplicates": 0, "skipped": 0}
    assert {item["id"] for item in body["accepted"]} == {hashlib.sha256(d).hexdigest() for d in files.values()}
    assert all(item["part"] == part_of(item["id"]) for item in body["accepted"])
    again = post_labeled(client, coco_doc(names, persons_per_image=2), files).json()
    assert again["counts"]["persons"] == 0 and again["counts"]["duplicates"] == 12 and not again["accepted"]
    stats = client.get("/v1/labeled/stats", headers=auth(UPLOAD)).json()
    assert stats["persons"] >= 12 and stats["train"]["persons"] + stats["gate"]["persons"] == stats["persons"]
    assert stats["schemas"]["lsp14"] == stats["persons"]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("missing_image", "'m1.png' is in the annotations but not in the request"),
        ("extra_file", "'stray.png' is not in the annotations' images"),
        ("wrong_size", "is 64×48 (EXIF-oriented) but the annotations say 80×48"),
        ("not_an_image", "'m0.png': unsupported_image_type"),
    ],
)
def test_a_bad_request_is_refused_whole_naming_the_problem(live, change, named) -> None:
    client, settings = live
    names = ["m0.png", "m1.png"]
    doc, files = coco_doc(names), {n: image(700 + i) for i, n in enumerate(names)}
    if change == "missing_image":
        del files["m1.png"]
    elif change == "extra_file":
        files["stray.png"] = image(799)
    elif change == "wrong_size":
        doc["images"][1]["width"] = 80
    else:
        files["m0.png"] = b"not an image"
    before = stored_persons(settings)
    r = post_labeled(client, doc, files)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_labeled_data"
    assert named in r.json()["error"]["message"]
    assert stored_persons(settings) == before  # all or nothing


def test_malformed_annotations_and_missing_parts(live) -> None:
    client, _ = live
    r = client.post("/v1/labeled", files=[("files", ("a.png", image(1)))], headers=auth(OPS))
    assert r.status_code == 400 and r.json()["error"]["code"] == "no_annotations"
    r = client.post(
        "/v1/labeled", files=[("files", ("a.png", image(1))), ("annotations", ("a.json", b"{"))], headers=auth(OPS)
    )
    assert r.status_code == 400 and "'annotations'" in r.json()["error"]["message"]
    r = post_labeled(client, coco_doc(["a.png"], persons_per_image=70), {"a.png": image(1)})
    assert r.status_code == 422 and "70 persons, at most 64" in r.json()["error"]["message"]


def test_archive_with_its_annotations_json(live) -> None:
    client, _ = live
    names = [f"z{i}.png" for i in range(3)]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i, n in enumerate(names):
            z.writestr(f"images/{n}", image(900 + i))
        z.writestr("annotations.json", json.dumps(coco_doc(names, COCO17)))
    r = client.post("/v1/labeled", files={"archive": ("labels.zip", buf.getvalue())}, headers=auth(OPS))
    assert r.status_code == 200, r.text
    assert r.json()["schema"] == "coco17" and r.json()["counts"]["persons"] == 3


# ---------------------------------------------------------------------- the loop without ../shared
def lsp_user_data(data_root: Path, out: Path, first: int, count: int) -> tuple[dict, dict[str, bytes]]:
    """LSP images im<first>.. copied as a user's own labeled photos (a COCO JSON in the lsp14 schema)."""
    from training.datasets.lsp import load_lsp
    from training.datasets.records import box_from_keypoints, read_image_size

    images, annotations, files = [], [], {}
    for i, record in enumerate(load_lsp(data_root, list(range(first, first + count)))):
        name = f"user_{i:03d}.jpg"
        (out / name).write_bytes(record.image_path.read_bytes())
        w, h = read_image_size(out / name)
        box = box_from_keypoints(record.keypoints, None, image_size=(w, h)).tolist()
        kpts = np.concatenate([np.clip(record.keypoints, 0, [w, h]), np.full((14, 1), 2)], 1)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        annotations.append({"id": i + 1, "image_id": i + 1, "bbox": box, "keypoints": kpts.reshape(-1).tolist()})
        files[name] = (out / name).read_bytes()
    categories = [{"id": 1, "name": "person", "keypoints": list(LSP14.keypoints)}]
    return {"images": images, "annotations": annotations, "categories": categories}, files


def test_a_fresh_machine_runs_the_loop_gate_included_from_its_own_uploads_and_labels(
    tmp_path, small_model, data_root, monkeypatch
) -> None:
    """No ../shared: the active model's LSP splits are not readable, so the job trains on the registered labels'
    train part (+ the teacher's labels on the uploads) and the gate scores both models on their gate part."""
    from continual.labeled import labeled_store
    from continual.runner import context, work_once
    from tests.loop_fixtures import RETRAIN_OVERRIDES, install_active, loop_settings, lspet_images

    user = tmp_path / "user"
    user.mkdir()
    doc, files = lsp_user_data(data_root, user, first=800, count=30)  # im0801–0830: not the model's train set
    pool = {p.name: p.read_bytes() for p in lspet_images(data_root, 8)}
    sides = {n: part_of(hashlib.sha256(d).hexdigest()) for n, d in files.items()}
    also_uploaded = [n for n in files if sides[n] == "gate"][:2] + [n for n in files if sides[n] == "train"][:2]
    pool.update({n: files[n] for n in also_uploaded})  # users upload, then label some of the same photos
    monkeypatch.setenv("POSELOOP_DATA", str(tmp_path / "no-datasets-here"))  # the fresh machine
    # the active version teaches (retrain.teacher=self): the same distill recipe, no external teacher file needed;
    # the 40-step test model is a weak teacher, so a low precision target keeps some of its labels
    settings = loop_settings(tmp_path, retrain_teacher="self", retrain_distill_precision=0.1)
    install_active(settings.registry.dir, *small_model)
    app = create_app(settings)
    with thread_server(app) as base, httpx.Client(base_url=base, timeout=60) as client:
        tokens = app.state.dev_tokens
        r = client.post(
            "/v1/unlabeled", files=[("files", (n, d)) for n, d in pool.items()], headers=auth(tokens["upload"])
        )
        assert r.status_code == 200 and r.json()["counts"]["accepted"] == 12
        r = post_labeled(client, doc, files, token=tokens["ops"])
        assert r.status_code == 200 and r.json()["counts"]["persons"] == 30, r.text
        labeled = client.get("/v1/labeled/stats", headers=auth(tokens["ops"])).json()
        body = {"iterations": 4, "overrides": RETRAIN_OVERRIDES, "margin": -100.0}
        r = client.post("/v1/ops/retrain", json=body, headers=auth(tokens["ops"]))
        assert r.status_code in (200, 201, 202), r.text
    _, done = work_once(context(settings, "fresh-worker"))
    assert done is not None and done.state == "succeeded", done and done.error
    result = done.result
    plan, decision = result["plan"], result["gate"]
    assert plan["dataset_splits"] is False and plan["gate_split"] == "labeled"
    assert plan["labeled"]["seq"] == 30 and plan["labeled"]["gate_persons"] == labeled["gate"]["persons"] >= 5
    assert decision["split"] == "labeled" and decision["persons"] == labeled["gate"]["persons"]
    assert (
        result["active_metric"]["metric"] == "pck_limbs" and result["active_metric"]["persons"] == decision["persons"]
    )
    assert decision["ci_low"] is not None and decision["decision"] == "promoted"
    # the labeled images (the gate's among them) left the unlabeled pool: the teacher labelled the 8 others only
    labeled_shas = {r.sha256 for r in labeled_store(settings.loop.data_dir).snapshot()}
    labels = json.loads(Path(result["pseudo_labels"]["path"]).read_text())
    pooled = {Path(p["image"]).stem for p in labels["persons"]}
    assert len(pooled) == 8 and pooled.isdisjoint(labeled_shas)
    assert result["training"]["unlabeled_persons"] == 8
    assert ModelRegistry(settings.registry.dir).active().version == decision["candidate"]
