"""`poseloop bench retrain`: one real retrain job of the continual loop, measured end to end.

The bundled model (artifacts/lsp14-mbv2-128x96/v1) is installed in a fresh registry, the first `uploads` LSPET
images are uploaded with their person boxes (as a client would), and one retrain job runs in this process through
the same code path as the worker (continual.runner.work_once) with the configured default recipe. The section
reports what an operator sees: the gate's decision with both figures and the paired-bootstrap interval on the
gate split (the bundled model's validation split, LSP im0801–1000, which nothing in the job chose on), the
pseudo-label counts and calibration, and how long each stage took.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from poseloop.bench.doc import git_commit, machine_description, replace_section

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "artifacts" / "lsp14-mbv2-128x96" / "v1"
SECTION = "Continual loop: one default retrain of the bundled model"


def upload_lspet(store, data_root: Path, count: int) -> int:
    """The first `count` LSPET images with their boxes, as uploads; returns how many were stored."""
    boxes = json.loads((data_root / "lspet" / "boxes.json").read_text())["boxes"]
    images = sorted((data_root / "lspet" / "images").glob("*.jpg"))[:count]
    for path in images:
        store.add(path.read_bytes(), path.name, [boxes[path.name]], "bench", "bench")
    return len(images)


def run_retrain_bench(
    work_dir: Path, uploads: int, iterations: int | None, settings_overrides: dict[str, Any]
) -> dict[str, Any]:
    """Run one job in `work_dir` (a finished job there is reported again, not rerun); returns its record."""
    from continual.queue import JobQueue
    from continual.runner import context, work_once
    from continual.settings import load_settings
    from continual.uploads import UploadStore
    from models.registry import ModelRegistry
    from training.datasets import default_data_root

    settings = load_settings(
        registry_dir=work_dir / "registry", data_dir=work_dir / "data", dev=True, **settings_overrides
    )
    registry = ModelRegistry(settings.registry.dir)
    if registry.active() is None:
        info = registry.register(BUNDLED / "model.onnx", checkpoint_path=BUNDLED / "checkpoint.pt", actor="bench")
        registry.set_active(info.version, "bench")
    store = UploadStore(settings.loop.data_dir / "uploads")
    if store.max_seq() == 0:
        upload_lspet(store, default_data_root(), uploads)
    queue = JobQueue(settings)
    params: dict[str, Any] = {} if iterations is None else {"iterations": iterations}
    job, _ = queue.submit_retrain(params, "bench", idempotency_key=f"bench-{uploads}-{iterations}")
    t0 = time.time()
    ctx = context(settings, "bench")
    while (current := queue.jobs.get(job.id)) is not None and current.state in ("queued", "running"):
        work_once(ctx, job.id)
    done = queue.jobs.get(job.id)
    assert done is not None
    return {
        "job": done.id,
        "state": done.state,
        "error": done.error,
        "wall_minutes": round((time.time() - t0) / 60, 1),
        "uploads": uploads,
        "recipe": settings.retrain.recipe,
        "teacher": _teacher_name(settings.retrain.teacher) if settings.retrain.recipe == "distill" else None,
        "result": done.result,
        "log": queue.jobs.logs(done.id)[-40:],
    }


def _teacher_name(teacher: str) -> str:
    """`self`, or the teacher file as <its folder>/<file> (artifacts/teachers/movenet-thunder/model.onnx →
    movenet-thunder/model.onnx): enough to name it, no absolute server path."""
    path = Path(teacher)
    return teacher if teacher == "self" else f"{path.parent.name}/{path.name}"


def write_section(record: dict[str, Any], out: Path, command: str) -> None:
    result = record["result"] or {}
    gate, labels, training = result.get("gate") or {}, result.get("pseudo_labels") or {}, result.get("training") or {}
    lines = [
        f"Command: `{command}` · {machine_description()} · commit {git_commit()} · {time.strftime('%Y-%m-%d')}.",
        "",
        f"The bundled model ({BUNDLED.relative_to(REPO)}) in a fresh registry; the first {record['uploads']} "
        "LSPET images uploaded with their boxes; one retrain job with the default settings "
        f"(recipe `{record['recipe']}`" + (f", teacher `{record['teacher']}`" if record["teacher"] else "") + ") "
        "through the worker's code path (`continual.runner.work_once`).",
        "",
        f"- Job state: **{record['state']}**"
        + (f" — {record['error']}" if record["error"] else "")
        + f"; {record['wall_minutes']} min wall on this box.",
    ]
    if labels:
        counts, cal = labels["counts"], labels["calibration"] or {}
        lines.append(
            f"- Pseudo-labels: {counts['persons_kept']} of {counts['persons']} persons kept, "
            f"{counts['joints_kept']} joints; thresholds {labels['thresholds']} calibrated on "
            f"{cal.get('dev_records')} labeled training records for precision {cal.get('target')} "
            f"(achieved {cal.get('precision', 0):.3f})."
        )
    if training:
        lines.append(f"- Training: {training['steps']} steps from the active checkpoint.")
    if gate:
        lines.append(
            f"- Gate ({gate['metric']} on {gate['persons']} persons of the gate split): candidate "
            f"**{gate['candidate_value']:.2f}** vs active {gate['active_value']:.2f}, gain "
            f"**{gate['gain']:+.2f} [{gate['ci_low']:+.2f}, {gate['ci_high']:+.2f}]** (95% paired bootstrap); "
            f"margin {gate['margin']} → **{gate['decision']}** ({gate['reason']})."
        )
    lines += ["", "Raw record: docs/results/retrain.json."]
    replace_section(out, SECTION, "\n".join(lines) + "\n")
