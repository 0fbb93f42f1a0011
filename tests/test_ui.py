"""The ops console (/ui) in a real headless browser: Debian's chromium, driven by playwright, against a live API
(uvicorn in a thread, embedded ONNX Runtime, real models, two finished retrain jobs with curves and gate
decisions written through the job table). Skips cleanly without chromium or playwright.

Every page is checked for content (rows for the versions, jobs, events, pool figures), the try-it overlay for
pixels in the skeleton colour, the retrain form for a job on the jobs page, and every test for requests that
left the API's origin (none may: the console works offline). UI_SCREENSHOTS=docs/images writes the
screenshots the README shows (ui-*.png).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from continual.jobs import JobStore
from continual.settings import Settings
from models.registry import ModelRegistry
from poseloop.workflows import BUNDLED_MODEL_DIR
from serving.app import create_app
from tests.data_paths import DATA
from tests.serving_fixtures import auth, encode, sample_image, thread_server, tiny_pose_onnx

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
expect = sync_api.expect
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no system chromium (apt-get install chromium; .ci/run does)"),
    pytest.mark.integration,  # a browser process and a live server: `make test` runs it, `make test-fast` does not
]

OPS, INFER, UPLOAD = "ops-" + "o" * 20, "infer-" + "i" * 20, "upload-" + "u" * 20
LSP_IMAGE = DATA / "lsp" / "images" / "im0801.jpg"
SKELETON_RGB = (0x00, 0xE6, 0x76)  # serving/ui/try.js SKELETON
SHOTS = os.environ.get("UI_SCREENSHOTS")
TIMEOUT_MS = 10_000


def _gate(candidate: str, decision: str, gain: float, low: float, high: float, reason: str) -> dict:
    return {
        "candidate": candidate,
        "parent": "1",
        "metric": "pck",
        "candidate_value": round(61.2 + gain, 2),
        "active_value": 61.2,
        "gain": gain,
        "ci_low": low,
        "ci_high": high,
        "persons": 500,
        "margin": 0.0,
        "decision": decision,
        "reason": reason,
    }


def _finished_job(jobs: JobStore, data_dir: Path, gate: dict, iterations: int) -> str:
    """A retrain job that ran to its gate decision (as a worker records it), with a metrics.jsonl curve."""
    job, _ = jobs.submit("retrain", "pose", {"iterations": iterations}, "ops-console-test")
    jobs.claim("test-worker", 60.0, job.id)
    progress = {"stage": "gate", "step": iterations, "total_steps": iterations, "percent": 100.0}
    jobs.heartbeat(job.id, "test-worker", 60.0, progress=progress, log=f"step {iterations}: validation")
    result = {"candidate": {"version": gate["candidate"], "state": "candidate"}, "gate": gate}
    jobs.finish(job.id, "test-worker", "succeeded", result=result)
    run_dir = data_dir / "jobs" / f"retrain-{job.id}"
    run_dir.mkdir(parents=True)
    steps = range(10, iterations + 1, 10)
    rows = [
        {"step": s, "lr": 5e-4, "loss": 0.9 * np.exp(-s / 80) + 0.2, "loss_sup": 0.5 * np.exp(-s / 60) + 0.1}
        for s in steps
    ]
    rows.append({"step": iterations, "val/pck": gate["candidate_value"], "val/per_joint/head": 80.0})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return job.id


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[dict]:
    """A live API: v1 (bootstrap), v2 promoted by job A's gate (the bundled LSP model when present, so the
    try-it overlay is a real pose), v3 rejected by job B's gate; an upload in the pool."""
    root = tmp_path_factory.mktemp("ui")
    data_dir = root / "data"
    registry = ModelRegistry(root / "registry")
    jobs = JobStore(data_dir / "jobs.db")
    bundled = sorted(BUNDLED_MODEL_DIR.glob("*/v*/model.onnx"))
    first = registry.register(tiny_pose_onnx(root / "a.onnx", seed=1), metrics={"pck": 61.2}, actor="bootstrap")
    registry.set_active(first.version, "bootstrap", "bootstrap model at start")
    promoted = _gate("2", "promoted", 1.8, 0.6, 3.1, "pck 63.00 vs 61.20: Δ +1.80 [+0.60, +3.10]; lower bound ≥ 0")
    job_a = _finished_job(jobs, data_dir, promoted, 200)
    second = registry.register(
        bundled[-1] if bundled else tiny_pose_onnx(root / "b.onnx", seed=2),
        metrics={"pck": 63.0, "parent_pck": 61.2},
        parent="1",
        data_summary={"job_id": job_a, "unlabeled_seq": 1},
        actor=f"job:{job_a}",
    )
    registry.set_active(second.version, f"job:{job_a}", "gate: " + promoted["reason"])
    rejected = _gate("3", "rejected", 0.4, -0.9, 1.6, "pck 61.60 vs 61.20: Δ +0.40 [−0.90, +1.60]; lower bound < 0")
    job_b = _finished_job(jobs, data_dir, rejected, 120)
    third = registry.register(
        tiny_pose_onnx(root / "c.onnx", seed=3), metrics={"pck": 61.6}, parent="1", actor=f"job:{job_b}"
    )
    registry.mark_rejected(third.version, "gate: " + rejected["reason"], f"job:{job_b}")
    settings = Settings(
        registry_dir=root / "registry",
        data_dir=data_dir,
        ort_threads=1,
        registry_poll_s=0,
        max_wait_ms=2,
        detector_path="",  # no person detector: a request without boxes poses the whole image
        tokens={OPS: {"roles": ["ops"], "name": "ops-console"}, INFER: ["infer"], UPLOAD: ["upload"]},
    )
    with thread_server(create_app(settings)) as base:
        files = [("files", (f"frame{i}.png", encode(sample_image(i, (96, 80))), "image/png")) for i in (1, 2)]
        answer = httpx.post(base + "/v1/unlabeled", files=files, data={"source": "camera-1"}, headers=auth(UPLOAD))
        assert answer.status_code == 200, answer.text
        yield {"base": base, "jobs": (job_a, job_b), "data_dir": data_dir}


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, live) -> Iterator:
    """A fresh tab (own sessionStorage) that may reach the API's origin only; a request elsewhere, a script
    error or a Content-Security-Policy violation fails the test."""
    context = browser.new_context(viewport={"width": 1360, "height": 860})
    escaped: list[str] = []
    problems: list[str] = []

    def only_local(route) -> None:
        if route.request.url.startswith(live["base"]) or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            escaped.append(route.request.url)
            route.abort()

    context.route("**/*", only_local)
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    tab.on("pageerror", lambda err: problems.append(f"script error: {err}"))
    tab.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
    tab.on("dialog", lambda dialog: dialog.accept())
    yield tab
    context.close()
    assert escaped == [], f"the console requested off-origin URLs: {escaped}"
    assert problems == []


def sign_in(page, base: str, token: str = OPS) -> None:
    page.goto(base + "/ui")
    page.fill("#token", token)
    page.click("#login-submit")
    page.wait_for_selector("body[data-loaded=models]")


def screenshot(page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"ui-{name}.png"), full_page=True)


def test_login_refuses_bad_tokens_and_keeps_the_token_in_the_tab(page, live) -> None:
    page.goto(live["base"] + "/ui")
    assert page.url == live["base"] + "/ui/"
    page.fill("#token", INFER)
    page.click("#login-submit")
    expect(page.locator("#login-error")).to_contain_text("lacks the ops role")
    assert page.is_hidden("#console")
    page.fill("#token", "not-a-token")
    page.click("#login-submit")
    expect(page.locator("#login-error")).to_contain_text("Unknown token")
    sign_in(page, live["base"])
    assert page.evaluate("sessionStorage.getItem('poseloop.token')") == OPS
    page.reload()  # the tab remembers the token; a new tab (context) would not
    page.wait_for_selector("body[data-loaded=models]")
    page.click("#logout")
    assert page.is_visible("#login") and page.evaluate("sessionStorage.getItem('poseloop.token')") is None


def test_models_page_shows_versions_and_gate_intervals(page, live) -> None:
    sign_in(page, live["base"])
    rows = page.locator("#models-table tbody tr")
    assert rows.count() == 3
    assert page.locator("#models-table tbody tr").first.get_attribute("data-version") == "3"
    v2 = page.locator("tr[data-version='2']")
    assert "active" in v2.inner_text() and "serving" in v2.inner_text()
    assert "[+0.60, +3.10]" in v2.inner_text() and "promoted" in v2.inner_text()
    v3 = page.locator("tr[data-version='3']")
    assert "rejected" in v3.inner_text() and "[−0.90, +1.60]" in v3.inner_text()
    # a rejected version can be neither promoted nor pinned, only previewed
    assert v3.locator("button[data-action=promote], button[data-action=pin]").count() == 0
    assert v3.locator("button[data-action=compare]").count() == 1
    assert page.inner_text("#status") == "serving v2"
    screenshot(page, "models")


def test_compare_draws_the_newest_uploads_by_two_versions_side_by_side(page, live) -> None:
    """Compare on the rejected v3: its parent v1 (before) and v3 (after) each draw the newest uploads, fetched
    with the token from GET /v1/models/{version}/render; the two renders of an upload differ (other weights)."""
    sign_in(page, live["base"])
    page.locator("tr[data-version='3'] button[data-action=compare]").click()
    pairs = page.locator("#compare-pairs .pair")
    expect(pairs.first).to_be_visible()
    assert page.input_value("#cmp-before") == "1" and page.input_value("#cmp-after") == "3"
    assert 1 <= pairs.count() <= 3
    for i in range(pairs.count()):
        versions = pairs.nth(i).locator("figure").evaluate_all("(fs) => fs.map((f) => f.dataset.version)")
        assert versions == ["1", "3"]
    page.wait_for_function(
        "() => [...document.querySelectorAll('#compare-pairs img')].every((img) => img.complete && img.naturalWidth)"
    )
    differing = page.evaluate(
        """() => { const [a, b] = document.querySelectorAll('#compare-pairs .pair:first-child img');
        const pixels = (img) => { const c = document.createElement('canvas'); c.width = img.naturalWidth;
          c.height = img.naturalHeight; const g = c.getContext('2d'); g.drawImage(img, 0, 0);
          return g.getImageData(0, 0, c.width, c.height).data; };
        const pa = pixels(a), pb = pixels(b); let n = 0;
        for (let i = 0; i < pa.length; i += 4) if (Math.abs(pa[i] - pb[i]) + Math.abs(pa[i + 1] - pb[i + 1]) > 120) n++;
        return n; }"""
    )
    assert differing > 20  # skeleton pixels where the two versions put different joints
    assert page.inner_text("#status") == "serving v2"  # previews change nothing that serves
    screenshot(page, "compare")


def test_rollback_promote_pin_and_unpin_buttons(page, live) -> None:
    sign_in(page, live["base"])
    page.click("#rollback")
    expect(page.locator("#status")).to_have_text("serving v1")
    page.locator("tr[data-version='2'] button[data-action=promote]").click()
    expect(page.locator("#status")).to_have_text("serving v2")
    page.locator("tr[data-version='2'] button[data-action=pin]").click()
    page.wait_for_selector("#unpin:not([hidden])")
    assert "pinned by ops-console" in page.inner_text("#pin-state")
    assert page.inner_text("#status") == "serving v2 · promotion pinned"
    page.click("#unpin")
    page.wait_for_selector("#unpin[hidden]", state="attached")
    assert page.inner_text("#status") == "serving v2"


def test_jobs_page_shows_curves_log_and_gate(page, live) -> None:
    sign_in(page, live["base"])
    page.click("#nav a[data-page=jobs]")
    page.wait_for_selector("body[data-loaded=jobs]")
    job_a = live["jobs"][0]
    page.click(f"tr[data-job-id='{job_a}']")
    page.wait_for_selector("#chart-loss svg")
    loss = page.locator("#chart-loss svg")
    assert loss.get_attribute("data-series") == "2"  # loss and loss_sup (lr is not a loss)
    assert loss.locator("path[data-name=loss]").get_attribute("d").count("L") == 19  # 20 logged steps
    assert page.locator("#chart-val svg path[data-name='val/pck']").count() == 1  # nested val/per_joint/* left out
    assert "promoted: v2 pck 63.00 vs v1 61.20" in page.inner_text("#job-summary")
    assert "validation" in page.inner_text("#job-log")
    assert page.is_hidden("#job-cancel")  # finished
    screenshot(page, "jobs")


def test_retrain_button_creates_a_job_on_the_jobs_page_and_cancel_stops_it(page, live) -> None:
    sign_in(page, live["base"])
    page.goto(live["base"] + "/ui/#jobs")
    page.wait_for_selector("body[data-loaded=jobs]")
    page.fill("#rt-iterations", "40")
    page.fill("#rt-reason", "new camera footage")
    page.click("#retrain-submit")
    expect(page.locator("#retrain-message")).to_contain_text("queued")
    job_id = page.inner_text("#retrain-message").split()[1]
    queued = page.locator(f"#jobs-table tr[data-job-id='{job_id}']")
    queued.wait_for()
    assert "queued" in queued.inner_text()
    answer = httpx.get(f"{live['base']}/v1/ops/jobs/{job_id}", headers=auth(OPS)).json()
    assert answer["params"] == {"iterations": 40, "reason": "new camera footage"}
    assert answer["requested_by"] == "ops-console"
    page.wait_for_selector("#job-cancel:not([hidden])")
    page.click("#job-cancel")
    expect(queued).to_contain_text("cancelled")
    assert httpx.get(f"{live['base']}/v1/ops/jobs/{job_id}", headers=auth(OPS)).json()["state"] == "cancelled"


def test_pool_and_audit_log_pages(page, live) -> None:
    sign_in(page, live["base"])
    page.click("#nav a[data-page=pool]")
    page.wait_for_selector("body[data-loaded=pool]")
    assert page.inner_text("#pool-cards .stat[data-key=total] .value") == "2"
    assert page.inner_text("#pool-cards .stat[data-key=active_version] .value") == "v2"
    stats = httpx.get(live["base"] + "/v1/unlabeled/stats", headers=auth(OPS)).json()
    # the server's own per-source figures, as a table: one row per upload source
    expect(page.locator("#pool-sources-table tbody tr")).to_have_count(len(stats["sources"]))
    assert sum(s["images"] for s in stats["sources"].values()) == 2
    screenshot(page, "pool")
    # whatever fields each source has, they are shown
    stats["sources"] = {"camera-1": {"images": 2, "disk_bytes": 2048}, "archive:a.tar": {"images": 0}}
    page.route("**/v1/unlabeled/stats", lambda route: route.fulfill(json=stats))
    page.evaluate("() => PoseLoop.refresh()")
    expect(page.locator("#pool-sources-table tbody tr")).to_have_count(2)
    assert page.inner_text("#pool-sources-table tbody tr >> nth=0").split("\t") == ["camera-1", "2", "2.0 KiB"]
    page.click("#nav a[data-page=events]")
    page.wait_for_selector("body[data-loaded=events]")
    text = page.inner_text("#events-table tbody")
    assert "reject" in text and "lower bound < 0" in text and "bootstrap" in text
    assert page.locator("#events-table tbody tr").count() >= 5  # 3 registers, 2 promotes, a reject
    screenshot(page, "events")


def test_pool_gallery_shows_thumbnails_and_deletes_an_upload(page, live) -> None:
    """The latest uploads as tiles, newest first: an ingest-checked one with its thumbnail (fetched with the
    token: the route needs it) and its figures; Delete (after a confirm) removes it from the pool for good."""
    from continual.uploads import UploadStore

    image = sample_image(7, (120, 90))
    answer = httpx.post(
        live["base"] + "/v1/unlabeled",
        files=[("files", ("gallery.png", encode(image), "image/png"))],
        data={"source": "gallery-test"},
        headers=auth(UPLOAD),
    )
    assert answer.status_code == 200, answer.text
    store = UploadStore(live["data_dir"] / "uploads")
    item = max(store.items(0, 100), key=lambda i: i["seq"])
    thumb = store.thumbnail_path(item["sha256"])
    thumb.parent.mkdir(parents=True, exist_ok=True)
    thumb.write_bytes(cv2.imencode(".jpg", np.full((60, 80, 3), (40, 200, 40), np.uint8))[1].tobytes())
    store.record_check(item["sha256"], thumb, "2", 0.731, 1)  # as the worker's ingest check records it
    sign_in(page, live["base"])
    page.click("#nav a[data-page=pool]")
    page.wait_for_selector("body[data-loaded=pool]")
    tiles = page.locator("#pool-gallery figure.tile")
    expect(tiles).to_have_count(store.count_since(0))
    newest = tiles.first
    assert newest.get_attribute("data-seq") == str(item["seq"])
    caption = newest.locator("figcaption").inner_text()
    assert "gallery-test" in caption and "checked" in caption and "conf 0.73" in caption and "1 person" in caption
    page.wait_for_function("() => document.querySelector('#pool-gallery figure.tile img')?.naturalWidth === 80")
    green = page.evaluate(
        """() => { const img = document.querySelector('#pool-gallery figure.tile img');
        const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
        const g = c.getContext('2d'); g.drawImage(img, 0, 0); return Array.from(g.getImageData(40, 30, 1, 1).data); }"""
    )
    assert green[1] > 150 and green[0] < 100  # the stored thumbnail's pixels, not a placeholder
    assert tiles.nth(1).locator(".no-thumb").inner_text() == "not checked yet"  # no ingest check ran on these
    screenshot(page, "pool-gallery")
    newest.locator("button.danger").click()  # the page fixture accepts the confirm dialog
    expect(page.locator("#pool-gallery figure.tile")).to_have_count(store.count_since(0))
    expect(page.locator(f"#pool-gallery figure.tile[data-seq='{item['seq']}']")).to_have_count(0)
    assert store.get(item["sha256"]) is None
    gone = httpx.get(f"{live['base']}/v1/unlabeled/{item['sha256']}/thumbnail", headers=auth(OPS))
    assert gone.status_code == 404


def test_try_it_draws_the_skeleton_over_an_lsp_image(page, live) -> None:
    if not LSP_IMAGE.exists():
        pytest.skip(f"{LSP_IMAGE} not found (../shared/datasets)")
    background = cv2.cvtColor(cv2.imread(str(LSP_IMAGE)), cv2.COLOR_BGR2RGB)
    sign_in(page, live["base"])
    page.click("#nav a[data-page=try]")
    page.set_input_files("#try-file", str(LSP_IMAGE))
    page.fill("#try-threshold", "0.2")
    page.click("#try-submit")  # the ops token may not call /v1/pose: the page says so
    expect(page.locator("#try-message")).to_contain_text("lacks the infer role")
    page.fill("#try-token", INFER)
    page.click("#try-submit")
    page.wait_for_selector("#try-canvas[data-edges]")
    assert int(page.get_attribute("#try-canvas", "data-persons")) == 1  # no detector: the whole image
    assert int(page.get_attribute("#try-canvas", "data-edges")) >= 3
    size, pixels = page.evaluate(
        """() => { const c = document.querySelector('#try-canvas');
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   return [[c.width, c.height], Array.from(d)]; }"""
    )
    scale = int(page.get_attribute("#try-canvas", "data-scale"))
    assert tuple(size) == (background.shape[1] * scale, background.shape[0] * scale)
    drawn = np.asarray(pixels, np.int16).reshape(size[1], size[0], 4)[..., :3]
    assert _skeleton_pixels(drawn) > 200 and _skeleton_pixels(background.astype(np.int16)) < 5
    screenshot(page, "try")


def _skeleton_pixels(rgb: np.ndarray) -> int:
    return int((np.abs(rgb - np.asarray(SKELETON_RGB, np.int16)).max(axis=-1) <= 12).sum())


def test_console_files_carry_a_same_origin_policy(live) -> None:
    answer = httpx.get(live["base"] + "/ui/")
    assert answer.status_code == 200 and "PoseLoop ops console" in answer.text
    assert "default-src 'self'" in answer.headers["content-security-policy"]
    assert "http" not in answer.text.split("<body>")[0]  # nothing loaded from another origin
    script = httpx.get(live["base"] + "/ui/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]


def test_job_metrics_route(live) -> None:
    base, (job_a, job_b) = live["base"], live["jobs"]
    doc = httpx.get(f"{base}/v1/ops/jobs/{job_a}/metrics", headers=auth(OPS)).json()
    assert doc["available"] and doc["total_rows"] == 21 and doc["rows"][0]["step"] == 10
    assert doc["rows"][-1] == {"step": 200, "val/pck": 63.0, "val/per_joint/head": 80.0}
    sampled = httpx.get(f"{base}/v1/ops/jobs/{job_a}/metrics?max_rows=10", headers=auth(OPS)).json()["rows"]
    # every 2nd of the 20 training rows, the last one, and the validation row
    assert len(sampled) == 12 and sampled[-2]["step"] == 200 and "val/pck" in sampled[-1]
    path = live["data_dir"] / "jobs" / f"retrain-{job_b}" / "metrics.jsonl"
    path.write_text(path.read_text() + '{"step": 130, "loss": NaN}\n{"step": 14')  # diverged, then a torn line
    rows = httpx.get(f"{base}/v1/ops/jobs/{job_b}/metrics", headers=auth(OPS)).json()["rows"]
    assert rows[-1] == {"step": 130, "loss": None}
    assert httpx.get(f"{base}/v1/ops/jobs/nope/metrics", headers=auth(OPS)).status_code == 404
    assert httpx.get(f"{base}/v1/ops/jobs/{job_a}/metrics", headers=auth(INFER)).status_code == 403
