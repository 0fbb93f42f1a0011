"""The committed default model (artifacts/<name>/v<N>/): contract, size, real-image accuracy, and first start.

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

from models.metadata import REQUIRED_KEYS
from models.registry import ModelRegistry
from poseloop.workflows import BUNDLED_MODEL_DIR, default_model_path, predict_image
from serving.backends.onnxruntime import OnnxRuntimeBackend
from serving.pipeline import PosePipeline
from tests.serving_fixtures import auth, thread_server

BUNDLES = sorted(BUNDLED_MODEL_DIR.glob("*/v*/model.onnx"))
pytestmark = pytest.mark.skipif(not BUNDLES, reason="no bundled model under artifacts/")
ONNX = BUNDLES[-1] if BUNDLES else Path("missing")
BUNDLE = ONNX.parent


@pytest.fixture(scope="module")
def release() -> dict:
    return json.loads((BUNDLE / "release.json").read_text())


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


def test_bundle_fits_the_budget_and_is_the_default(release, monkeypatch) -> None:
    monkeypatch.delenv("POSELOOP_MODEL", raising=False)
    assert default_model_path() == ONNX
    sizes = {p.name: p.stat().st_size for p in (ONNX, BUNDLE / "checkpoint.pt")}
    assert sum(sizes.values()) <= 25e6 and sizes == release["files_bytes"]
    card = (BUNDLE / "MODEL_CARD.md").read_text()
    flip = release["validation"]["flip"]
    assert f"{flip['pck_limbs']:.1f}" in card and release["command"] in card
    for limit in ("Single-person", "LSP-14", "sports"):
        assert limit in card


def test_onnx_contract_and_checkpoint(release) -> None:
    import torch

    from models.network import ModelConfig, build_model

    with OnnxRuntimeBackend(ONNX, intra_op_threads=1) as backend:
        meta = backend.metadata
        assert set(REQUIRED_KEYS) <= set(meta.props)
        assert meta.schema.name == "lsp14" and meta.schema.num_keypoints == 14
        assert (meta.input_size.h, meta.input_size.w) == (128, 96) and meta.version == release["version"]
        out = backend.infer(np.zeros((2, 3, 128, 96), np.float32))
        assert out.shape == (2, 14, 32, 24) and out.dtype == np.float32 and np.isfinite(out).all()
    state = torch.load(BUNDLE / "checkpoint.pt", map_location="cpu", weights_only=True)
    model = build_model(ModelConfig(**{**state["model_config"], "pretrained": False}))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state["model"].items()})
    assert state["config"]["data"]["dataset"] == "lsp" and state["weights_storage"] == "float16"


def test_sensible_keypoints_on_real_people(val_people, release) -> None:
    """On real validation photos, through the serving pipeline: accuracy near the card's figure, joints inside
    the padded box, and the head above the ankles for upright people."""
    with OnnxRuntimeBackend(ONNX, intra_op_threads=2) as backend:
        pipeline = PosePipeline(backend)
        poses = [pipeline.predict(image, [box])[0] for image, box, _ in val_people]
    pred = np.stack([p.keypoints for p in poses])
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
    upright = [p for p, (_, _, kp) in zip(poses, val_people) if kp[13, 1] < kp[[0, 5], 1].min()]
    assert upright and np.mean([p.keypoints[13, 1] < p.keypoints[[0, 5], 1].mean() for p in upright]) >= 0.8


def test_predict_and_first_start_use_it(val_people, tmp_path, monkeypatch) -> None:
    """`poseloop predict` without --model, and an API whose registry is empty, both serve the bundle (as v1)."""
    from continual.settings import Settings
    from serving.app import create_app

    monkeypatch.delenv("POSELOOP_MODEL", raising=False)
    image, box, _gt = val_people[0]
    path = tmp_path / "person.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    result = predict_image(path, [box])
    assert result["model_version"] == json.loads((BUNDLE / "release.json").read_text())["version"]
    assert len(result["persons"][0]["keypoints"]) == 14

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
        assert active["version"] == "1" and active["status"] == "active" and len(active["keypoints"]) == 14
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
