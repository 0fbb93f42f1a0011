"""Data-parallel training (torchrun + DDP, gloo on CPU): same global batch → same losses; ranks stay identical."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.distributed import DistContext, torchrun_argv
from training.engine import InfiniteLoader

REPO = Path(__file__).resolve().parents[1]


class _Items(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i

    def set_epoch(self, epoch):
        pass


@pytest.mark.parametrize("n", [37, 5])
def test_rank_shards_partition_each_global_batch(n):
    """Rank r's k-th batch is its share of the single-process k-th batch: the union is that batch, no overlap."""
    single = InfiniteLoader(_Items(n), 8, seed=3, num_workers=0)
    ranks = [InfiniteLoader(_Items(n), 8, seed=3, num_workers=0, dist=DistContext(r, 2)) for r in range(2)]
    for epoch in range(2):
        single.epoch = epoch
        for r in ranks:
            r.epoch = epoch
        batches = single._batches()
        shards = [r._batches() for r in ranks]
        assert len(batches) == len(shards[0]) == len(shards[1]) >= 1
        for k, batch in enumerate(batches):
            assert len(shards[0][k]) == len(shards[1][k]) == 4
            assert sorted(shards[0][k] + shards[1][k]) == sorted(batch)
    with pytest.raises(ValueError, match="divisible"):
        InfiniteLoader(_Items(n), 9, seed=3, num_workers=0, dist=DistContext(0, 2))._batches()


def _losses(run_dir: Path) -> list[tuple[float, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["loss_sup"], r.get("loss_unsup", 0.0)) for r in rows if "loss_sup" in r]


def test_two_gloo_processes_match_one(tmp_path, data_root):
    """trs: supervised + unsupervised losses, an EMA teacher (parameters and BN buffers), a reviewer and auxiliary
    heads; every one must stay equal on both ranks, and the losses must match one process with the same batch."""
    method = "trs"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("WORLD_SIZE", None)
    script = ["tests/ddp_run.py", str(tmp_path / "one"), method, "3"]
    subprocess.run([sys.executable, *script], cwd=REPO, env=env, check=True, capture_output=True, timeout=300)
    two = ["tests/ddp_run.py", str(tmp_path / "two"), method, "3"]
    argv = torchrun_argv(2, "x", [])[:-2] + two  # torchrun runs the script path, not a module
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    single, parallel = _losses(tmp_path / "one" / method), _losses(tmp_path / "two" / method)
    assert len(single) == len(parallel) == 3
    # CPU ranks normalise BN over their half of the batch (gloo has no SyncBatchNorm), hence a tolerance.
    for (s_sup, s_un), (p_sup, p_un) in zip(single, parallel):
        assert p_sup == pytest.approx(s_sup, rel=0.03)
        assert p_un == pytest.approx(s_un, rel=0.15, abs=1e-4)

    rank0, rank1 = (torch.load(tmp_path / "two" / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    assert any(k.startswith("buffer:ema.") for k in rank0) and any(k.startswith("reviewer.") for k in rank0)
    for key in rank0:
        assert torch.allclose(rank0[key], rank1[key], rtol=0, atol=0, equal_nan=True), key
    moved = [k for k in rank0 if k.startswith("student.") and not torch.equal(rank0[k], rank0[f"init:{k[8:]}"])]
    assert len(moved) > 10  # the ranks trained (identically), they did not just keep the initial weights
    assert (tmp_path / "two" / method / "last.pt").exists()  # rank 0 checkpoints


def test_train_cli_nproc_relaunches_under_torchrun(tmp_path, data_root):
    """`poseloop train --nproc 2` runs two ranks; only rank 0 prints the summary and writes the run directory."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    sets = [
        f"output_dir={tmp_path}",
        "model.pretrained=false",
        "data.input_h=96",
        "data.input_w=64",
        "data.label_budget=16",
        "optim.iterations=2",
        "schedule.val_every=1000",
        "schedule.log_every=1",
    ]
    argv = [
        sys.executable,
        "-m",
        "poseloop.cli",
        "train",
        "-c",
        "configs/quick.yaml",
        "--nproc",
        "2",
        "--no-export",
        *[x for s in sets for x in ("--set", s)],
    ]
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count('"run_dir"') == 1 and json.loads(done.stdout[done.stdout.index("{") :])["steps"] == 2
    run = tmp_path / "quick"
    assert (run / "last.pt").exists() and len(_losses(run)) == 2
