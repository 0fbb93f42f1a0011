"""The collapsing problem (Xie et al., ICCV'21) reproduced on real data, and the guard that catches it.

From the same supervised start, naive symmetric consistency between two equally hard views (gradients through
both) drifts the unlabeled heatmaps to background and the guard stops the run and marks it unpromotable, while
easy→hard training (detached easy-view teacher) on the same data and budget stays healthy.
"""

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import tests.naive_method  # noqa: F401 - registers the collapsing anti-example `naive_symmetric`
from training.config import load_config
from training.engine import Trainer

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "ssl"
SMALL = [
    "data.input_h=64",
    "data.input_w=48",
    "data.label_budget=16",
    "data.unlabeled_limit=64",
    "optim.batch_size=8",
    "schedule.log_every=10",
    "schedule.val_every=100000",
    "eval.flip_test=false",
    "model.head_channels=64",
    "optim.milestones=[0.99,0.995]",
]


def _peaks(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["mean_peak"] for r in rows if "mean_peak" in r]


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_naive_consistency_collapses_and_the_guard_fires_while_easy_to_hard_does_not(
    tmp_path, data_root, restore_threads
):
    common = [f"output_dir={tmp_path}", *SMALL]
    warm = load_config(
        CONFIGS / "supervised.yaml", [*common, "name=warm", "optim.iterations=150", "data.unlabeled=null"]
    )
    start = Trainer(warm).fit(progress=False).run_dir / "best.pt"

    def consistency(name: str, iterations: int, *extra: str):
        cfg = load_config(
            CONFIGS / "posecons.yaml",
            [
                *common,
                f"name={name}",
                f"optim.iterations={iterations}",
                "method.params.guard_min_steps=50",
                "method.params.guard_window=25",
                *extra,
            ],
        )
        return Trainer(cfg, init_checkpoint=str(start)).fit(progress=False)

    # both runs at once, one core each (the CI box has two); each is seeded, neither depends on the other. The
    # healthy run trains the naive run's whole cap, so it outlasts naive wherever naive collapses.
    cap = 450
    torch.set_num_threads(1)
    with ThreadPoolExecutor(2) as pool:
        naive_run = pool.submit(consistency, "naive", cap, "method.name=naive_symmetric", "schedule.val_every=100")
        healthy_run = pool.submit(consistency, "easy_to_hard", cap)
        naive, healthy = naive_run.result(), healthy_run.result()
    assert naive.stopped_reason and "collapse" in naive.stopped_reason and naive.steps < cap
    assert (naive.run_dir / "UNPROMOTABLE").exists()
    assert torch.load(naive.run_dir / "best.pt", weights_only=True)["promotable"] is False
    peaks = _peaks(naive.run_dir)
    assert peaks[-1] < 0.3 * max(peaks[:5])  # the heatmaps really faded: not a guard false alarm

    assert healthy.steps >= naive.steps  # trained at least as long as naive took to collapse
    assert healthy.stopped_reason is None and not (healthy.run_dir / "UNPROMOTABLE").exists()
    assert min(_peaks(healthy.run_dir)[-5:]) > 0.25
