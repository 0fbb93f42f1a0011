"""The README's shell blocks copy-paste and work: every `curl` and `poseloop` line in them runs against a live
server (the real `poseloop serve` entry) and must succeed. Only what a reader must supply anyway is filled in:
the address, the tokens (`$TOKEN`, `$UPLOAD`, `$OPS`), a job id for `<id>`, and the files the commands name
(people.jpg, person.jpg, a.jpg, b.jpg, frames.tar, annotations.json + images/), made from the shared datasets.
The first block (`make up`, `make test`) is what CI itself runs and is not repeated here.

Each block runs in order against one server whose registry holds the bundled model twice (version 2 active,
version 1 previous: what a reader has after one promotion), so rollback and promote have something to do."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import cv2
import pytest

from models.registry import ModelRegistry
from tests.serving_fixtures import process_server

REPO = Path(__file__).resolve().parent.parent
BUNDLED = REPO / "artifacts" / "lsp14-mbv2-128x96" / "v1"
TOKENS = {
    "TOKEN": "readme-infer-token-0123456789",
    "UPLOAD": "readme-upload-token-012345678",
    "OPS": "readme-ops-token-0123456789ab",
}
ROLES = {"TOKEN": ["infer"], "UPLOAD": ["upload"], "OPS": ["ops", "upload", "infer"]}


def shell_blocks(text: str) -> list[list[str]]:
    """The ```sh blocks after the first, as command lines (continuations joined, comments dropped)."""
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)[1:]
    commands = []
    for block in blocks:
        lines, current = [], ""
        for raw in block.splitlines():
            current += raw.rstrip("\\").rstrip() + " " if raw.rstrip().endswith("\\") else raw
            if raw.rstrip().endswith("\\"):
                continue
            line = current.split(" # ")[0].split("  #")[0].strip()
            current = ""
            if line:
                lines.append(line)
        commands.append(lines)
    return commands


def _jpeg(src: Path, dst: Path) -> None:
    image = cv2.imread(str(src))
    assert image is not None, src
    cv2.imwrite(str(dst), image)


def _labeled_files(root: Path, data_root: Path) -> None:
    """annotations.json (COCO keypoints in the bundled model's LSP-14 names) + images/a.jpg, images/b.jpg."""
    from models.schemas import LSP14
    from training.datasets.lsp import lsp_split

    (root / "images").mkdir()
    records = lsp_split(data_root, "val")[:2]
    images, annotations = [], []
    for i, (name, record) in enumerate(zip(("a.jpg", "b.jpg"), records), start=1):
        shutil.copy(record.image_path, root / "images" / name)
        h, w = cv2.imread(str(record.image_path)).shape[:2]
        images.append({"id": i, "file_name": name, "width": w, "height": h})
        flat = []
        for (x, y), v in zip(record.keypoints.tolist(), record.visibility.tolist()):
            inside = 0 <= x < w and 0 <= y < h
            flat += [round(x, 2), round(y, 2), 2 if v and inside else 0] if inside else [0, 0, 0]
        box = [float(v) for v in record.box]
        annotations.append(
            {
                "id": i,
                "image_id": i,
                "category_id": 1,
                "keypoints": flat,
                "bbox": box,
                "num_keypoints": sum(1 for k in flat[2::3] if k),
                "iscrowd": 0,
                "area": box[2] * box[3],
            }
        )
    categories = [{"id": 1, "name": "person", "keypoints": list(LSP14.keypoints), "skeleton": []}]
    (root / "annotations.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )


@pytest.fixture
def workdir(tmp_path, data_root) -> Path:
    """The files the README's commands name, in the directory they run in."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    wild = data_root / "wild"
    _jpeg(wild / "basketball1.png", cwd / "people.jpg")
    _jpeg(wild / "messi5.jpg", cwd / "person.jpg")  # 548×342: the README's box [10, 20, 120, 260] fits
    _jpeg(wild / "basketball2.png", cwd / "a.jpg")
    _jpeg(wild / "messi5.jpg", cwd / "b.jpg")
    with tarfile.open(cwd / "frames.tar", "w") as tar:
        for name in ("im00001.jpg", "im00002.jpg"):
            tar.add(data_root / "lspet" / "images" / name, arcname=name)
    _labeled_files(cwd, data_root)
    return cwd


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed (the README's examples use it)")
def test_every_readme_command_works_against_a_live_server(tmp_path, workdir) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    for _ in range(2):
        registry.register(BUNDLED / "model.onnx", checkpoint_path=BUNDLED / "checkpoint.pt", actor="test")
    registry.set_active("1", "test")
    registry.set_active("2", "test")
    env = {
        "POSELOOP_REGISTRY_DIR": str(registry.root),
        "POSELOOP_DATA_DIR": str(tmp_path / "data"),
        "POSELOOP_ORT_THREADS": "1",
        "POSELOOP_REGISTRY_POLL_S": "0",
        "POSELOOP_TOKENS": json.dumps({TOKENS[k]: ROLES[k] for k in TOKENS}),
    }
    blocks = shell_blocks((REPO / "README.md").read_text())
    assert sum(len(b) for b in blocks) >= 15, "the README's command blocks were not found"
    poseloop = Path(sys.executable).parent / "poseloop"
    job_id, ran = None, 0
    with process_server(env) as (base, _proc):
        run_env = {**os.environ, **TOKENS, "POSELOOP_URL": base, "POSELOOP_TOKEN": TOKENS["OPS"]}
        for block in blocks:
            if job_id and block[0].startswith("poseloop"):
                # the worker `poseloop up` runs would have finished the job the block above submitted; no worker
                # runs here, so it is cancelled, or the CLI block's own retrain would meet it (409)
                bearer = f"Authorization: Bearer {TOKENS['OPS']}"
                cancel = [
                    "curl",
                    "-sS",
                    "--fail-with-body",
                    "-X",
                    "POST",
                    "-H",
                    bearer,
                    f"{base}/v1/ops/jobs/{job_id}/cancel",
                ]
                assert subprocess.run(cancel, capture_output=True, timeout=60).returncode == 0
            for line in block:
                command = line.replace("http://127.0.0.1:8080", base).replace("localhost:8080", base)
                if "<id>" in command:
                    assert job_id, "the README shows a job id before submitting a job"
                    command = command.replace("<id>", job_id)
                for name, token in TOKENS.items():
                    command = command.replace(f"${name}", token)
                argv = shlex.split(command)
                if argv[0] == "curl":
                    argv = ["curl", "-sS", "--fail-with-body", "--max-time", "120", *argv[1:]]
                elif argv[0] == "poseloop":
                    argv = [str(poseloop), *argv[1:]]
                else:
                    pytest.fail(f"the README runs {argv[0]!r}, which this test does not know: {line}")
                done = subprocess.run(argv, cwd=workdir, env=run_env, capture_output=True, text=True, timeout=300)
                ran += 1
                assert done.returncode == 0, (
                    f"{line}\n→ exit {done.returncode}\n{done.stdout[-800:]}{done.stderr[-800:]}"
                )
                if argv[-1].endswith("/v1/ops/retrain"):
                    job_id = json.loads(done.stdout)["job"]["id"]
    assert ran >= 15 and (workdir / "out.png").stat().st_size > 0  # the render line wrote its overlay
