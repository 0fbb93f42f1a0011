"""`poseloop bench ssl --profile quick`: every preset runs through the real engine on real LSP + LSPET data."""
import json

from poseloop.bench_ssl import METHODS, run_ssl_bench


def test_quick_profile_runs_every_preset(tmp_path, data_root):
    results = run_ssl_bench("quick", out=tmp_path / "bench.md", results_dir=tmp_path)
    methods = {r["method"] for r in results.values()}
    assert set(METHODS) <= methods and "supervised_N init" in methods
    for row in results.values():
        assert row["done"] and 0.0 <= row["metrics"]["pck_limbs"] <= 100.0
        assert row["metrics"]["collapse"] is None
    text = (tmp_path / "bench.md").read_text()
    assert "LSP-SSL benchmark (quick)" in text and "posedual" in text
    # resumable: a second call finds every row cached and trains nothing
    again = run_ssl_bench("quick", out=None, results_dir=tmp_path)
    assert json.dumps(again, sort_keys=True) == json.dumps(results, sort_keys=True)
