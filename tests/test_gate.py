"""The promotion gate decides on evidence: paired bootstrap over persons, the interval's lower bound against the
margin, both versions scored alike (no dataset needed: per-person counts are given)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from continual import gate
from continual.retrain import _gate
from continual.settings import load_settings
from models.registry import ModelRegistry
from tests.serving_fixtures import tiny_pose_onnx


def _score(correct: list[int], counted: list[int] | None = None, metric: str = "pck_limbs") -> dict:
    counted = counted or [12] * len(correct)
    value = round(100.0 * sum(correct) / sum(counted), 3)
    return {
        "metric": metric,
        "value": value,
        "persons": len(correct),
        "per_person": {"limbs_correct": correct, "limbs_counted": counted},
    }


def test_identical_scores_have_a_zero_interval_and_the_margin_is_inclusive() -> None:
    people = [6, 7, 8, 9, 10, 11] * 20
    evidence = gate.compare(_score(people), _score(people))
    assert evidence.delta == 0 and evidence.ci_low == 0 and evidence.ci_high == 0
    assert gate.decide(evidence, margin=0.0, collapse=None)[0] == "promote"
    assert gate.decide(evidence, margin=0.01, collapse=None)[0] == "reject"


def test_a_mean_gain_inside_the_noise_is_rejected_a_consistent_one_promoted() -> None:
    base = [6, 7, 8, 9, 10, 11] * 20
    noisy = [c + (3 if i % 2 else -2) for i, c in enumerate(base)]  # +0.5 joint per person, high variance
    steady = [c + 1 for c in base]  # +1 joint for every person: +8.3 points, tight interval
    noisy_evidence = gate.compare(_score(noisy), _score(base))
    assert noisy_evidence.delta > 0.5 and noisy_evidence.ci_low < 0.5
    verdict, reason = gate.decide(noisy_evidence, margin=0.5, collapse=None)
    assert verdict == "reject" and "lower bound" in reason and "< margin 0.5" in reason
    steady_evidence = gate.compare(_score(steady), _score(base))
    assert steady_evidence.ci_low == pytest.approx(steady_evidence.delta, abs=0.01) and steady_evidence.ci_low > 8
    assert gate.decide(steady_evidence, margin=0.5, collapse=None)[0] == "promote"


def test_collapse_rejects_whatever_the_figures() -> None:
    evidence = gate.compare(_score([12] * 50), _score([0] * 50))
    verdict, reason = gate.decide(evidence, margin=0.5, collapse="mean peak 0.01")
    assert verdict == "reject" and "collapse" in reason


def test_without_per_person_scores_the_point_delta_decides_and_says_so() -> None:
    cand = {"metric": "ap", "value": 41.0, "persons": 30}
    base = {"metric": "ap", "value": 40.0, "persons": 30}
    evidence = gate.compare(cand, base)
    assert evidence.ci_low is None
    verdict, reason = gate.decide(evidence, margin=0.5, collapse=None)
    assert verdict == "promote" and "no interval" in reason and "Δ +1.00 ≥ margin 0.5" in reason


def test_scores_from_different_splits_are_refused() -> None:
    with pytest.raises(ValueError, match="same split"):
        gate.compare(_score([1] * 10), _score([1] * 11))
    with pytest.raises(ValueError, match="different joints"):
        gate.compare(_score([1] * 10, [12] * 10), _score([1] * 10, [11] * 10))


@pytest.mark.parametrize(
    ("candidate", "margin", "state", "decision"),
    [
        ([8] * 40, 0.5, "active", "promoted"),
        ([7] * 40, 0.5, "rejected", "rejected"),
        ([7] * 40, -1.0, "active", "promoted"),
    ],
)
def test_gate_stage_records_the_evidence_and_acts_on_the_registry(tmp_path, candidate, margin, state, decision) -> None:
    registry = ModelRegistry(tmp_path / "reg")
    parent = registry.register(tiny_pose_onnx(tmp_path / "a.onnx", seed=1), actor="test")
    registry.set_active(parent.version, "test", "start")
    child = registry.register(tiny_pose_onnx(tmp_path / "b.onnx", seed=2), parent=parent.version, actor="test")
    ctx = SimpleNamespace(registry=registry, settings=load_settings(registry_dir=tmp_path / "reg"))
    job = SimpleNamespace(id="j1", params={"margin": margin})
    result = {
        "candidate": {"version": child.version},
        "training": {"collapse": None},
        "active_metric": _score([7] * 40),
        "candidate_metric": _score(candidate),
    }
    out = _gate(ctx, job, {"parent": parent.version}, result)
    assert out["decision"] == decision and registry.get(child.version).state == state
    assert out["ci_low"] is not None and out["persons"] == 40 and out["margin"] == margin
    event = next(e for e in reversed(registry.events()) if e["version"] == child.version)
    assert "Δ" in event["reason"] and "margin" in event["reason"]
