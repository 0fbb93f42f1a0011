"""`poseloop demo`: the loop as a new user sees it, against a running stack (`poseloop up` / `make up`).

Pose on a sample image (render PNG) → upload video frames and LSPET images → stats → a small retrain with a
progress bar → the gate's decision and the new active version → rollback → the audit log. No torch here: it only
talks HTTP, like any client.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
from tqdm import tqdm

from poseloop.ingest import IngestError, ingest

TOKENS_FILE = "dev-tokens.json"


class DemoError(RuntimeError):
    pass


def load_dev_tokens(data_dir: Path) -> dict[str, str]:
    path = data_dir / TOKENS_FILE
    if not path.exists():
        raise DemoError(
            f"{path} not found: start the stack with `poseloop up` (it writes dev tokens there) or "
            "pass --infer-token/--upload-token/--ops-token"
        )
    return json.loads(path.read_text())


def run_demo(
    url: str,
    tokens: dict[str, str],
    data_root: Path,
    out_dir: Path,
    iterations: int,
    frames_every: int = 40,
    frame_limit: int = 20,
    lspet_limit: int = 40,
    margin: float | None = None,
    say=print,
    overrides: list[str] | None = None,
    job_timeout_s: float = 3600,
) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    hdr = {role: {"Authorization": f"Bearer {tok}"} for role, tok in tokens.items()}
    with httpx.Client(base_url=url, timeout=120) as http:
        ready = http.get("/readyz")
        if ready.status_code != 200:
            raise DemoError(f"the stack at {url} is not ready: {ready.text}")
        start_version = http.get("/v1/models/active", headers=hdr["infer"]).json().get("serving")
        say(f"1. serving version {start_version}")
        sample = data_root / "wild" / "basketball1.png"  # two players: the person detector finds both
        image = (sample.name, sample.read_bytes(), "image/png")
        pose = _ok(http.post("/v1/pose", files={"image": image}, headers=hdr["infer"]))
        render = _ok(http.post("/v1/pose/render", files={"image": image}, headers=hdr["infer"]), raw=True)
        (out_dir / "demo_pose.png").write_bytes(render.content)
        persons = pose["persons"]  # [] when the detector finds nobody
        scores = ", ".join(f"{p['score']:.2f}" for p in persons) or "none"
        say(
            f"   pose on {sample.name}: {len(persons)} person(s) found by the {pose['boxes_from']}, "
            f"pose scores {scores} → {out_dir / 'demo_pose.png'}"
        )
        say("2. uploading unlabeled images")
        try:
            video = ingest(data_root / "wild" / "vtest.avi", frames_every, url, tokens["upload"], limit=frame_limit)
            lspet = ingest(
                data_root / "lspet" / "images",
                1,
                url,
                tokens["upload"],
                limit=lspet_limit,
                boxes=data_root / "lspet" / "boxes.json",
            )
        except IngestError as err:
            raise DemoError(str(err)) from None
        say(
            f"   video frames: {video.accepted} new, {video.duplicates} already there; "
            f"LSPET: {lspet.accepted} new, {lspet.duplicates} already there"
        )
        stats = _ok(http.get("/v1/unlabeled/stats", headers=hdr["upload"]))
        say(f"   pool: {stats['total']} images, {stats['new_since_active']} new since the active model was trained")
        body = {"iterations": iterations, "reason": "poseloop demo", "overrides": overrides or []}
        if margin is not None:
            body["margin"] = margin
        job = _ok(http.post("/v1/ops/retrain", json=body, headers=hdr["ops"]))["job"]
        say(f"3. retrain job {job['id']} ({iterations} steps)")
        job = _follow(http, hdr["ops"], job["id"], iterations, job_timeout_s)
        if job["state"] != "succeeded":
            raise DemoError(f"job {job['id']} ended {job['state']}: {job.get('error')}")
        gate = job["result"]["gate"]
        say(f"4. gate: {gate['decision']} — {gate['reason']}")
        active = _wait_active(
            http, hdr["infer"], gate["candidate"] if gate["decision"] == "promoted" else start_version
        )
        say(f"   active version now {active}")
        rolled = None
        if gate["decision"] == "promoted":
            rolled = _ok(http.post("/v1/ops/rollback", json={"reason": "demo rollback"}, headers=hdr["ops"]))
            say(
                f"5. rollback: active {rolled['active']} (was {rolled['previous']}), "
                f"swap {rolled['timing_ms']['total']} ms"
            )
        else:
            say(
                "5. nothing to roll back: the gate kept the active version (run with --margin -100 to see a "
                "promotion and its rollback)"
            )
        events = _ok(http.get("/v1/ops/events", params={"limit": 8}, headers=hdr["ops"]))["events"]
        say("6. audit log (latest):")
        for e in events:
            say(
                f"   {e['ts']}  {e['actor']:<22} {e['action']:<9} v{e['version']}  {e.get('from')} → {e.get('to')}"
                f"  {e.get('reason') or ''}"
            )
    return {
        "start_version": start_version,
        "pose_persons": len(persons),
        "job": job["id"],
        "gate": gate,
        "after_rollback": rolled["active"] if rolled else None,
    }


def _ok(response: httpx.Response, raw: bool = False):
    if response.status_code >= 400:
        raise DemoError(
            f"{response.request.method} {response.request.url.path}: {response.status_code} {response.text[:300]}"
        )
    return response if raw else response.json()


def _follow(http: httpx.Client, headers: dict, job_id: str, total: int, timeout_s: float = 3600) -> dict:
    deadline = time.time() + timeout_s
    with tqdm(total=total, unit="step", desc="retrain") as bar:
        while time.time() < deadline:
            job = _ok(http.get(f"/v1/ops/jobs/{job_id}", headers=headers))
            progress = job["progress"]
            bar.n = min(progress.get("step", 0), total)
            bar.set_postfix_str(f"{progress.get('stage', job['state'])} peak={progress.get('mean_peak', 0):.2f}")
            bar.refresh()
            if job["state"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(1.0)
    raise DemoError(f"job {job_id} did not finish within {timeout_s} s")


def _wait_active(http: httpx.Client, headers: dict, version: str, timeout_s: float = 30) -> str:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        active = http.get("/v1/models/active", headers=headers).json().get("serving")
        if active == version:
            return active
        time.sleep(0.5)
    return active
