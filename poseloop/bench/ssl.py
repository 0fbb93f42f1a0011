"""`poseloop bench ssl`: the LSP-SSL benchmark — every preset on the same budget, gap closure vs supervised.

Protocol (configs/ssl/lsp_ssl_base.yaml): labeled = first N of LSP im0001–0800, unlabeled = LSPET crops,
validation = LSP im0801–1000 (PCK@0.2, limbs), batches 1:1. All rows warm-start from one supervised_N checkpoint
(trained first, also a row) and then get the same number of further iterations — `supervised` included, so the
comparison is fair. supervised_800 is the upper reference. Rows are cached by config hash: the command resumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

from poseloop.bench.doc import git_commit, machine_description, markdown_table, replace_section
from poseloop.bench.runs import BenchRow, load_results, run_rows, save_result
from training.config import TrainConfig, load_config
from training.evaluation import paired_bootstrap_delta

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "ssl"
METHODS = ("supervised", "posecons", "posedual", "dsph", "trs", "akm", "continual")


class Profile(TypedDict):
    """A bench budget: config overrides, supervised warm-up steps, then SSL steps per method."""

    overrides: list[str]
    warmup: int
    steps: int


PROFILES: dict[str, Profile] = {
    # warm-up supervised steps, then SSL steps per method. Measured s/step on one CPU thread, batch 32+32:
    # supervised 1.1, posecons 2.3, trs 2.3, akm 3.3, continual 3.6, posedual 4.1, dsph 7.2 → ≈ 7.5 CPU-hours,
    # i.e. ≈ 3.8 h as two bench processes (`--only`) on the 2-core box.
    "full": {"overrides": [], "warmup": 1000, "steps": 1000},
    "quick": {
        "overrides": [
            "data.input_h=64",
            "data.input_w=48",
            "data.label_budget=8",
            "data.unlabeled_limit=16",
            "optim.batch_size=4",
            "schedule.val_every=1000",
            "schedule.log_every=1",
            "eval.flip_test=false",
            "model.pretrained=false",
            "method.params.guard_min_steps=1000",
        ],
        "warmup": 2,
        "steps": 2,
    },
}


def _config(name: str, profile: str, extra: list[str], results_dir: Path) -> TrainConfig:
    p = PROFILES[profile]
    overrides = [f"output_dir={results_dir / 'runs'}", *p["overrides"], *extra]
    if name == "supervised":
        overrides = [o for o in overrides if not o.startswith("method.params")]
    return load_config(CONFIGS / f"{name}.yaml", overrides)


def ssl_rows(profile: str, results_dir: Path, labels: int | None = None) -> tuple[list[BenchRow], BenchRow]:
    """(rows, warm-up row). Row configs carry the SSL step count; the warm-up row trains supervised_N."""
    p = PROFILES[profile]
    budget = [f"data.label_budget={labels}"] if labels else []
    warm = _config(
        "supervised",
        profile,
        [*budget, f"name=ssl_{profile}_supervised_init", f"optim.iterations={p['warmup']}"],
        results_dir,
    )
    rows = [BenchRow("supervised_N (init)", warm, {"method": "supervised_N init", "role": "init"})]
    upper = _config(
        "supervised",
        profile,
        [
            "data.label_budget=null" if profile == "full" else "data.label_budget=64",
            f"name=ssl_{profile}_supervised_all",
            f"optim.iterations={p['warmup'] + p['steps']}",
        ],
        results_dir,
    )
    rows.append(BenchRow("supervised_all", upper, {"method": "supervised (all labels)", "role": "upper"}))
    for method in METHODS:
        cfg = _config(
            method, profile, [*budget, f"name=ssl_{profile}_{method}", f"optim.iterations={p['steps']}"], results_dir
        )
        rows.append(BenchRow(method, cfg, {"method": method, "role": "method"}))
    return rows, rows[0]


def evaluate_best(checkpoint: Path, config: TrainConfig) -> dict:
    import torch

    state_file = checkpoint.parent / "UNPROMOTABLE"

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    metrics = state["metrics"]
    return {
        "pck_limbs": metrics["pck_limbs"],
        "pck_all": metrics["pck_all"],
        "ensemble_pck_limbs": metrics.get("ensemble/pck_limbs"),
        "ensemble_pck_all": metrics.get("ensemble/pck_all"),
        "collapse": state_file.read_text().strip() if state_file.exists() else None,
        "per_person": per_person_limbs(checkpoint),
    }


def per_person_limbs(checkpoint: Path) -> dict[str, list[int]]:
    """Per-person limb scores of the checkpoint, scored as validation scores it: the input of the paired bootstrap
    that tells a real difference between rows from the luck of 200 persons."""
    from training.checkpoints import evaluate_checkpoint

    return evaluate_checkpoint(checkpoint, per_person=True)["per_person"]


def run_ssl_bench(profile: str, out: Path | None, results_dir: Path, only: list[str] | None = None) -> dict:
    if profile == "full":
        # Its rows were trained before engine v2 (crop-relative hard views, easy teacher view, label-free
        # reviewer, scaled EMA, LR warm-up) under configs whose hashes did not change: re-running would mix them.
        raise ValueError("the v1 full profile is historical (docs/results/ssl_full.json); use `poseloop bench ssl-v2`")
    rows, warm = ssl_rows(profile, results_dir)
    results_path = results_dir / f"ssl_{profile}.json"
    init_ckpt = warm.config.run_dir / "best.pt"
    selected = [r for r in rows if not only or r.label in only]
    if any(r.info["role"] == "method" for r in selected) and warm not in selected:
        selected.insert(0, warm)  # every method row starts from it
    run_rows(
        selected,
        results_path,
        evaluate_best,
        trainer_kwargs=lambda row: {} if row.info["role"] != "method" else {"init_checkpoint": str(init_ckpt)},
    )
    current = {r.config.config_hash(): r for r in rows}  # rows of superseded configs stay cached, off the table
    results = {key: row for key, row in load_results(results_path).items() if key in current}
    for key, row in results.items():  # rows cached before per-person scores were kept
        best = current[key].config.run_dir / "best.pt"
        if "per_person" not in row["metrics"] and best.exists():
            row["metrics"]["per_person"] = per_person_limbs(best)
            save_result(results_path, key, row)
    if out is not None:
        write_section(results, out, profile, results_dir)
    return results


def gap_closure(value: float, sup_n: float, sup_all: float) -> float:
    return (value - sup_n) / (sup_all - sup_n) if sup_all != sup_n else float("nan")


def delta_vs(row: dict | None, reference: dict | None) -> str:
    """'+1.2 [−0.8, +3.1]': paired-bootstrap difference in PCK limbs ('' when either side lacks per-person scores)."""
    if not row or not reference:
        return ""
    delta, low, high = paired_bootstrap_delta(row["limbs_correct"], reference["limbs_correct"], row["limbs_counted"])
    return f"{delta:+.1f} [{low:+.1f}, {high:+.1f}]"


def write_section(results: dict, out: Path, profile: str, results_dir: Path) -> None:
    by_method = {r["method"]: r for r in results.values()}
    supervised = by_method.get("supervised", {}).get("metrics", {})
    sup_n, sup_people = supervised.get("pck_limbs"), supervised.get("per_person")
    sup_all = by_method.get("supervised (all labels)", {}).get("metrics", {}).get("pck_limbs")
    table = []
    for r in results.values():
        m = r["metrics"]
        gap = gap_closure(m["pck_limbs"], sup_n, sup_all) if sup_n is not None and sup_all is not None else None
        table.append(
            [
                r["method"],
                m["pck_limbs"],
                m["pck_all"],
                "" if gap is None else f"{gap:.2f}",
                delta_vs(m.get("per_person"), sup_people) if r["method"] != "supervised" else "–",
                r["train_time_min"],
                r["iterations"],
                m["collapse"] or "no",
            ]
        )
        if m.get("ensemble_pck_limbs") is not None:  # dual methods: both nets averaged, never mixed with the above
            gap = (
                gap_closure(m["ensemble_pck_limbs"], sup_n, sup_all)
                if sup_n is not None and sup_all is not None
                else None
            )
            table.append(
                [
                    f"{r['method']} (two-net ensemble)",
                    m["ensemble_pck_limbs"],
                    m["ensemble_pck_all"],
                    "" if gap is None else f"{gap:.2f}",
                    "",
                    "(same run)",
                    r["iterations"],
                    m["collapse"] or "no",
                ]
            )
    chart = out.parent / "images" / f"ssl_{profile}.png"
    plot_ssl(table, sup_n, sup_all, chart, profile)
    body = (
        f"Command: `poseloop bench ssl --profile {profile}` · commit `{git_commit()}` · {machine_description()}\n\n"
        "LSP validation PCK@0.2 (limbs = 12 joints; all = 14), best checkpoint on validation. Gap closure = "
        "(method − supervised_N)/(supervised_all − supervised_N); every method row warm-starts from the "
        "supervised_N init row and trains the same number of further iterations (1:1 labeled:unlabeled).\n\n"
        "Δ = PCK limbs minus the supervised row on the same 200 persons, with a 95% paired-bootstrap interval "
        "over persons (2,000 resamples): an interval that contains 0 is not a measured difference. Train min = "
        "training time summed over resumed segments (a paused row's resume call times only its last part).\n\n"
        + markdown_table(
            [
                "method",
                "PCK limbs",
                "PCK all",
                "gap closure",
                "Δ vs supervised_N [95% CI]",
                "train min",
                "iters",
                "collapse",
            ],
            table,
        )
        + f"\n\nRaw results: `{results_dir / f'ssl_{profile}.json'}`. "
        f"Chart: ![LSP-SSL {profile}]({chart.relative_to(out.parent)})"
    )
    notes = results_dir / f"ssl_{profile}_notes.md"  # hand-written findings survive the section's regeneration
    if notes.exists():
        body += "\n\n" + notes.read_text().strip()
    replace_section(out, f"LSP-SSL benchmark ({profile})", body)


def plot_ssl(table: list[list], sup_n: float | None, sup_all: float | None, path: Path, profile: str) -> None:
    """Bar chart of PCK limbs per row, with the supervised_N and supervised-all levels as reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in table if r[0] not in ("supervised_N init",)]
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=120)
    colors = ["tab:gray" if "supervised" in r[0] else "tab:orange" if "ensemble" in r[0] else "tab:blue" for r in rows]
    ax.barh([r[0] for r in rows], [r[1] for r in rows], color=colors)
    for value, label, style in ((sup_n, "supervised_N", "--"), (sup_all, "all labels", ":")):
        if value is not None:
            ax.axvline(value, color="k", linestyle=style, linewidth=1, label=f"{label} {value:.1f}")
    ax.set_xlabel("LSP val PCK@0.2, limbs")
    ax.set_title(f"LSP-SSL benchmark ({profile})")
    ax.invert_yaxis()
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
