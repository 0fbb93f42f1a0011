"""`poseloop bench ssl --profile quick`: every preset runs through the real engine on real LSP + LSPET data."""

import json
import re

import pytest

from poseloop.bench.runs import _train_time_s, load_results, save_result
from poseloop.bench.ssl import METHODS, run_ssl_bench


def test_quick_profile_runs_every_preset(tmp_path, data_root):
    results = run_ssl_bench("quick", out=tmp_path / "bench.md", results_dir=tmp_path)
    methods = {r["method"] for r in results.values()}
    assert set(METHODS) <= methods and "supervised_N init" in methods
    for row in results.values():
        assert row["done"] and 0.0 <= row["metrics"]["pck_limbs"] <= 100.0
        assert row["metrics"]["collapse"] is None
        people = row["metrics"]["per_person"]  # re-scored from best.pt: the same figure validation logged
        assert 100 * sum(people["limbs_correct"]) / sum(people["limbs_counted"]) == pytest.approx(
            row["metrics"]["pck_limbs"], abs=1e-6
        )
    by_method = {r["method"]: r["metrics"] for r in results.values()}
    for dual in ("posedual", "dsph"):  # both nets averaged, reported on their own row
        assert 0.0 <= by_method[dual]["ensemble_pck_limbs"] <= 100.0
    assert by_method["posecons"]["ensemble_pck_limbs"] is None
    text = (tmp_path / "bench.md").read_text()
    assert "LSP-SSL benchmark (quick)" in text and "posedual (two-net ensemble)" in text
    assert "Δ vs supervised_N [95% CI]" in text and re.search(r"\| [+-]\d+\.\d \[[+-]\d+\.\d, [+-]\d+\.\d\] \|", text)
    assert (tmp_path / "images" / "ssl_quick.png").read_bytes()[:4] == b"\x89PNG"
    # a row cached under a superseded config stays in the file but leaves the table
    save_result(tmp_path / "ssl_quick.json", "superseded00", {**next(iter(results.values())), "method": "old"})
    (tmp_path / "ssl_quick_notes.md").write_text("**Finding.** kept across regenerations\n")
    # resumable: a second call finds every row cached and trains nothing
    again = run_ssl_bench("quick", out=tmp_path / "bench.md", results_dir=tmp_path)
    assert json.dumps(again, sort_keys=True) == json.dumps(results, sort_keys=True)
    assert "superseded00" in load_results(tmp_path / "ssl_quick.json")
    text = (tmp_path / "bench.md").read_text()
    assert "| old |" not in text and "**Finding.** kept across regenerations" in text


def test_only_upper_row_skips_the_init_row(tmp_path, data_root):
    results = run_ssl_bench("quick", out=None, results_dir=tmp_path, only=["supervised_all"])
    assert [r["method"] for r in results.values()] == ["supervised (all labels)"]


def test_train_time_sums_the_segments_of_a_resumed_run(tmp_path):
    """A resumed run restarts its clock: the table must add the segments, not show the last one."""
    lines = [
        {"step": 20, "time_s": 100.0},
        {"step": 20, "val/pck_limbs": 40.0},
        {"step": 40, "time_s": 300.0},
        {"step": 60, "time_s": 50.0},
        {"step": 80, "time_s": 120.0},
    ]  # paused after step 40, resumed
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    assert _train_time_s(tmp_path) == pytest.approx(420.0)
