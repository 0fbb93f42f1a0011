"""`poseloop bench supervised`: LSP validation PCK@0.2 vs label budget and initialisation (issue figures)."""

from __future__ import annotations

from pathlib import Path

from poseloop.bench.doc import git_commit, machine_description, markdown_table, replace_section
from poseloop.bench.runs import BenchRow, run_rows
from training.config import TrainConfig, load_config

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "lsp_mbv2_128x96.yaml"
RESULTS = Path("docs/results/supervised.json")
# (labels, ImageNet init, iterations): the 2-core CPU budget decides the schedules; see docs/benchmarks.md.
PLAN = [(800, True, 3000), (100, True, 800), (200, True, 800), (800, False, 1000), (100, False, 400), (200, False, 400)]
DECODE_VARIANTS = {
    "flip+dark": (True, "dark"),
    "flip+quarter": (True, "quarter"),
    "dark": (False, "dark"),
    "quarter": (False, "quarter"),
}


def supervised_rows(plan=PLAN) -> list[BenchRow]:
    rows = []
    for n, imagenet, iterations in plan:
        init = "imagenet" if imagenet else "random"
        cfg = load_config(
            CONFIG,
            [
                f"name=bench_sup_n{n}_{init}",
                f"data.label_budget={n}",
                f"model.pretrained={str(imagenet).lower()}",
                f"optim.iterations={iterations}",
                "data.num_workers=0",
            ],
        )
        rows.append(BenchRow(f"N={n} {init}", cfg, {"labels": n, "init": init}))
    return rows


def evaluate_variants(checkpoint: Path, config: TrainConfig) -> dict:
    from training.checkpoints import evaluate_checkpoint

    out = {}
    for name, (flip, refinement) in DECODE_VARIANTS.items():
        m = evaluate_checkpoint(checkpoint, flip_test=flip, refinement=refinement)
        out[name] = {
            "pck_limbs": m["pck_limbs"],
            "pck_all": m["pck_all"],
            "per_joint": {k.split("/", 1)[1]: v for k, v in m.items() if k.startswith("pck/")},
        }
    return out


def run_supervised_bench(out: Path, only: list[str], command: str) -> None:
    rows = [r for r in supervised_rows() if not only or any(o in r.label for o in only)]
    results = run_rows(rows, RESULTS, evaluate_variants)
    write_section(results, out, "poseloop bench supervised")


def write_section(results: dict, out: Path, command: str) -> None:
    table = []
    for r in sorted(results.values(), key=lambda r: (r["init"] != "imagenet", r["labels"])):
        m = r["metrics"]
        table.append(
            [
                r["labels"],
                r["init"],
                r["iterations"],
                m["flip+dark"]["pck_limbs"],
                m["flip+dark"]["pck_all"],
                m["quarter"]["pck_limbs"],
                m["dark"]["pck_limbs"],
                m["flip+quarter"]["pck_limbs"],
                r["train_time_min"],
            ]
        )
    body = (
        f"Command: `{command}` · commit `{git_commit()}` · {machine_description()}\n\n"
        "LSP validation (im0801–1000, 200 persons), PCK@0.2 with torso = left shoulder ↔ right hip; labels = first N "
        "of im0001–0800. MobileNetV2 + 3×128 deconv head, 128×96 input, σ=2, Adam 1e-3 (×0.1 at 70%/90%), "
        "batch 32, scale/rotation/flip augmentation. Best checkpoint chosen on the validation split. "
        "Decoding ablation on the same checkpoint: `quarter` = argmax + quarter offset (the plain recipe), "
        "`dark` = DARK, `flip` = flip test with the one-pixel shift.\n\n"
        + markdown_table(
            [
                "labels",
                "init",
                "iters",
                "limbs (flip+DARK)",
                "all 14 (flip+DARK)",
                "limbs (quarter)",
                "limbs (DARK)",
                "limbs (flip+quarter)",
                "train min",
            ],
            table,
        )
        + f"\n\nRaw results: `{RESULTS}`."
    )
    replace_section(out, "Supervised LSP baselines", body)
