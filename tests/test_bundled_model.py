"""The committed bundles (artifacts/<name>/v<N>/): contract, size, real-image accuracy; and the default one's
first start. Every bundle is checked, whatever its keypoint schema.

Checks run on the shipped files. Those that need ../shared skip cleanly without it; the rest always run.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from models.metadata import REQUIRED_KEYS, ModelMetadata
from models.registry import ModelRegistry
from models.schema_map import joint_map, map_joints
from models.schemas import LSP14
from poseloop.workflows import BUNDLED_MODEL_DIR, DEFAULT_BUNDLE, default_model_path, predict_image
from serving.backends.onnxruntime import OnnxRuntimeBackend
from serving.pipeline import PosePipeline
from tests.serving_fixtures import auth, thread_server

BUNDLES = sorted(BUNDLED_MODEL_DIR.glob("*/v*/model.onnx"))
pytestmark = pytest.mark.skipif(not BUNDLES, reason="no bundled model under artifacts/")
# the LSP-14 bundle (the SSL benchmark's starting point; other tests pose LSP crops with it)
ONNX = next((b for b in BUNDLES if b.parent.parent.name.startswith("lsp14")), BUNDLES[-1] if BUNDLES else Path("x"))


@pytest.fixture(scope="module", params=BUNDLES, ids=[f"{b.parent.parent.name}/{b.parent.name}" for b in BUNDLES])
def bundle(request) -> Path:
    return request.param.parent


@pytest.fixture(scope="module")
def release(bundle) -> dict:
    return json.loads((bundle / "release.json").read_text())


@pytest.fixture(scope="module")
def val_people(data_root):
    """The first 24 validation persons (LSP im0801–): image, box, ground-truth keypoints."""
    from training.config import DataConfig
    from training.data import build_splits

    records = build_splits(DataConfig(dataset="lsp")).val[:24]
    return [
        (cv2.cvtColor(cv2.imread(str(r.image_path)), cv2.COLOR_BGR2RGB), [float(v) for v in r.box], r.keypoints)
        for r in records
    ]


def _pck_limbs(pred: np.ndarray, gt: np.ndarray) -> float:
    from training.evaluation import lsp_pck

    return lsp_pck(pred, gt).subset["limbs"]


def test_bundle_fits_the_budget_and_its_card_tells_the_truth(bundle, release) -> None:
    sizes = {p.name: p.stat().st_size for p in (bundle / "model.onnx", bundle / "checkpoint.pt")}
    assert sum(sizes.values()) <= 25e6 and sizes == release["files_bytes"]
    card = (bundle / "MODEL_CARD.md").read_text()
    flip = release["validation"]["flip"]
    assert f"{flip['pck_limbs']:.1f}" in card and release["command"] in card
    schema = release.get("schema", "lsp14")
    for limit in ("One person per crop", schema, "sports"):
        assert limit in card
    if release.get("comparison"):  # the side-by-side figures the card quotes are those of the compare run
        (mine,) = [r for r in release["comparison"]["rows"].values() if r["this"]]
        assert f"| {mine['detector']:.1f} |" in card


def test_the_default_is_the_coco17_bundle(monkeypatch) -> None:
    monkeypatch.delenv("POSELOOP_MODEL", raising=False)
    newest = sorted(BUNDLED_MODEL_DIR.glob(f"{DEFAULT_BUNDLE}/v*/model.onnx"), key=lambda p: int(p.parent.name[1:]))
    assert default_model_path() == (newest[-1] if newest else BUNDLES[-1])
    if newest:
        assert ModelMetadata.from_onnx(default_model_path()).schema.name == "coco17"
    monkeypatch.setenv("POSELOOP_MODEL", "/somewhere/else.onnx")
    assert default_model_path() == Path("/somewhere/else.onnx")


def test_onnx_contract_and_checkpoint(bundle, release) -> None:
    import torch

    from models.network import ModelConfig, build_model

    with OnnxRuntimeBackend(bundle / "model.onnx", intra_op_threads=1) as backend:
        meta = backend.metadata
        assert set(REQUIRED_KEYS) <= set(meta.props)
        assert meta.schema.name == release.get("schema", "lsp14")
        k = meta.schema.num_keypoints
        assert (meta.input_size.h, meta.input_size.w) == (128, 96) and meta.version == release["version"]
        out = backend.infer(np.zeros((2, 3, 128, 96), np.float32))
        assert out.shape == (2, k, 32, 24) and out.dtype == np.float32 and np.isfinite(out).all()
    state = torch.load(bundle / "checkpoint.pt", map_location="cpu", weights_only=True)
    model = build_model(ModelConfig(**{**state["model_config"], "pretrained": False}))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state["model"].items()})
    assert state["config"]["data"]["dataset"] == "lsp" and state["weights_storage"] == "float16"


def test_sensible_keypoints_on_real_people(bundle, val_people) -> None:
    """On real validation photos, through the serving pipeline: accuracy near the card's figure, joints inside
    the padded box, and the head above the ankles for upright people (LSP joints, mapped by name)."""
    with OnnxRuntimeBackend(bundle / "model.onnx", intra_op_threads=2) as backend:
        pipeline = PosePipeline(backend)
        poses = [pipeline.predict(image, [box])[0] for image, box, _ in val_people]
        schema = backend.metadata.schema
    pred = map_joints(np.stack([p.keypoints for p in poses]), joint_map(schema, LSP14), axis=1)
    gt = np.stack([kp for _, _, kp in val_people])
    assert _pck_limbs(pred, gt) >= 45.0  # the card reports the full 200 persons; 24 are a noisy sample
    for pose, (_, box, _) in zip(poses, val_people):
        x, y, w, h = box
        inside = (
            (pose.keypoints[:, 0] > x - 0.5 * w)
            & (pose.keypoints[:, 0] < x + 1.5 * w)
            & (pose.keypoints[:, 1] > y - 0.5 * h)
            & (pose.keypoints[:, 1] < y + 1.5 * h)
        )
        assert inside.mean() >= 0.9
    head = schema.keypoints.index("head_top" if "head_top" in schema.keypoints else "nose")
    ankles = [schema.keypoints.index(n) for n in ("left_ankle", "right_ankle")]
    upright = [p for p, (_, _, kp) in zip(poses, val_people) if kp[13, 1] < kp[[0, 5], 1].min()]
    assert upright and np.mean([p.keypoints[head, 1] < p.keypoints[ankles, 1].mean() for p in upright]) >= 0.8


def test_predict_and_first_start_use_it(val_people, tmp_path, monkeypatch) -> None:
    """`poseloop predict` without --model, and an API whose registry is empty, both serve the bundle (as v1)."""
    from continual.settings import Settings
    from serving.app import create_app

    monkeypatch.delenv("POSELOOP_MODEL", raising=False)
    default = default_model_path()
    assert default is not None
    keypoints = ModelMetadata.from_onnx(default).schema.num_keypoints
    image, box, _gt = val_people[0]
    path = tmp_path / "person.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    result = predict_image(path, [box])
    assert result["model_version"] == json.loads((default.parent / "release.json").read_text())["version"]
    assert len(result["persons"][0]["keypoints"]) == keypoints

    token = secrets.token_urlsafe(16)
    settings = Settings(
        registry_dir=tmp_path / "registry",
        bootstrap_model=default_model_path(),
        ort_threads=1,
        registry_poll_s=0,
        tokens={token: ["infer"]},
    )
    with thread_server(create_app(settings)) as base, httpx.Client(base_url=base, timeout=60) as client:
        active = client.get("/v1/models/active", headers=auth(token)).json()
        assert active["version"] == "1" and active["status"] == "active" and len(active["keypoints"]) == keypoints
        r = client.post(
            "/v1/pose",
            files={"image": ("p.jpg", path.read_bytes())},
            data={"boxes": json.dumps([box])},
            headers=auth(token),
        )
        assert r.status_code == 200, r.text
        served = np.array([[k["x"], k["y"]] for k in r.json()["persons"][0]["keypoints"]])
    local = np.array([[k["x"], k["y"]] for k in result["persons"][0]["keypoints"]])
    assert np.abs(served - local).max() < 0.01  # the API and the CLI give the same keypoints
    registered = ModelRegistry(settings.registry.dir).get("1")
    assert registered.checkpoint_path is not None and registered.checkpoint_path.exists()  # retrains start from it
