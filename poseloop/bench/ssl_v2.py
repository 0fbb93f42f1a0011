"""`poseloop bench ssl-v2`: the LSP semi-supervised benchmark, protocol v2 (docs/results/ssl_v2.json).

Protocol (configs/ssl_v2/base.yaml, `data.lsp_protocol: v2`): labeled = first N of LSP im0001–0400, unlabeled =
the 5,000 LSPET crops, batches 1:1; validation = dev im0701–0800, the only split anything is chosen on (the
reported checkpoint is best.pt, the best dev PCK limbs, and its step is recorded); report = im0401–0700 +
im0801–1000 (500 persons), scored once per run and never used to choose. Every row starts from ImageNet weights
(no warm start) and trains the profile's schedule: the same steps and LR schedule for every row.

Rows (`v2_rows`): for N ∈ {100, 200, 400}, supervised at seeds 0 and 1 (so seed variance is visible next to the
method deltas) and posecons, posedual, dsph, trs, akm at seed 0, plus the ablation VARIANTS and, at seed 1, the
SEED_REPEATS; `include_distill` adds, per N, the distill rows to what a call may run (DISTILL_KINDS:
self-distillation, MoveNet as an external teacher, MoveNet with the labels half of the train split, and the
ensemble of both supervised seeds with the same 1:1 share;
`poseloop.distill.run_distillation`, imported only when such a row runs), and at seed 1 the DISTILL_SEED_REPEATS;
the docs table always shows every row. The
"all labels" reference for gap closure is supervised at N = 400, seed 0: under v2 the 400 labeled images are all
there are, so it is that row itself (one run), and gap closure is undefined (null) for N = 400 rows. Δ = report PCK
limbs minus supervised at the same N, seed 0, with a 95% paired-bootstrap interval over the 500 report persons;
a row trained at seeds 0 and 1 also gets the two-seed comparison (its per-person seed mean against supervised's),
as a one-seed interval resamples persons, not seeds.

Budget of the "v2" profile. Step costs in units of one supervised step at batch 32, from v1's one-thread
measurements (poseloop/bench/ssl.py, PROFILES: supervised 1.1 s, posecons 2.3, trs 2.3, akm 3.3, posedual 4.1,
dsph 7.2): supervised 1, posecons 2.1, trs 2.1, akm 3.0, posedual 3.7, dsph 6.5. Per N: 2 supervised seeds 2.0 +
2.1 + 2.1 + 3.0 + 3.7 + 6.5 = 19.4 units; × 3 values of N = 58.2 units per step of the table. At the measured
0.44 s per supervised step (batch 32, idle box) that is 25.6 s per table step, so
- 1,500 steps: 58.2 × 1,500 × 0.44 s = 38,400 s ≈ 10.7 core-hours of training. Evaluation adds under 0.2 (per row
  6 dev validations of 100 persons and one report pass of 500, forward only, flip test). v1's rows took 1.5× their
  estimate in training time on the shared box (7.5 → 11.3 h), so expect ≈ 16 core-hours, ≈ 8 h of wall clock as
  two one-thread bench processes split by method (`--only-method`).
- 2,000 steps would be 14.2 core-hours idle, ≈ 21 shared: over the ~15-hour budget once the box is shared.
Chosen: 1,500 steps; LR warm-up 100 steps, ×0.1 at 70% and 90% (steps 1,050 and 1,350); dev validation and a
checkpoint every 250 steps. Caveat: if the 0.44 s was the wall time of a two-thread process (both cores), a unit
is 0.88 core-seconds and these figures double (v1 measured 1.1 s/step on one thread); time 50 steps first.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any, TypedDict

from poseloop.bench.doc import git_commit, machine_description, markdown_table, replace_section
from poseloop.bench.runs import BenchRow, RowNotRun, load_results, run_cached, train_time_s, update_results
from training.config import TrainConfig, load_config
from training.evaluation import paired_bootstrap_delta

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "ssl_v2"
SSL_METHODS = ("posecons", "posedual", "dsph", "trs", "akm")
METHODS = ("supervised", *SSL_METHODS)
# Ablation rows: a seed method's preset with one change that tests a measured diagnosis, run at the N where it was
# diagnosed, and at the next N once it wins on dev there (configs/ssl_v2/<name>.yaml; its method is the seed method).
VARIANTS: dict[str, tuple[int, ...]] = {
    "supervised_aux": (100, 200, 400),  # HEADS_CONTROL
    "posecons_rampup": (100, 200, 400),
    "posecons_rampup_ema": (100,),
    "posecons_rampup_ema_gated": (100,),
    "posecons_rampup_ema_kmix": (100,),
    "trs_rampup": (100, 200, 400),
    "posedual_rampup": (100,),
    "dsph_rampup": (100,),
    "akm_rampup": (100,),
    "akm_rampup_gated": (100,),
    "akm_rampup_gated_nomix": (100,),
}
# Supervised on trs's network (auxiliary heads, configs/ssl_v2/supervised_aux.yaml): the reference of the table's
# same-network two-seed column for every row whose network has auxiliary heads
HEADS_CONTROL = "supervised_aux"
# Rows whose interval excludes 0, and the heads control, trained again at seed 1 (N per row), so their gain stands
# next to what a seed alone moves (supervised has seeds 0 and 1 at every N); Δ stays against supervised seed 0.
SEED_REPEATS: dict[str, tuple[int, ...]] = {
    "posecons_rampup": (100,),
    "trs_rampup": (100, 200, 400),
    "supervised_aux": (100, 200, 400),  # trs_rampup's two-seed gain is checked against this control's two seeds
}
DISTILL = "distill"
# An external-teacher distill row: the same student recipe, labels from MoveNet Thunder (COCO-17, mapped to LSP's
# limbs by joint name; converted by tools/convert). It is not a seed method: the teacher learned from COCO's labels,
# so the table shows it apart, as what a team with an accurate slow model gets.
DISTILL_EXTERNAL = "distill_movenet"
EXTERNAL_TEACHER = Path(__file__).resolve().parents[2] / "artifacts" / "teachers" / "movenet-thunder" / "model.onnx"
# The same external teacher with labeled crops half of each batch (data.pseudo_share 0.5), the 1:1 labeled:unlabeled
# ratio every seed method's batches have. In distill_movenet the N labeled crops are 2–8 % of the train split.
DISTILL_EXTERNAL_1TO1 = "distill_movenet_1to1"
# Self-distillation whose teacher transfers better: the flip × 3-scale TTA ensemble of both supervised seeds at the same
# N (it uses no label the row lacks), with the 1:1 labeled share. The one-member self teacher (DISTILL) kept 94 of
# 5,000 pool persons at its dev-calibrated thresholds; member agreement is the spread an ensemble adds to TTA's.
DISTILL_ENSEMBLE_1TO1 = "distill_ensemble_1to1"
DISTILL_KINDS = (DISTILL, DISTILL_EXTERNAL, DISTILL_EXTERNAL_1TO1, DISTILL_ENSEMBLE_1TO1)
# The supervised seeds (at the row's N) whose best.pt files teach a self-distill kind
TEACHER_SEEDS: dict[str, tuple[int, ...]] = {DISTILL: (0,), DISTILL_ENSEMBLE_1TO1: (0, 1)}
EXTERNAL_KINDS = (DISTILL_EXTERNAL, DISTILL_EXTERNAL_1TO1)
# Distill rows trained again at seed 1, as SEED_REPEATS does for seed methods (the pseudo-label cache is keyed by
# teacher, filter and pool, not by the student's seed, so a repeat only retrains the student)
DISTILL_SEED_REPEATS: dict[str, tuple[int, ...]] = {DISTILL_EXTERNAL_1TO1: (100, 200, 400)}
# configs/ssl_v2/<file>.yaml of each distill kind
DISTILL_CONFIG = {
    DISTILL: "distill",
    DISTILL_EXTERNAL: "distill",
    DISTILL_EXTERNAL_1TO1: "distill_1to1",
    DISTILL_ENSEMBLE_1TO1: "distill_1to1",
}
# How a distill row calls run_distillation: the teacher is this table's supervised row(s) at the same N, at the
# TEACHER_SEEDS of its kind (their best.pt), or MoveNet; one round; the student trains the row's config (ImageNet
# init, the profile's schedule).
DISTILL_ROUNDS = 1
# Kept joints must be right (PCK@0.2) this often on dev; the threshold that achieves it is calibrated on dev. Per
# teacher kind, chosen on dev: MoveNet reaches 0.9 keeping 95% of joints; the N = 100 seed teacher (40 report PCK)
# reaches 0.9 only at score ≥ 0.97, keeping 2.4% of dev joints and no person with 6 of them, while 0.7 keeps 42% of
# joints and 51% of persons on dev — but 2% of LSPET pool persons, whose scores the teacher puts far lower (the
# sweep and the shift are in docs/results/ssl_v2_notes.md).
DISTILL_PRECISION: dict[str, float] = {
    DISTILL: 0.7,
    DISTILL_EXTERNAL: 0.9,
    DISTILL_EXTERNAL_1TO1: 0.9,
    DISTILL_ENSEMBLE_1TO1: 0.7,  # the self teacher's choice, not re-tuned
}
CHECKPOINT = "best.pt (best dev PCK limbs)"
# Pseudo-label caches of every distill row, under the rows' output_dir: the MoveNet rows at each N (and 1:1) share
# one teacher, filter, pool and dev split, hence one cache, so the pool is labelled once, not once per row.
SHARED_PSEUDO_LABELS = "pseudo_labels"


class Profile(TypedDict):
    """A bench budget: the schedule every row trains, the label budgets, the supervised seeds, config overrides."""

    iterations: int
    val_every: int  # dev validation (and a resumable checkpoint) every this many steps, and at the last step
    warmup_iterations: int  # linear LR warm-up
    milestones: list[float]  # fractions of `iterations` where the LR is multiplied by 0.1
    labels: list[int]  # N values
    reference_labels: int  # the "all labels" supervised row for gap closure (one of `labels`)
    supervised_seeds: list[int]
    overrides: list[str]  # on top of configs/ssl_v2/<method>.yaml


PROFILES: dict[str, Profile] = {
    # the arithmetic is in the module docstring; configs/ssl_v2/base.yaml holds the same schedule
    "v2": {
        "iterations": 1500,
        "val_every": 250,
        "warmup_iterations": 100,
        "milestones": [0.7, 0.9],
        "labels": [100, 200, 400],
        "reference_labels": 400,
        "supervised_seeds": [0, 1],
        "overrides": [],
    },
    "v2-quick": {  # a smoke run through the real engine and data, for the test
        "iterations": 2,
        "val_every": 1000,
        "warmup_iterations": 1,
        "milestones": [0.7, 0.9],
        "labels": [8, 16],
        "reference_labels": 16,
        "supervised_seeds": [0, 1],
        "overrides": [
            "data.input_h=64",
            "data.input_w=48",
            "data.unlabeled_limit=16",
            "optim.batch_size=4",
            "schedule.log_every=1",
            "eval.flip_test=false",
            "model.pretrained=false",
        ],
    },
}


def schedule_overrides(p: Profile) -> list[str]:
    return [
        f"optim.iterations={p['iterations']}",
        f"optim.warmup_iterations={p['warmup_iterations']}",
        f"optim.milestones={p['milestones']}",
        f"schedule.val_every={p['val_every']}",
        f"schedule.checkpoint_every={p['val_every']}",
    ]


def _row(kind: str, method: str, labels: int, seed: int, profile: str, results_dir: Path) -> BenchRow:
    p = PROFILES[profile]
    overrides = [
        f"output_dir={results_dir / 'runs'}",
        f"name=ssl_{profile}_{method}_n{labels}_s{seed}",
        f"seed={seed}",
        f"data.label_budget={labels}",
        *schedule_overrides(p),
        *p["overrides"],
    ]
    config = load_config(CONFIGS / f"{DISTILL_CONFIG.get(method, method)}.yaml", overrides)
    info = {"kind": kind, "method": method, "labels": labels, "seed": seed}
    return BenchRow(f"{method} N={labels} seed {seed}", config, info)


def v2_rows(profile: str, results_dir: Path, include_distill: bool = False) -> list[BenchRow]:
    """Every row of the table, supervised first (they are the references of every Δ), then by N."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {sorted(PROFILES)}")
    p = PROFILES[profile]
    rows = [
        _row("train", "supervised", n, seed, profile, results_dir)
        for n in p["labels"]
        for seed in p["supervised_seeds"]
    ]
    rows += [_row("train", m, n, 0, profile, results_dir) for n in p["labels"] for m in SSL_METHODS]
    rows += [_row("train", v, n, 0, profile, results_dir) for v, ns in VARIANTS.items() for n in ns if n in p["labels"]]
    rows += _seed_one_rows(SEED_REPEATS, profile, results_dir, kind="train")
    if include_distill:
        rows += [_row(m, m, n, 0, profile, results_dir) for n in p["labels"] for m in DISTILL_KINDS]
        rows += _seed_one_rows(DISTILL_SEED_REPEATS, profile, results_dir)
    return rows


def _seed_one_rows(
    repeats: dict[str, tuple[int, ...]], profile: str, results_dir: Path, kind: str | None = None
) -> list[BenchRow]:
    """The seed-1 repeats of `repeats` (method → N values) the profile has; a row's kind is `kind`, or its method
    (distill rows are their own kind)."""
    labels = PROFILES[profile]["labels"]
    return [_row(kind or m, m, n, 1, profile, results_dir) for m, ns in repeats.items() for n in ns if n in labels]


def select_rows(
    rows: list[BenchRow],
    only_methods: list[str] | None,
    only_labels: list[int] | None,
    only_seeds: list[int] | None = None,
) -> list[BenchRow]:
    """`--only-method` / `--only-labels` / `--only-seed`; a name, N or seed the table does not have is an error,
    not an empty run."""
    methods = {r.info["method"] for r in rows}
    labels = {r.info["labels"] for r in rows}
    unknown = [m for m in only_methods or [] if m not in methods]
    if unknown:
        hint = " (distill rows need include_distill)" if set(DISTILL_KINDS) & set(unknown) else ""
        raise ValueError(f"no rows for method(s) {unknown}{hint}; the table has {sorted(methods)}")
    if bad := [n for n in only_labels or [] if n not in labels]:
        raise ValueError(f"no rows for N = {bad}; the table has N = {sorted(labels)}")
    seeds = {r.info["seed"] for r in rows}
    if bad_seeds := [s for s in only_seeds or [] if s not in seeds]:
        raise ValueError(f"no rows for seed(s) {bad_seeds}; the table has seeds {sorted(seeds)}")
    return [
        r
        for r in rows
        if (not only_methods or r.info["method"] in only_methods)
        and (not only_labels or r.info["labels"] in only_labels)
        and (not only_seeds or r.info["seed"] in only_seeds)
    ]


# ---------------------------------------------------------------------- running and scoring a row
def run_distill_row(config: TrainConfig, teacher: list[Path], precision: float) -> Path:
    """A distill row: `poseloop.distill.run_distillation`, imported only now (by name, as it is optional), run
    into the row's run directory; returns the final round's best.pt. RowNotRun when it cannot run here."""
    try:
        run_distillation = importlib.import_module("poseloop.distill").run_distillation
    except (ImportError, AttributeError) as exc:
        raise RowNotRun(f"poseloop.distill.run_distillation is not importable: {exc}") from None
    if missing := [str(t) for t in teacher if not t.exists()]:
        raise RowNotRun(f"its teacher {missing} is not trained yet (run the supervised rows first)")
    import torch

    result: Any = run_distillation(
        config,
        teacher,
        DISTILL_ROUNDS,
        config.run_dir,
        precision=precision,
        threads=torch.get_num_threads(),
        cache_root=Path(config.output_dir) / SHARED_PSEUDO_LABELS,
    )
    if isinstance(result, list | tuple):  # one result per round
        result = result[-1]
    return Path(getattr(result, "best_checkpoint", result))


def run_row(row: BenchRow, teachers: dict[tuple[int, int], Path]) -> dict:
    """Train (or resume) one row and score its best-on-dev checkpoint on the report split. teachers: (N, seed) →
    the supervised row's best.pt a self-distill row at that N starts its labelling from (TEACHER_SEEDS)."""
    t0 = time.time()
    kind, cfg = row.info["kind"], row.config
    print(f"[bench] {row.label}: {kind} {cfg.name} ({cfg.optim.iterations} steps)", flush=True)
    stopped = None
    if kind in TEACHER_SEEDS:
        members = [teachers[(row.info["labels"], seed)] for seed in TEACHER_SEEDS[kind]]
        best = run_distill_row(cfg, members, DISTILL_PRECISION[kind])
    elif kind in EXTERNAL_KINDS:
        best = run_distill_row(cfg, [EXTERNAL_TEACHER], DISTILL_PRECISION[kind])
    else:
        from training.engine import Trainer

        result = Trainer(cfg).fit(resume=True)
        best, stopped = result.run_dir / "best.pt", result.stopped_reason
    step, metrics = score_checkpoint(best)
    segments = sorted(cfg.run_dir.rglob("metrics.jsonl"))  # a distill row: one run per round
    return {
        "label": row.label,
        **row.info,
        "run": cfg.name,
        "config_hash": cfg.config_hash(),
        "iterations": cfg.optim.iterations,
        "checkpoint": CHECKPOINT,
        **({"distill_precision": DISTILL_PRECISION[kind]} if kind in DISTILL_KINDS else {}),
        "step": step,
        "stopped": stopped,
        "train_minutes": round(sum(train_time_s(s.parent) for s in segments) / 60, 1),
        "wall_minutes": round((time.time() - t0) / 60, 1),
        # the box that finished the row: step costs differ ~2x between this project's CPU boxes (AMX Xeon vs
        # AVX2-only EPYC), so a row's minutes are read against its machine
        "machine": machine_description(),
        "metrics": metrics,
        "status": "done",
    }


def score_checkpoint(best: Path) -> tuple[int | None, dict]:
    """(step, metrics) of a best.pt: report-split PCK and per-person limb counts (the bootstrap's input), the dev
    figure it was selected on, the collapse reason (the run's UNPROMOTABLE marker) — or no scores when the run
    stopped before its first validation."""
    import torch

    from training.checkpoints import evaluate_checkpoint

    marker = best.parent / "UNPROMOTABLE"
    metrics: dict[str, Any] = {"pck_limbs": None, "collapse": marker.read_text().strip() if marker.exists() else None}
    metrics.update(delta=None, ci_low=None, ci_high=None, gap_closure=None)
    if not best.exists():
        return None, metrics
    state = torch.load(best, map_location="cpu", weights_only=True)
    report = evaluate_checkpoint(best, split="report", per_person=True)
    metrics.update(
        pck_limbs=report["pck_limbs"],
        pck_all=report["pck_all"],
        report_persons=report["persons"],
        dev_pck_limbs=state["metrics"]["pck_limbs"],
        dev_ensemble_pck_limbs=state["metrics"].get("ensemble/pck_limbs"),
        per_person=report["per_person"],
    )
    return int(state["step"]), metrics


# ---------------------------------------------------------------------- comparisons between rows
def gap_closure(value: float, sup_n: float, sup_all: float) -> float | None:
    return (value - sup_n) / (sup_all - sup_n) if sup_all != sup_n else None


def add_comparisons(results: dict, rows: list[BenchRow], reference_labels: int) -> None:
    """Fill Δ, its interval, gap closure and the two-seed comparison of every finished current row (in place) from
    the per-person counts:
    a row's reference may finish after it, so this runs after every row and at the end (deterministic: the
    bootstrap is seeded)."""
    current = {r.config.config_hash() for r in rows}
    done = {k: v for k, v in results.items() if k in current and v.get("done")}
    cells = {(v["method"], v["labels"], v["seed"]): (k, v["metrics"]) for k, v in done.items()}
    for record in done.values():
        m = record["metrics"]
        ref_key, ref = cells.get(("supervised", record["labels"], 0), (None, None))
        _, top = cells.get(("supervised", reference_labels, 0), (None, None))
        m.update(delta=None, ci_low=None, ci_high=None, gap_closure=None, reference=ref_key)
        if m["pck_limbs"] is None or not ref or ref["pck_limbs"] is None:
            continue
        mine, theirs = m["per_person"], ref["per_person"]
        if mine["limbs_counted"] != theirs["limbs_counted"]:
            raise ValueError(f"{record['label']} and its reference were scored on different persons")
        delta, low, high = paired_bootstrap_delta(mine["limbs_correct"], theirs["limbs_correct"], mine["limbs_counted"])
        m.update(delta=delta, ci_low=low, ci_high=high)
        if top and top["pck_limbs"] is not None and record["labels"] != reference_labels:
            m["gap_closure"] = gap_closure(m["pck_limbs"], ref["pck_limbs"], top["pck_limbs"])
    # rows whose network has auxiliary heads (trs) are also compared with supervised on the same network: the heads
    # supervise the labeled crops too, so Δ vs plain supervised mixes their gain with the unlabeled pool's
    with_heads = {r.config.config_hash() for r in rows if r.config.model.aux_stages}
    for key, record in done.items():
        m = record["metrics"]
        m.update({f"{p}_{s}": None for p in ("two_seed", "matched_two_seed") for s in ("delta", "ci_low", "ci_high")})
        if record["method"] != "supervised":
            m.update(two_seed_comparison(cells, record["method"], record["labels"]))
        if key in with_heads and record["method"] != HEADS_CONTROL:
            matched = two_seed_comparison(cells, record["method"], record["labels"], reference=HEADS_CONTROL)
            m.update({f"matched_{k}": v for k, v in matched.items()})


def two_seed_comparison(cells: dict, method: str, labels: int, reference: str = "supervised") -> dict:
    """The row's mean over seeds 0 and 1 against the reference row's (supervised) mean over the same seeds, per
    person, with a paired bootstrap: one seed's Δ can be what the seed moves (posecons_rampup won at seed 0 and lost
    at seed 1), so a seed method's gain counts when this interval excludes 0. Empty until all four runs have report
    scores."""
    runs = [cells.get((name, labels, seed), (None, None))[1] for name in (method, reference) for seed in (0, 1)]
    if any(m is None or m["pck_limbs"] is None for m in runs):
        return {}
    counted = runs[0]["per_person"]["limbs_counted"]
    if any(m["per_person"]["limbs_counted"] != counted for m in runs):
        raise ValueError(f"{method} N={labels}: its seeds and {reference}'s were scored on different persons")
    correct = [m["per_person"]["limbs_correct"] for m in runs]
    mine, theirs = ([(a + b) / 2 for a, b in zip(s0, s1, strict=True)] for s0, s1 in (correct[:2], correct[2:]))
    delta, low, high = paired_bootstrap_delta(mine, theirs, counted)
    return {"two_seed_delta": delta, "two_seed_ci_low": low, "two_seed_ci_high": high}


def results_path(profile: str, results_dir: Path) -> Path:
    return results_dir / f"ssl_{profile}.json"


def run_ssl_v2_bench(
    profile: str,
    out: Path | None,
    results_dir: Path,
    only_methods: list[str] | None = None,
    only_labels: list[int] | None = None,
    include_distill: bool = False,
    only_seeds: list[int] | None = None,
) -> dict:
    """Run (or resume) the selected rows, refresh the comparisons, rewrite the docs section; returns the results of
    every current row, run by this call or an earlier one, by config hash (rows of superseded configs stay in the
    file, off the table)."""
    # the table, its chart and the comparisons always cover every row, distill included: `include_distill` only
    # widens which rows this call may run, so a refresh of one seed row never hides the distill results
    rows = v2_rows(profile, results_dir, include_distill=True)
    selected = select_rows(v2_rows(profile, results_dir, include_distill), only_methods, only_labels, only_seeds)
    path = results_path(profile, results_dir)
    reference = PROFILES[profile]["reference_labels"]

    def refresh() -> None:
        update_results(path, lambda results: add_comparisons(results, rows, reference))

    teachers = {
        (r.info["labels"], r.info["seed"]): r.config.run_dir / "best.pt"
        for r in rows
        if r.info["method"] == "supervised"
    }
    run_cached(selected, path, lambda row: run_row(row, teachers), after_row=refresh)
    refresh()
    current = {r.config.config_hash() for r in rows}
    results = {k: v for k, v in load_results(path).items() if k in current}
    if out is not None:
        write_section(results, rows, out, profile, results_dir)
    return results


# ---------------------------------------------------------------------- docs/benchmarks.md section and chart
def _table_rows(results: dict, rows: list[BenchRow]) -> list[tuple[BenchRow, dict | None]]:
    """(row, its record or None) for the table, by N then in row order (supervised seeds first)."""
    order = {m: i for i, m in enumerate((*METHODS, *VARIANTS, *DISTILL_KINDS))}
    ranked = sorted(rows, key=lambda r: (r.info["labels"], order[r.info["method"]], r.info["seed"]))
    return [(r, results.get(r.config.config_hash())) for r in ranked]


TABLE_HEADERS = (
    "N",
    "method",
    "seed",
    "PCK limbs (report)",
    "PCK all (report)",
    "Δ vs supervised_N seed 0 [95% CI]",
    "two-seed mean Δ [95% CI]",
    "two-seed Δ vs supervised_aux [95% CI]",
    "gap closure",
    "dev PCK limbs",
    "step",
    "train min",
    "collapse",
)


def _padded(first: list, last: list) -> list:
    """A row with blank cells between `first` and `last`, so every row has one cell per header."""
    return [*first, *[""] * (len(TABLE_HEADERS) - len(first) - len(last)), *last]


def _cells(row: BenchRow, record: dict | None) -> list:
    head = [row.info["labels"], row.info["method"], row.info["seed"]]
    if record is None or not record.get("done"):
        status = "pending" if record is None else f"not run: {record.get('reason', '')}"
        return _padded([*head, status], [])
    m = record["metrics"]
    if m["pck_limbs"] is None:
        return _padded([*head, "no checkpoint"], [record["train_minutes"], m["collapse"] or "no"])
    if m["delta"] is None:
        delta = "(reference pending)"
    elif m.get("reference") == record["config_hash"]:
        delta = "reference"
    else:
        delta = f"{m['delta']:+.1f} [{m['ci_low']:+.1f}, {m['ci_high']:+.1f}]"
    gap = "–" if m["gap_closure"] is None else f"{m['gap_closure']:.2f}"
    two_seed, matched = (_interval(m, prefix) for prefix in ("two_seed", "matched_two_seed"))
    return [
        *head,
        m["pck_limbs"],
        m["pck_all"],
        delta,
        two_seed,
        matched,
        gap,
        m["dev_pck_limbs"],
        record["step"],
        record["train_minutes"],
        m["collapse"] or "no",
    ]


def _interval(m: dict, prefix: str) -> str:
    if m.get(f"{prefix}_delta") is None:
        return "–"
    return f"{m[f'{prefix}_delta']:+.1f} [{m[f'{prefix}_ci_low']:+.1f}, {m[f'{prefix}_ci_high']:+.1f}]"


def write_section(results: dict, rows: list[BenchRow], out: Path, profile: str, results_dir: Path) -> None:
    p = PROFILES[profile]
    entries = _table_rows(results, rows)
    chart = out.parent / "images" / f"ssl_{profile}.png"
    plot_v2(entries, chart, profile)
    milestones = ", ".join(f"{int(f * p['iterations'])}" for f in p["milestones"])
    body = (
        f"Command: `poseloop bench ssl-v2 --profile {profile}` · commit `{git_commit()}` · {machine_description()}\n\n"
        "LSP protocol v2: labels = first N of im0001–0400, unlabeled = 5,000 LSPET crops (batches 1:1), dev = "
        "im0701–0800, report = im0401–0700 + im0801–1000 (500 persons). Every row starts from ImageNet weights "
        f"and trains {p['iterations']} steps (LR warm-up {p['warmup_iterations']} steps, ×0.1 at steps "
        f"{milestones}, dev validation every {p['val_every']}). Reported checkpoint: best.pt, the best dev PCK "
        "limbs (column *step*; *dev PCK limbs* is the figure it was chosen on); the report split is scored once "
        "per run and chooses nothing.\n\n"
        "PCK@0.2 (limbs = 12 joints; all = 14) on the report split. Δ = PCK limbs minus supervised at the same N, "
        "seed 0, on the same 500 persons, with a 95% paired-bootstrap interval (2,000 resamples): an interval "
        "that contains 0 is not a measured difference; the seed-1 supervised row shows what a seed alone moves. "
        "Two-seed mean Δ (rows trained at seeds 0 and 1) = the mean of the two seeds minus supervised's mean of "
        "the same two seeds, per person, with the same paired bootstrap: a seed method's gain counts when this "
        "interval excludes 0. Rows whose network has auxiliary heads (trs) are also compared, the same way, with "
        "supervised on that network (supervised_aux): the heads supervise the labeled crops too, so only this "
        "column isolates what the unlabeled pool adds. "
        f"Gap closure = (row − supervised_N)/(supervised_{p['reference_labels']} − supervised_N), seed 0; "
        f"supervised at N = {p['reference_labels']} uses all labeled images, so N = {p['reference_labels']} rows "
        "have none. Train min = training time summed over resumed segments.\n\n"
        + markdown_table(list(TABLE_HEADERS), [_cells(r, rec) for r, rec in entries])
        + f"\n\nRaw results (with per-person counts): `{results_path(profile, results_dir)}`. "
        f"Chart: ![LSP-SSL benchmark {profile}]({chart.relative_to(out.parent)})"
    )
    notes = results_dir / f"ssl_{profile}_notes.md"  # hand-written findings survive the section's regeneration
    if notes.exists():
        body += "\n\n" + notes.read_text().strip()
    replace_section(out, f"LSP-SSL benchmark {profile}", body)


def plot_v2(entries: list[tuple[BenchRow, dict | None]], path: Path, profile: str) -> None:
    """Grouped bars: report PCK limbs per method, one group per N; whiskers = the Δ's 95% interval placed on the
    supervised_N (seed 0) level, drawn as a dashed line, so a whisker crossing the line is no measured Δ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = list(dict.fromkeys(_series(r) for r, _ in entries))
    groups = sorted({r.info["labels"] for r, _ in entries})
    width = 0.8 / len(series)
    tab20 = plt.get_cmap("tab20")  # the default cycle has 10 colours, the table more series than that
    palette = [tab20(i) for i in range(tab20.N)]
    fig, ax = plt.subplots(figsize=(10, 4), dpi=120)
    text_at = ax.get_xaxis_transform()  # x in data, y in axes fractions
    for j, name in enumerate(series):
        for r, rec in entries:
            if _series(r) != name:
                continue
            x = groups.index(r.info["labels"]) - 0.4 + (j + 0.5) * width
            m = rec["metrics"] if rec and rec.get("done") else None
            if m is None or m["pck_limbs"] is None:
                status = "pending" if rec is None else "not run" if m is None else "no checkpoint"
                ax.text(x, 0.02, status, rotation=90, ha="center", va="bottom", fontsize=7, transform=text_at)
                continue
            err = None
            if m["delta"] is not None:
                base = m["pck_limbs"] - m["delta"]
                err = [[m["pck_limbs"] - (base + m["ci_low"])], [base + m["ci_high"] - m["pck_limbs"]]]
            ax.bar(x, m["pck_limbs"], width, color=palette[j % len(palette)], label=name, yerr=err, capsize=2)
    for i, n in enumerate(groups):
        ref = next((rec for r, rec in entries if _series(r) == "supervised s0" and r.info["labels"] == n), None)
        if ref and ref.get("done") and ref["metrics"]["pck_limbs"] is not None:
            ax.hlines(ref["metrics"]["pck_limbs"], i - 0.42, i + 0.42, colors="k", linestyles="--", linewidth=1)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_xticks(range(len(groups)), [f"N = {n}" for n in groups])
    ax.set_ylabel("PCK@0.2 limbs, report split")
    ax.set_title(f"LSP-SSL benchmark {profile} (whiskers: 95% CI of Δ vs supervised_N seed 0, dashed)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _series(row: BenchRow) -> str:
    method = row.info["method"]
    return f"{method} s{row.info['seed']}" if method == "supervised" or row.info["seed"] else method
