"""`poseloop bench ssl-v2`: the row set, the comparisons between rows, and a v2-quick run on real LSP + LSPET."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import yaml

from poseloop.bench import ssl_v2
from poseloop.bench.doc import machine_description
from poseloop.bench.ssl_v2 import (
    CONFIGS,
    DISTILL_SEED_REPEATS,
    METHODS,
    PROFILES,
    SEED_REPEATS,
    VARIANTS,
    add_comparisons,
    run_ssl_v2_bench,
    select_rows,
    v2_rows,
)

# each ablation row: its seed method and the change it tests against that preset
RAMP = {"rampup_steps": 500}
VARIANT_CHANGES = {
    "supervised_aux": ("supervised", {}),  # its one change is the model's aux heads, checked below
    "posecons_rampup": ("posecons", RAMP),
    "posecons_rampup_ema": ("posecons", RAMP | {"teacher": "ema"}),
    "posecons_rampup_ema_gated": ("posecons", RAMP | {"teacher": "ema", "confidence_threshold": 0.1}),
    "posecons_rampup_ema_kmix": ("posecons", RAMP | {"teacher": "ema", "paths": ["keypoint_mix"]}),
    "trs_rampup": ("trs", RAMP),
    "posedual_rampup": ("posedual", RAMP),
    "dsph_rampup": ("dsph", RAMP),
    "akm_rampup": ("akm", RAMP),
    "akm_rampup_gated": ("akm", RAMP | {"confidence_threshold": 0.1}),
    "akm_rampup_gated_nomix": ("akm", RAMP | {"confidence_threshold": 0.1, "lambda_m": 0.0}),
}
REQUIRED = ("method", "labels", "seed", "config_hash", "step", "train_minutes", "machine", "metrics")
REQUIRED_METRICS = ("pck_limbs", "delta", "ci_low", "ci_high", "gap_closure", "collapse", "dev_pck_limbs", "per_person")


def test_default_rows_cover_every_method_and_n_on_one_schedule(tmp_path):
    rows = v2_rows("v2", tmp_path)
    cells = [(r.info["method"], r.info["labels"], r.info["seed"]) for r in rows]
    expected = {("supervised", n, s) for n in (100, 200, 400) for s in (0, 1)}
    expected |= {(m, n, 0) for m in METHODS[1:] for n in (100, 200, 400)}
    expected |= {(v, n, 0) for v, ns in VARIANTS.items() for n in ns}
    expected |= {(v, n, 1) for v, ns in SEED_REPEATS.items() for n in ns}
    assert all(set(ns) <= set(VARIANTS[v]) for v, ns in SEED_REPEATS.items())  # a repeat of a row that runs
    assert set(VARIANTS) == set(VARIANT_CHANGES)
    assert sorted(cells) == sorted(expected)  # each cell once, nothing else (no distill rows by default)
    assert set(METHODS[1:]) == {"posecons", "posedual", "dsph", "trs", "akm"}
    assert {r.info["kind"] for r in rows} == {"train"}
    assert len({r.config.config_hash() for r in rows}) == len({r.config.run_dir for r in rows}) == len(rows)
    for r in rows:
        c = r.config
        assert (c.optim.iterations, c.optim.warmup_iterations, c.optim.milestones) == (1500, 100, (0.7, 0.9))
        assert (c.schedule.val_every, c.optim.batch_size, c.data.input_h, c.data.input_w) == (250, 32, 128, 96)
        assert c.data.lsp_protocol == "v2" and c.data.unlabeled == "lspet" and c.data.label_budget == r.info["labels"]
        assert c.model.pretrained and c.init_checkpoint is None  # ImageNet init, no warm start
        method = r.info["method"]
        seed_method = VARIANT_CHANGES[method][0] if method in VARIANT_CHANGES else method
        assert c.seed == r.info["seed"] and c.method.name == seed_method
        assert c.method.params.get("peer_init") != "copy"  # no warm start, so no copied peer
        if seed_method != "supervised":
            assert c.method.params["hard_view_bn_stats"] is False
        with_heads = seed_method == "trs" or method == "supervised_aux"  # multi-level heads: trs and its control
        assert c.model.aux_stages == ((1, 2) if with_heads else ())
    # an ablation variant is its seed method's preset with the one change it tests, nothing else
    by_cell = {(r.info["method"], r.info["labels"]): r.config.method.params for r in rows}
    for variant, ns in VARIANTS.items():
        method, change = VARIANT_CHANGES[variant]
        for n in ns:
            assert by_cell[variant, n] == by_cell[method, n] | change
    # the base config holds the profile's schedule, so `poseloop train configs/ssl_v2/<m>.yaml` is a table row
    base = yaml.safe_load((CONFIGS / "base.yaml").read_text())
    p = PROFILES["v2"]
    assert base["optim"]["iterations"] == p["iterations"] and base["schedule"]["val_every"] == p["val_every"]
    assert base["optim"]["warmup_iterations"] == p["warmup_iterations"]
    assert base["optim"]["milestones"] == p["milestones"]


def test_distill_rows_are_a_parameter_and_filters_check_names(tmp_path):
    rows = v2_rows("v2", tmp_path, include_distill=True)
    distill = [r for r in rows if r.info["kind"] == "distill"]
    assert [r.info["labels"] for r in distill] == [100, 200, 400]
    assert all(r.config.method.name == "supervised" for r in distill)  # run_distillation trains supervised
    assert all(r.config.optim.iterations == 1500 for r in distill)
    picked = select_rows(rows, ["supervised", "dsph"], [200])
    assert {(r.info["method"], r.info["labels"]) for r in picked} == {("supervised", 200), ("dsph", 200)}
    with pytest.raises(ValueError, match="posecon"):
        select_rows(rows, ["posecon"], None)
    with pytest.raises(ValueError, match="800"):
        select_rows(rows, None, [800])
    with pytest.raises(ValueError, match="include_distill"):
        select_rows(v2_rows("v2", tmp_path), ["distill"], None)
    with pytest.raises(ValueError, match="include_distill"):
        select_rows(v2_rows("v2", tmp_path), ["distill_movenet"], None)
    # a distill repeat is its seed-0 row with only the seed (and so its run directory) changed
    repeats = [r for r in rows if r.info["kind"] in DISTILL_SEED_REPEATS and r.info["seed"] == 1]
    assert sorted((r.info["kind"], r.info["labels"]) for r in repeats) == sorted(
        (k, n) for k, ns in DISTILL_SEED_REPEATS.items() for n in ns
    )
    first = {(r.info["kind"], r.info["labels"], r.info["seed"]): r for r in rows}
    for r in repeats:
        a = r.config.model_dump(mode="json")
        b = first[r.info["kind"], r.info["labels"], 0].config.model_dump(mode="json")
        assert (a.pop("seed"), b.pop("seed")) == (1, 0) and a.pop("name") != b.pop("name") and a == b
    seeds = select_rows(rows, ["supervised"], [200], [1])
    assert [(r.info["labels"], r.info["seed"]) for r in seeds] == [(200, 1)]
    with pytest.raises(ValueError, match="seed"):
        select_rows(rows, None, None, [7])


@pytest.mark.parametrize(
    ("kind", "like", "shares"),
    [
        ("distill_movenet", "distill", (None, None)),
        ("distill_movenet_1to1", "distill_movenet", (0.5, None)),
        ("distill_ensemble_1to1", "distill_movenet_1to1", (0.5, 0.5)),
    ],
)
def test_distill_kinds_share_the_student_recipe_but_for_the_labeled_share(tmp_path, kind, like, shares):
    """MoveNet rows train the self-distillation row's student; the 1:1 rows only give the labels half the split, and
    the ensemble row differs from the MoveNet 1:1 row in its teacher alone."""
    rows = v2_rows("v2", tmp_path, include_distill=True)
    of_kind = {r.info["labels"]: r for r in rows if r.info["kind"] == kind and r.info["seed"] == 0}
    reference = {r.info["labels"]: r for r in rows if r.info["kind"] == like and r.info["seed"] == 0}
    assert sorted(of_kind) == [100, 200, 400]
    for n, row in of_kind.items():
        a, b = row.config.model_dump(mode="json"), reference[n].config.model_dump(mode="json")
        assert a.pop("name") != b.pop("name")  # its own run directory
        assert (a["data"].pop("pseudo_share"), b["data"].pop("pseudo_share")) == shares
        assert a == b


def _record(method: str, labels: int, seed: int, correct: list[int], key: str) -> dict:
    counted = [12] * len(correct)
    pck = 100.0 * sum(correct) / sum(counted)
    people = {"limbs_correct": correct, "limbs_counted": counted}
    return {
        "method": method,
        "labels": labels,
        "seed": seed,
        "config_hash": key,
        "done": True,
        "step": 1500,
        "train_minutes": 1.0,
        "metrics": {"pck_limbs": pck, "pck_all": pck, "dev_pck_limbs": pck, "collapse": None, "per_person": people},
    }


def _scored(rows: list, scores: dict) -> tuple[dict, dict]:
    """(cell → config hash of its row, the results file with one finished record per scored cell)."""
    key = {(r.info["method"], r.info["labels"], r.info["seed"]): r.config.config_hash() for r in rows}
    return key, {key[c]: _record(*c, correct, key[c]) for c, correct in scores.items()}


def test_comparisons_pair_each_row_with_supervised_n_seed0(tmp_path):
    rows = v2_rows("v2", tmp_path)
    scores = {
        ("supervised", 100, 0): [4, 5, 6, 5],  # 41.7
        ("supervised", 100, 1): [5, 5, 6, 5],
        ("posecons", 100, 0): [6, 6, 7, 5],  # 50.0
        ("supervised", 400, 0): [9, 8, 10, 9],  # 75.0
        ("posecons", 400, 0): [9, 9, 10, 9],
        ("trs", 200, 0): [6, 6, 6, 6],  # its reference (supervised N=200 seed 0) is not there yet
    }
    key, results = _scored(rows, scores)
    results["old00000000"] = _record("posecons", 100, 0, [0, 0, 0, 0], "old00000000")  # superseded config
    add_comparisons(results, rows, reference_labels=400)
    sup = results[key["supervised", 100, 0]]["metrics"]
    assert (sup["delta"], sup["ci_low"], sup["ci_high"], sup["gap_closure"]) == (0.0, 0.0, 0.0, 0.0)
    pc = results[key["posecons", 100, 0]]["metrics"]
    assert pc["delta"] == pytest.approx(50.0 - 100 * 20 / 48) and pc["ci_low"] <= pc["delta"] <= pc["ci_high"]
    assert pc["gap_closure"] == pytest.approx((50.0 - 100 * 20 / 48) / (75.0 - 100 * 20 / 48))
    assert pc["reference"] == key["supervised", 100, 0]
    assert results[key["posecons", 400, 0]]["metrics"]["gap_closure"] is None  # N = 400 is "all labels"
    assert results[key["posecons", 400, 0]]["metrics"]["delta"] == pytest.approx(100 * 1 / 48)
    assert results[key["trs", 200, 0]]["metrics"]["delta"] is None
    assert "delta" not in results["old00000000"]["metrics"]


def test_two_seed_comparison_pairs_seed_means_once_all_four_runs_exist(tmp_path):
    rows = v2_rows("v2", tmp_path)
    scores = {  # 4 persons × 12 limbs
        ("supervised", 100, 0): [4, 5, 6, 5],
        ("supervised", 100, 1): [6, 5, 6, 7],
        ("trs_rampup", 100, 0): [8, 7, 8, 7],  # seed 0 alone: +10.4 over supervised seed 0
        ("trs_rampup", 100, 1): [4, 5, 6, 5],
        ("posecons_rampup", 100, 0): [6, 6, 6, 6],  # no seed-1 run yet
    }
    key, results = _scored(rows, scores)
    add_comparisons(results, rows, reference_labels=400)
    trs = [results[key["trs_rampup", 100, s]]["metrics"] for s in (0, 1)]
    # means: trs (6, 6, 7, 6) = 25/48, supervised (5, 5, 6, 6) = 22/48
    assert trs[0]["delta"] == pytest.approx(100 * 10 / 48)
    for m in trs:
        assert m["two_seed_delta"] == pytest.approx(100 * 3 / 48)
        assert m["two_seed_ci_low"] <= m["two_seed_delta"] <= m["two_seed_ci_high"]
    assert results[key["posecons_rampup", 100, 0]]["metrics"]["two_seed_delta"] is None
    assert results[key["supervised", 100, 1]]["metrics"]["two_seed_delta"] is None
    trs_s1 = next(r for r in rows if r.config.config_hash() == key["trs_rampup", 100, 1])
    assert ssl_v2._cells(trs_s1, results[key["trs_rampup", 100, 1]])[6].startswith("+6.2 [")  # the table column
    assert trs[0]["matched_two_seed_delta"] is None  # supervised_aux has not run yet
    assert ssl_v2._cells(trs_s1, results[key["trs_rampup", 100, 1]])[7] == "–"


def test_rows_with_aux_heads_are_also_compared_with_supervised_on_the_same_network(tmp_path):
    """trs's heads also supervise labeled crops: its same-network column is against supervised_aux's two seeds."""
    rows = v2_rows("v2", tmp_path)
    scores = {  # 4 persons × 12 limbs
        ("supervised", 200, 0): [4, 5, 6, 5],
        ("supervised", 200, 1): [6, 5, 6, 7],
        ("supervised_aux", 200, 0): [6, 6, 7, 6],
        ("supervised_aux", 200, 1): [6, 6, 7, 7],
        ("trs_rampup", 200, 0): [8, 7, 8, 7],
        ("trs_rampup", 200, 1): [6, 7, 6, 7],
        ("posecons_rampup", 200, 0): [6, 6, 6, 6],
    }
    key, results = _scored(rows, scores)
    add_comparisons(results, rows, reference_labels=400)
    trs = results[key["trs_rampup", 200, 0]]["metrics"]
    # seed means: trs (7, 7, 7, 7) = 28/48, supervised (5, 5, 6, 6) = 22/48, supervised_aux (6, 6, 7, 6.5) = 25.5/48
    assert trs["two_seed_delta"] == pytest.approx(100 * 6 / 48)
    assert trs["matched_two_seed_delta"] == pytest.approx(100 * 2.5 / 48)
    assert trs["matched_two_seed_ci_low"] <= trs["matched_two_seed_delta"] <= trs["matched_two_seed_ci_high"]
    aux = results[key["supervised_aux", 200, 0]]["metrics"]
    assert aux["two_seed_delta"] == pytest.approx(100 * 3.5 / 48) and aux["matched_two_seed_delta"] is None
    assert results[key["posecons_rampup", 200, 0]]["metrics"]["matched_two_seed_delta"] is None  # no heads
    trs_row = next(r for r in rows if r.config.config_hash() == key["trs_rampup", 200, 0])
    assert ssl_v2._cells(trs_row, results[key["trs_rampup", 200, 0]])[7].startswith("+5.2 [")


def test_every_table_row_has_one_cell_per_header_whatever_state_its_run_is_in(tmp_path):
    rows = v2_rows("v2", tmp_path)
    row = next(r for r in rows if (r.info["method"], r.info["labels"]) == ("trs", 100))
    done = _record("trs", 100, 0, [6, 6, 6, 6], row.config.config_hash())
    done["metrics"] |= {"delta": 1.0, "ci_low": 0.5, "ci_high": 1.5, "gap_closure": 0.1}
    no_checkpoint = _record("trs", 100, 0, [6, 6, 6, 6], row.config.config_hash())
    no_checkpoint["metrics"] |= {"pck_limbs": None, "collapse": "mean unlabeled peak 0.01 at step 143"}
    not_run = {"done": False, "reason": "poseloop.distill missing"}
    states = {"pending": None, "not run": not_run, "no checkpoint": no_checkpoint, "done": done}
    cells = {state: ssl_v2._cells(row, record) for state, record in states.items()}
    assert {state: len(c) for state, c in cells.items()} == dict.fromkeys(states, len(ssl_v2.TABLE_HEADERS))
    collapse = ssl_v2.TABLE_HEADERS.index("collapse")
    assert cells["no checkpoint"][collapse] == "mean unlabeled peak 0.01 at step 143"
    assert cells["done"][ssl_v2.TABLE_HEADERS.index("Δ vs supervised_N seed 0 [95% CI]")] == "+1.0 [+0.5, +1.5]"
    assert cells["not run"][3] == "not run: poseloop.distill missing"


def test_a_distill_row_without_its_module_is_reported_not_run(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "poseloop.distill", None)  # import → ImportError
    out = tmp_path / "bench.md"
    results = run_ssl_v2_bench("v2-quick", out, tmp_path, ["distill"], [8], include_distill=True)
    (row,) = results.values()
    assert row["status"] == "not run" and not row["done"] and "poseloop.distill" in row["reason"]
    text = out.read_text()
    assert "## LSP-SSL benchmark v2-quick" in text and "| 8 | distill | 0 | not run: " in text
    assert "| 8 | supervised | 1 | pending |" in text
    assert (tmp_path / "images" / "ssl_v2-quick.png").read_bytes()[:4] == b"\x89PNG"


def test_quick_profile_end_to_end(tmp_path, data_root, monkeypatch):
    out = tmp_path / "bench.md"
    results = run_ssl_v2_bench("v2-quick", out, tmp_path, ["supervised", "posecons"], [8], include_distill=False)
    by_cell = {(r["method"], r["labels"], r["seed"]): r for r in results.values()}
    assert set(by_cell) == {("supervised", 8, 0), ("supervised", 8, 1), ("posecons", 8, 0)}
    for key, row in results.items():
        assert all(f in row for f in REQUIRED) and all(f in row["metrics"] for f in REQUIRED_METRICS)
        m = row["metrics"]
        assert row["done"] and row["config_hash"] == key and row["step"] == 2 and m["collapse"] is None
        assert row["machine"] == machine_description()
        assert 0.0 <= m["pck_limbs"] <= 100.0 and 0.0 <= m["dev_pck_limbs"] <= 100.0
        people = m["per_person"]
        assert len(people["limbs_correct"]) == m["report_persons"] == 500
        assert 100 * sum(people["limbs_correct"]) / sum(people["limbs_counted"]) == pytest.approx(m["pck_limbs"])
        assert m["ci_low"] <= m["delta"] <= m["ci_high"] and m["gap_closure"] is None  # N = 16 not run
    sup = by_cell["supervised", 8, 0]["metrics"]
    assert (sup["delta"], sup["ci_low"], sup["ci_high"]) == (0.0, 0.0, 0.0)
    text = out.read_text()
    assert "## LSP-SSL benchmark v2-quick" in text and "| 16 | dsph | 0 | pending |" in text
    assert (tmp_path / "images" / "ssl_v2-quick.png").read_bytes()[:4] == b"\x89PNG"

    # a second call trains and scores nothing: every selected row is cached
    def refuse(*args, **kwargs):
        raise AssertionError("a cached row was run again")

    monkeypatch.setattr("training.engine.Trainer", refuse)
    monkeypatch.setattr("training.checkpoints.evaluate_checkpoint", refuse)
    (tmp_path / "ssl_v2-quick_notes.md").write_text("**Finding.** kept across regenerations\n")
    again = run_ssl_v2_bench("v2-quick", out, tmp_path, ["supervised", "posecons"], [8], include_distill=False)
    assert json.dumps(again, sort_keys=True) == json.dumps(results, sort_keys=True)
    assert "**Finding.** kept across regenerations" in out.read_text()
    monkeypatch.undo()
    _distill_row_reports_the_returned_checkpoint(
        tmp_path, by_cell["supervised", 8, 0], by_cell["supervised", 8, 1], monkeypatch
    )


def _distill_row_reports_the_returned_checkpoint(
    tmp_path: Path, teacher_row: dict, seed_one_row: dict, monkeypatch
) -> None:
    """A fake run_distillation that returns its first teacher: the row scores that checkpoint, so its Δ is 0."""
    calls = []

    def run_distillation(config, teacher, rounds, out_dir, *, precision, threads, cache_root):
        assert threads >= 1
        assert Path(cache_root) == tmp_path / "runs" / ssl_v2.SHARED_PSEUDO_LABELS  # one cache root for all rows
        calls.append((config.name, [Path(t) for t in teacher], rounds, Path(out_dir), precision))
        return [types.SimpleNamespace(best_checkpoint=Path(teacher[0]))]

    monkeypatch.setitem(sys.modules, "poseloop.distill", types.SimpleNamespace(run_distillation=run_distillation))
    results = run_ssl_v2_bench("v2-quick", None, tmp_path, ["distill"], [8], include_distill=True)
    row = next(r for r in results.values() if r["method"] == "distill")
    teacher = tmp_path / "runs" / teacher_row["run"] / "best.pt"
    run_dir = tmp_path / "runs" / row["run"]
    assert calls == [("ssl_v2-quick_distill_n8_s0", [teacher], ssl_v2.DISTILL_ROUNDS, run_dir, 0.7)]
    # the ensemble row is taught by both supervised seeds at its N, seed 0 first
    run_ssl_v2_bench("v2-quick", None, tmp_path, ["distill_ensemble_1to1"], [8], include_distill=True)
    seed_one = tmp_path / "runs" / seed_one_row["run"] / "best.pt"
    assert calls[1][0] == "ssl_v2-quick_distill_ensemble_1to1_n8_s0" and calls[1][1] == [teacher, seed_one]
    assert calls[1][4] == ssl_v2.DISTILL_PRECISION["distill_ensemble_1to1"]
    assert row["done"] and row["step"] == 2 and row["metrics"]["delta"] == 0.0
    assert row["distill_precision"] == ssl_v2.DISTILL_PRECISION["distill"]
    assert row["metrics"]["pck_limbs"] == teacher_row["metrics"]["pck_limbs"]

    # a later refresh that may not run distill rows still shows this one: the table is the whole table
    monkeypatch.delitem(sys.modules, "poseloop.distill")
    out = tmp_path / "refresh.md"
    refreshed = run_ssl_v2_bench("v2-quick", out, tmp_path, ["supervised"], [8], include_distill=False)
    assert refreshed[row["config_hash"]]["done"]
    assert f"| 8 | distill | 0 | {row['metrics']['pck_limbs']:.1f} |" in out.read_text()
