"""How the ops commands (poseloop.ops_cli) show API answers: rich tables for people, JSON for scripts."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from serving.ops_types import AuditEvent, Job, ModelList, PinState, SwapResult

if TYPE_CHECKING:
    from poseloop.client import PoseLoopClient


def console() -> Console:
    """Stdout console without markup (API text is shown as is); a pipe or a file gets 120 columns, not 80."""
    return Console(highlight=False, markup=False, width=None if sys.stdout.isatty() else 120)


def to_jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    if isinstance(value, list):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    return value


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(to_jsonable(value), indent=2, allow_nan=False, default=str) + "\n")


def number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def short_time(iso: str | None) -> str:
    """2026-01-02T03:04:05.678+00:00 → 2026-01-02 03:04:05 (UTC, as the API stores it)."""
    return "-" if not iso else iso.replace("T", " ")[:19]


def clip(text: str | None, width: int = 60) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def size(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def key_values(rows: list[tuple[str, str]]) -> None:
    """Aligned `key  value` lines (no table padding after the values)."""
    width = max(len(k) for k, _ in rows)
    out = console()
    for key, value in rows:
        out.print(f"{key:<{width}}  {value}")


def pin_line(pinned: Any) -> str:
    if not pinned:
        return "automatic promotion on"
    reason = f" ({pinned.reason})" if pinned.reason else ""
    return f"pinned by {pinned.actor}{reason} since {short_time(pinned.since)}: automatic promotion frozen"


def models_table(listing: ModelList) -> None:
    out = console()
    out.print(
        f"active {listing.active or '-'} · previous {listing.previous_active or '-'} · "
        f"serving {listing.serving or '-'} · {pin_line(listing.pinned)}"
    )
    table = Table("version", "status", "parent", "created", "metrics", "size", "loaded", "reason")
    for v in listing.versions:
        marker = " *" if v.version == listing.serving else ""
        metrics = ", ".join(f"{k}={number(x)}" for k, x in list(v.metrics.items())[:3] if not isinstance(x, dict))
        table.add_row(
            v.version + marker,
            v.status,
            v.parent or "-",
            short_time(v.created),
            metrics or "-",
            size(v.size_bytes) if v.on_disk else "pruned",
            "yes" if v.loaded else "no",
            clip(v.reason, 50),
        )
    out.print(table)
    out.print("* = serving")


def _progress(job: Job) -> str:
    p = job.progress
    if "percent" in p:
        eta = f", eta {p['eta_s']:.0f} s" if isinstance(p.get("eta_s"), (int, float)) else ""
        return f"{p['percent']}% ({p.get('step')}/{p.get('total_steps')}){eta}"
    return str(p.get("stage", "-"))


def _gate(job: Job) -> dict[str, Any]:
    gate = job.result.get("gate")
    return gate if isinstance(gate, dict) else {}


def jobs_table(jobs: list[Job]) -> None:
    table = Table("id", "state", "kind", "progress", "gate", "created", "by")
    for job in jobs:
        gate = _gate(job)
        decision = f"{gate.get('decision')} {gate.get('candidate') or ''}".strip() if gate else "-"
        state = job.state + (" (cancelling)" if job.cancel_requested and job.state == "running" else "")
        table.add_row(job.id, state, job.kind, _progress(job), decision, short_time(job.created), job.requested_by)
    out = console()
    out.print(table if jobs else "no jobs")


def job_detail(job: Job) -> None:
    out = console()
    rows = [
        ("job", f"{job.id} ({job.kind}, model {job.model})"),
        ("state", job.state + (", cancel requested" if job.cancel_requested else "")),
        ("requested", f"{short_time(job.created)} by {job.requested_by}"),
        ("started", short_time(job.started)),
        ("finished", short_time(job.finished)),
        ("attempts", str(job.attempts)),
        ("params", json.dumps(job.params) if job.params else "-"),
        ("progress", _progress(job)),
    ]
    losses = {k: v for k, v in job.progress.items() if k.startswith("loss") or k in ("mean_peak", "agreement")}
    if losses:
        rows.append(("losses", ", ".join(f"{k}={number(v)}" for k, v in losses.items())))
    gate = _gate(job)
    if gate:
        interval = f"[{number(gate.get('ci_low'))}, {number(gate.get('ci_high'))}]"
        rows += [
            ("gate", f"{gate.get('decision')}: {gate.get('reason')}"),
            (
                "evidence",
                f"{gate.get('metric')} candidate {gate.get('candidate')} = {number(gate.get('candidate_value'))} vs "
                f"active {gate.get('parent')} = {number(gate.get('active_value'))}; gain {number(gate.get('gain'))}"
                f", 95% CI {interval}, margin {number(gate.get('margin'))}",
            ),
        ]
    if job.error:
        rows.append(("error", job.error))
    key_values(rows)
    if job.logs_tail:
        out.print("log tail:")
        for line in job.logs_tail:
            out.print("  " + line)


def events_table(events: list[AuditEvent]) -> None:
    table = Table("time", "actor", "action", "version", "from → to", "reason")
    for e in events:
        change = f"{e.from_ or '-'} → {e.to or '-'}" if (e.from_ or e.to) else "-"
        table.add_row(short_time(e.ts), e.actor, e.action, e.version, change, clip(e.reason, 70))
    out = console()
    out.print(table if events else "no events")


def swap_line(result: SwapResult) -> str:
    t = result.timing_ms
    verb = "rolled back" if result.action == "rollback" else "promoted"
    return (
        f"{verb}: serving {result.active} (was {result.previous or '-'}); "
        f"load {t.load:.0f} ms, switch {t.flip:.2f} ms, total {t.total:.0f} ms"
    )


def pin_state_line(state: PinState) -> str:
    return f"active {state.active or '-'}: {pin_line(state.pinned)}"


def collect_status(api: PoseLoopClient) -> dict[str, Any]:
    """What `poseloop status` shows. Without a token: health and readiness; parts the token's roles do not
    cover are None with a note (a wrong token still fails: AuthenticationError)."""
    from poseloop.client import PermissionDenied, client_version

    ready = api.ready()
    doc: dict[str, Any] = {
        "url": api.url,
        "client_version": client_version(),
        "health": api.health().get("status"),
        "ready": {"ready": ready.ready, "version": ready.version, "detail": ready.detail},
        "models": None,
        "jobs": None,
        "pool": None,
        "notes": [],
    }
    if not api.has_token:
        doc["notes"].append("no token: versions, jobs and the pool need one (--token or POSELOOP_TOKEN)")
        return doc
    doc["models"] = api.models()
    try:
        doc["jobs"] = {state: len(api.jobs(1000, state)) for state in ("running", "queued")}
    except PermissionDenied:
        doc["notes"].append("jobs: this token lacks the ops role")
    try:
        doc["pool"] = api.unlabeled_stats()
    except PermissionDenied:
        doc["notes"].append("pool: this token lacks the upload or ops role")
    return doc


def show_status(doc: dict[str, Any]) -> None:
    ready = doc["ready"]
    rows = [
        ("api", f"{doc['url']} — health {doc['health']}"),
        ("ready", f"yes, serving {ready['version']}" if ready["ready"] else f"NO: {ready['detail']}"),
    ]
    listing: ModelList | None = doc["models"]
    if listing is not None:
        states: dict[str, int] = {}
        for v in listing.versions:
            states[v.status] = states.get(v.status, 0) + 1
        counts = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
        rows += [
            (
                "models",
                f"active {listing.active or '-'}, previous {listing.previous_active or '-'} ({counts or 'none'})",
            ),
            ("promotion", pin_line(listing.pinned)),
        ]
    if doc["jobs"] is not None:
        rows.append(("jobs", f"{doc['jobs']['running']} running, {doc['jobs']['queued']} queued"))
    pool = doc["pool"]
    if pool is not None:
        rows.append(
            (
                "pool",
                f"{pool.get('total')} images, {pool.get('new_since_active')} new since the active model, "
                f"{pool.get('rejected')} rejected",
            )
        )
    key_values(rows)
    for note in doc["notes"]:
        console().print(f"note: {note}")
