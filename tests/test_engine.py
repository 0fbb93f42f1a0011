"""The training loop on real LSP crops: learns, validates, checkpoints, resumes exactly, plots."""

import json

import pytest
import torch

from training.config import load_config
from training.engine import Trainer, lr_factor

CONFIG = "configs/quick.yaml"


def _config(tmp_path, name, iterations, extra=()):
    return load_config(
        CONFIG,
        [
            f"name={name}",
            f"output_dir={tmp_path}",
            "model.pretrained=false",
            "data.input_h=96",
            "data.input_w=64",
            "data.label_budget=8",
            "optim.batch_size=4",
            f"optim.iterations={iterations}",
            "schedule.log_every=1",
            "schedule.val_every=1000",
            "schedule.checkpoint_every=3",
            *extra,
        ],
    )


def _small_val(trainer):
    from training.data import Splits

    s = trainer.splits
    trainer.splits = Splits(s.train, s.val[:8], s.schema, s.description)
    return trainer


def test_resume_is_exact(tmp_path, data_root):
    straight = _small_val(Trainer(_config(tmp_path / "a", "run", 6), device="cpu"))
    straight.fit(progress=False)
    _small_val(Trainer(_config(tmp_path / "b", "run", 6), device="cpu")).fit(progress=False, stop_after=4)
    resumed = _small_val(Trainer(_config(tmp_path / "b", "run", 6), device="cpu"))
    assert resumed.try_resume() and resumed.step == 4
    resumed = _small_val(Trainer(_config(tmp_path / "b", "run", 6), device="cpu"))
    resumed.fit(progress=False)
    for (k, a), b in zip(straight.method.state_dict().items(), resumed.method.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), k
    rows = [json.loads(line) for line in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss_sup" in r] == [1, 2, 3, 4, 5, 6]


def test_training_learns_and_writes_artifacts(tmp_path, data_root):
    cfg = _config(tmp_path, "learn", 40, ["optim.lr=3e-3", "schedule.val_every=40"])
    trainer = _small_val(Trainer(cfg, device="cpu"))
    result = trainer.fit(progress=False)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss_sup"] for r in rows if "loss_sup" in r]
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])  # it fits 8 images (no optimiser step would give ~1.0)
    assert any("val/pck_limbs" in r for r in rows)
    assert (result.run_dir / "best.pt").exists() and (result.run_dir / "curve.png").stat().st_size > 1000
    best = torch.load(result.run_dir / "best.pt", weights_only=True)
    assert best["metrics"]["pck_limbs"] == result.best_metric


def test_resume_refuses_a_different_config(tmp_path, data_root):
    _small_val(Trainer(_config(tmp_path, "x", 3), device="cpu")).fit(progress=False)
    other = Trainer(_config(tmp_path, "x", 3, ["optim.lr=0.5"]), device="cpu")
    with pytest.raises(RuntimeError, match="different config"):
        other.fit(progress=False)


def test_lr_schedule_steps_at_milestones(tmp_path):
    cfg = load_config(CONFIG, ["optim.iterations=100", "optim.milestones=[0.7, 0.9]"])
    assert lr_factor(69, cfg) == 1.0 and lr_factor(70, cfg) == pytest.approx(0.1)
    assert lr_factor(95, cfg) == pytest.approx(0.01)
