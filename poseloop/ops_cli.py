"""The loop's operations from a terminal, over the HTTP API (poseloop.client): `poseloop models | jobs | job ID |
cancel ID | retrain | promote V | rollback [V] | pin [V] | unpin | events | status | version`, and `--version`.

Where: --url or POSELOOP_URL (default http://127.0.0.1:8080). Who: --token or POSELOOP_TOKEN; for a local API
without either, the ops token that `poseloop up` wrote to $POSELOOP_DATA_DIR/dev-tokens.json (runs/data). Output:
tables for people, --json (the API's answer) for scripts. A failure is one line on stderr and an exit code
(ExitCode); a traceback only for a bug.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from poseloop.client import ClientError, PoseLoopClient


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1  # anything else: a server error (5xx), an answer that is not the PoseLoop API's
    USAGE = 2  # a bad command line (click's own code), or a request the API refused as invalid (400, 413, 422)
    UNREACHABLE = 3  # no HTTP answer: connection refused, unknown host, timeout
    AUTH = 4  # no token, an unknown token (401), or one without the role (403)
    NOT_FOUND = 5  # unknown version or job (404)
    CONFLICT = 6  # refused in the current state (409): rejected or pruned version, nothing to roll back to, ...
    UNAVAILABLE = 7  # the API answers but cannot serve (503: no active model, not ready, overloaded)


EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 other error (server error, not a PoseLoop API); 2 usage or invalid request (400/413/422); "
    "3 API unreachable (refused, unknown host, timeout); 4 auth (no or unknown token: 401; missing role: 403); "
    "5 not found (404); 6 conflict (409); 7 unavailable / not ready (503)."
)
PANEL = "Operations (over the HTTP API)"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")

URL = typer.Option("http://127.0.0.1:8080", "--url", envvar="POSELOOP_URL", help="The PoseLoop API.")
TOKEN = typer.Option(
    None,
    "--token",
    envvar="POSELOOP_TOKEN",
    show_default=False,
    help="API token (reading: any role; changes: `ops`). Default for a local API: the dev token of `poseloop up`.",
)
JSON_OUT = typer.Option(False, "--json", help="Print the API's answer as JSON.")
REASON = typer.Option(None, "--reason", help="Why (recorded in the audit log).")


def exit_code(err: ClientError) -> ExitCode:
    from poseloop.client import ApiError, Unreachable

    if isinstance(err, Unreachable):
        return ExitCode.UNREACHABLE
    if not isinstance(err, ApiError):
        return ExitCode.ERROR
    by_status = {400: ExitCode.USAGE, 401: ExitCode.AUTH, 403: ExitCode.AUTH, 404: ExitCode.NOT_FOUND}
    by_status |= {409: ExitCode.CONFLICT, 413: ExitCode.USAGE, 422: ExitCode.USAGE, 503: ExitCode.UNAVAILABLE}
    return by_status.get(err.status, ExitCode.ERROR)


def fail(message: str, code: ExitCode) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(int(code))


def describe(err: ClientError) -> str:
    from poseloop.client import AuthenticationError

    text = str(err)
    if isinstance(err, AuthenticationError):
        text += "; check --token / POSELOOP_TOKEN"
    return text


def dev_token(url: str) -> str | None:
    """The `ops` dev token `poseloop up` wrote, for an API on this machine only (never sent elsewhere)."""
    import httpx

    from poseloop.demo import TOKENS_FILE

    try:
        host = httpx.URL(url if "://" in url else "http://" + url).host
    except httpx.InvalidURL:
        return None
    if host not in LOCAL_HOSTS:
        return None
    path = Path(os.environ.get("POSELOOP_DATA_DIR", "runs/data")) / TOKENS_FILE
    try:
        token = json.loads(path.read_text()).get("ops")
    except (OSError, ValueError, AttributeError):
        return None
    return token if isinstance(token, str) else None


@contextmanager
def session(
    url: str, token: str | None, need_token: bool = True, kind: type[PoseLoopClient] | None = None
) -> Iterator[PoseLoopClient]:
    """A client (of class `kind`, default PoseLoopClient) for one command; ClientError → one line on stderr and
    its exit code."""
    from poseloop.client import ClientError, PoseLoopClient

    token = token or dev_token(url)
    if need_token and not token:
        raise fail(
            "no API token: pass --token or set POSELOOP_TOKEN (`poseloop up` prints dev tokens; production "
            "tokens are in POSELOOP_TOKENS)",
            ExitCode.AUTH,
        )
    try:
        api = (kind or PoseLoopClient)(url, token)
    except ValueError as err:
        raise fail(str(err), ExitCode.USAGE) from None
    try:
        with api:
            yield api
    except ClientError as err:
        raise fail(describe(err), exit_code(err)) from None


def models(url: str = URL, token: str | None = TOKEN, as_json: bool = JSON_OUT) -> None:
    """Registered model versions: state, parent, metrics, size, whether loaded; which one serves."""
    from poseloop import ops_views

    with session(url, token) as api:
        listing = api.models()
    ops_views.print_json(listing) if as_json else ops_views.models_table(listing)


def jobs(
    url: str = URL,
    token: str | None = TOKEN,
    as_json: bool = JSON_OUT,
    limit: int = typer.Option(20, min=1, max=1000, help="How many, newest first."),
    state: str | None = typer.Option(None, help="queued, running, succeeded, failed or cancelled."),
) -> None:
    """Recent jobs: state, progress, gate decision."""
    from poseloop import ops_views

    states = ("queued", "running", "succeeded", "failed", "cancelled")
    if state is not None and state not in states:
        raise typer.BadParameter(f"{state!r} is not one of {', '.join(states)}", param_hint="--state")
    with session(url, token) as api:
        found = api.jobs(limit, state)  # type: ignore[arg-type]  # checked against the states above
    ops_views.print_json(found) if as_json else ops_views.jobs_table(found)


def job(
    job_id: str = typer.Argument(..., metavar="ID"),
    url: str = URL,
    token: str | None = TOKEN,
    as_json: bool = JSON_OUT,
    tail: int = typer.Option(20, min=0, max=200, help="Log lines to show."),
) -> None:
    """One job: progress, losses, the gate's decision with its evidence, the tail of its log."""
    from poseloop import ops_views

    with session(url, token) as api:
        found = api.job(job_id, tail)
    ops_views.print_json(found) if as_json else ops_views.job_detail(found)


def cancel(
    job_id: str = typer.Argument(..., metavar="ID"), url: str = URL, token: str | None = TOKEN, as_json: bool = JSON_OUT
) -> None:
    """Cancel a job: a queued one at once, a running one at its next heartbeat."""
    from poseloop import ops_views

    with session(url, token) as api:
        found = api.cancel_job(job_id)
    if as_json:
        ops_views.print_json(found)
    else:
        typer.echo(f"job {found.id}: {found.state}" + (", cancel requested" if found.cancel_requested else ""))


def retrain(
    url: str = URL,
    token: str | None = TOKEN,
    as_json: bool = JSON_OUT,
    iterations: int | None = typer.Option(None, min=1, help="Training steps (default: the server's setting)."),
    margin: float | None = typer.Option(None, help="Promotion margin override (metric points)."),
    nproc: int | None = typer.Option(None, min=1, help="Data-parallel training processes."),
    overrides: list[str] = typer.Option([], "--set", help="Training config override, e.g. --set optim.lr=0.0005."),
    reason: str | None = REASON,
    idempotency_key: str | None = typer.Option(None, help="The same key again returns the same job."),
) -> None:
    """Start a retrain job on the unlabeled pool (one per model at a time); `poseloop job ID` follows it."""
    from poseloop import ops_views

    with session(url, token) as api:
        accepted = api.retrain(iterations, margin, nproc, overrides, reason, idempotency_key)
    if as_json:
        ops_views.print_json(accepted)
        return
    how = "submitted" if accepted.created else "already submitted (same request)"
    typer.echo(f"job {accepted.job.id} {how}: {accepted.job.state} ({accepted.queue} queue)")


def promote(
    version: str = typer.Argument(..., metavar="V"),
    reason: str | None = REASON,
    url: str = URL,
    token: str | None = TOKEN,
    as_json: bool = JSON_OUT,
) -> None:
    """Hot-swap to version V (the old one serves until V is loaded and warm)."""
    from poseloop import ops_views

    with session(url, token) as api:
        result = api.promote(version, reason)
    ops_views.print_json(result) if as_json else typer.echo(ops_views.swap_line(result))


def rollback(
    version: str | None = typer.Argument(None, metavar="[V]", show_default=False),
    reason: str | None = REASON,
    url: str = URL,
    token: str | None = TOKEN,
    as_json: bool = JSON_OUT,
) -> None:
    """Hot-swap back to the previous active version (or to V)."""
    from poseloop import ops_views

    with session(url, token) as api:
        result = api.rollback(version, reason)
    ops_views.print_json(result) if as_json else typer.echo(ops_views.swap_line(result))


def pin(
    version: str | None = typer.Argument(None, metavar="[V]", show_default=False),
    reason: str | None = REASON,
    url: str = URL,
    token: str | None = TOKEN,
    as_json: bool = JSON_OUT,
) -> None:
    """Freeze automatic promotion on the active version (or on V, promoted first).

    The retrain gate then keeps its candidates instead of promoting them; manual promote and rollback still work.
    """
    from poseloop import ops_views

    with session(url, token) as api:
        state = api.pin(version, reason)
    ops_views.print_json(state) if as_json else typer.echo(ops_views.pin_state_line(state))


def unpin(reason: str | None = REASON, url: str = URL, token: str | None = TOKEN, as_json: bool = JSON_OUT) -> None:
    """Let the retrain gate promote automatically again."""
    from poseloop import ops_views

    with session(url, token) as api:
        state = api.unpin(reason)
    ops_views.print_json(state) if as_json else typer.echo(ops_views.pin_state_line(state))


def events(
    url: str = URL,
    token: str | None = TOKEN,
    as_json: bool = JSON_OUT,
    limit: int = typer.Option(20, min=1, max=10_000, help="The last N events."),
) -> None:
    """The audit log: who changed which version's state, when and why (oldest first)."""
    from poseloop import ops_views

    with session(url, token) as api:
        found = api.events(limit)
    ops_views.print_json(found) if as_json else ops_views.events_table(found)


def status(url: str = URL, token: str | None = TOKEN, as_json: bool = JSON_OUT) -> None:
    """The stack at a glance: health, readiness, versions, pin, jobs in flight, unlabeled pool.

    Works without a token (health and readiness only). Exits 7 when the API answers but is not ready.
    """
    from poseloop import ops_views

    with session(url, token, need_token=False) as api:
        doc = ops_views.collect_status(api)
    ops_views.print_json(doc) if as_json else ops_views.show_status(doc)
    if not doc["ready"]["ready"]:
        raise typer.Exit(int(ExitCode.UNAVAILABLE))


def version(
    url: str = URL,
    token: str | None = TOKEN,
    as_json: bool = JSON_OUT,
    client_only: bool = typer.Option(False, "--client", help="Only this client's version (no request)."),
) -> None:
    """This client's version and the server's (API version, the model version it serves)."""
    from poseloop import ops_views
    from poseloop.client import client_version

    doc: dict[str, Any] = {"client": client_version()}
    if not client_only:
        if not as_json:
            typer.echo(f"client  poseloop {doc['client']}")
        with session(url, token, need_token=False) as api:
            info = api.openapi().get("info", {})
            ready = api.ready()
            doc["server"] = {"url": api.url, "api": info.get("version"), "serving": ready.version}
    if as_json:
        ops_views.print_json(doc)
    elif client_only:
        typer.echo(f"client  poseloop {doc['client']}")
    else:
        server = doc["server"]
        typer.echo(f"server  {server['url']}  API {server['api']}, serving model {server['serving'] or '-'}")


def export_labeling(
    out: Path = typer.Option(..., "--out", help="Folder for the task (created; existing files are replaced)."),
    n: int = typer.Option(20, "--n", min=1, max=500, help="How many uploads."),
    strategy: str = typer.Option("low_confidence", "--strategy", help="low_confidence or disagreement."),
    image_url: str = typer.Option(
        "/data/local-files/?d=images/", "--image-url", help="Label Studio's URL prefix for DIR/images/."
    ),
    url: str = URL,
    token: str | None = TOKEN,
    as_json: bool = JSON_OUT,
) -> None:
    """The N most informative uploads (lowest model confidence) as a labeling task: images/, annotations.json
    (COCO, pre-annotated), label_studio_tasks.json, label_config.xml (poseloop.labeling)."""
    from poseloop.labeling import LabelingClient, write_task

    with session(url, token, kind=LabelingClient) as api:
        assert isinstance(api, LabelingClient)
        task = write_task(api, out, n, strategy, image_url)
    if as_json:
        typer.echo(
            json.dumps(
                {"out": str(out), "count": task["count"], "strategy": task["strategy"], "model": task["model_version"]}
            )
        )
    else:
        typer.echo(
            f"{task['count']} uploads ({task['strategy']}, pre-annotated by version {task['model_version']}) → "
            f"{out}: images/, annotations.json (COCO), label_studio_tasks.json, label_config.xml; send the "
            "corrected COCO JSON with the images to POST /v1/labeled"
        )


COMMANDS: dict[str, Callable[..., None]] = {
    "models": models,
    "jobs": jobs,
    "job": job,
    "cancel": cancel,
    "retrain": retrain,
    "promote": promote,
    "rollback": rollback,
    "pin": pin,
    "unpin": unpin,
    "events": events,
    "status": status,
    "version": version,
    "export-labeling": export_labeling,
}


def _print_version(value: bool) -> None:
    if value:
        from poseloop.client import client_version

        typer.echo(f"poseloop {client_version()}")
        raise typer.Exit()


def register(app: typer.Typer) -> None:
    """Add the ops commands and the eager `--version` option to the `poseloop` app."""
    for name, command in COMMANDS.items():
        app.command(name, epilog=EXIT_CODES_HELP, rich_help_panel=PANEL)(command)

    @app.callback()
    def _root(
        _version: bool = typer.Option(
            False, "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
        ),
    ) -> None:
        pass
