"""Large photos: the reduced JPEG decode (core.inputs.reduction_for) against a full decode, in one run.

    poseloop bench decode [--images 40] [--threads 2] [--repeat 5]

Each of LSP val im0801–(0800 + images) is enlarged (bicubic) so that its person spans 60 % of the height of a
1920×1080 and of a 4000×3000 photo (the rest: the photo itself, stretched and blurred), and encoded as JPEG
(quality 92). Both decodes then run what /v1/pose does without boxes: header checks, decode (full, or reduced as
`inference.decode_min_side` = 800 chooses), the person detector, the pose model on the best detection, keypoints
back to full-resolution pixels. Reported per size: median decode ms (full, reduced, ratio), median end-to-end ms
(ratio) and PCK@0.2 of the 12 limb joints of both against the enlarged ground truth (paired, same photos).

Enlarged photos carry no detail beyond the originals, so the PCK pair checks the mapping back and the detector and
crops at the lower resolution; it cannot show the fine detail a native 12 MP photo might lose.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.inputs import PoseInput, check_image
from models.schema_map import joint_map, map_joints
from models.schemas import LSP14, LSP_LIMB_JOINTS
from poseloop.bench.doc import git_commit, machine_description, markdown_table, replace_section
from serving.backends.detector import embedded_detector
from serving.backends.onnxruntime import OnnxRuntimeBackend
from serving.pipeline import PoseOptions, PosePipeline, full_resolution
from training.datasets.records import PersonRecord
from training.evaluation import lsp_pck

REPO = Path(__file__).resolve().parents[2]
DETECTOR = REPO / "artifacts" / "detector-nanodet-g-416" / "model.onnx"
SIZES = ((1920, 1080), (4000, 3000))
MIN_SIDE = 800  # inference.decode_min_side's default
MAX_PIXELS = 40_000_000
SECTION = "Large photos: reduced JPEG decode"


def enlarged_photo(record: PersonRecord, size: tuple[int, int]) -> tuple[bytes, np.ndarray]:
    """(JPEG bytes, GT keypoints in its pixels): the record's image scaled so the person box is 60 % of the
    height, centred on a stretched, blurred copy of itself."""
    w, h = size
    bgr = cv2.imread(str(record.image_path))
    k = 0.6 * h / float(record.box[3])
    photo = cv2.resize(bgr, None, fx=k, fy=k, interpolation=cv2.INTER_CUBIC)
    canvas = cv2.GaussianBlur(cv2.resize(bgr, (w, h), interpolation=cv2.INTER_LINEAR), (0, 0), 8)
    ph, pw = photo.shape[:2]
    ox, oy = (w - pw) // 2, (h - ph) // 2
    src = photo[max(0, -oy) : ph - max(0, oy + ph - h), max(0, -ox) : pw - max(0, ox + pw - w)]
    canvas[max(0, oy) : max(0, oy) + src.shape[0], max(0, ox) : max(0, ox) + src.shape[1]] = src
    keypoints = (np.asarray(record.keypoints, np.float64) + 0.5) * k - 0.5 + (ox, oy)
    return cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes(), keypoints


def detect_and_pose(pipeline: PosePipeline, data: bytes, min_side: int) -> tuple[np.ndarray, float, float, int]:
    """What /v1/pose does without boxes → (LSP-14 keypoints of the best detection in full-resolution pixels, NaN
    if none; decode ms; total ms; the reduction used)."""
    start = time.perf_counter()
    header = check_image(data, MAX_PIXELS)
    decoded = pipeline.decode_request(PoseInput(data, None, False, None), MAX_PIXELS, 64, header, min_side)
    decoded_at = time.perf_counter()
    poses = full_resolution(pipeline.predict(decoded.image, None, PoseOptions(detect=True)), decoded)
    mapping = joint_map(pipeline.backend.metadata.schema, LSP14)
    keypoints = np.full((LSP14.num_keypoints, 2), np.nan)
    if poses:
        best = max(poses, key=lambda p: p.det_score or 0.0)
        keypoints = map_joints(best.keypoints, mapping, axis=0)
    end = time.perf_counter()
    return keypoints, (decoded_at - start) * 1e3, (end - start) * 1e3, decoded.reduction


def run_decode_bench(records: Sequence[PersonRecord], model: Path, threads: int = 2, repeat: int = 5) -> dict[str, Any]:
    backend = OnnxRuntimeBackend(model, intra_op_threads=threads)
    pipeline = PosePipeline(backend, detector=embedded_detector(DETECTOR, intra_op_threads=threads))
    rows = []
    for size in SIZES:
        photos = [enlarged_photo(r, size) for r in records]
        gt = np.stack([kp for _, kp in photos])
        row: dict[str, Any] = {
            "size": list(size),
            "photos": len(photos),
            "bytes": int(np.median([len(d) for d, _ in photos])),
        }
        modes = (("full", 0), ("reduced", MIN_SIDE))
        runs: dict[str, list[list[tuple[np.ndarray, float, float, int]]]] = {name: [] for name, _ in modes}
        for data, _ in photos:  # the two modes alternate on each photo, so load changes hit both alike
            for _name, min_side in modes:
                detect_and_pose(pipeline, data, min_side)  # warm-up
            timed: dict[str, list] = {name: [] for name, _ in modes}
            for _ in range(repeat):
                for name, min_side in modes:
                    timed[name].append(detect_and_pose(pipeline, data, min_side))
            for name, _ in modes:
                runs[name].append(timed[name])
        for name, _ in modes:
            result = lsp_pck(np.stack([photo[0][0] for photo in runs[name]]), gt)
            assert result.correct is not None
            row[name] = {
                "reduction": sorted({photo[0][3] for photo in runs[name]}),
                "decode_ms": statistics.median(statistics.median(r[1] for r in photo) for photo in runs[name]),
                "total_ms": statistics.median(statistics.median(r[2] for r in photo) for photo in runs[name]),
                "pck_limbs": result.subset["limbs"],
                "per_person_correct": result.correct[:, list(LSP_LIMB_JOINTS)].sum(1).astype(int).tolist(),
            }
        row["decode_speedup"] = row["full"]["decode_ms"] / row["reduced"]["decode_ms"]
        row["total_speedup"] = row["full"]["total_ms"] / row["reduced"]["total_ms"]
        row["pck_delta"] = row["reduced"]["pck_limbs"] - row["full"]["pck_limbs"]
        rows.append(row)
    backend.close()
    return {"model": str(model), "threads": threads, "repeat": repeat, "min_side": MIN_SIDE, "rows": rows}


def write_section(record: dict[str, Any], out: Path, command: str) -> None:
    table = markdown_table(
        [
            "photo",
            "decoded at",
            "decode ms full",
            "decode ms reduced",
            "decode ×",
            "end-to-end ms full",
            "end-to-end ms reduced",
            "end-to-end ×",
            "PCK full",
            "PCK reduced",
        ],
        [
            [
                f"{r['size'][0]}×{r['size'][1]}",
                "1/" + "/".join(str(f) for f in r["reduced"]["reduction"]),
                r["full"]["decode_ms"],
                r["reduced"]["decode_ms"],
                f"{r['decode_speedup']:.2f}",
                r["full"]["total_ms"],
                r["reduced"]["total_ms"],
                f"{r['total_speedup']:.2f}",
                r["full"]["pck_limbs"],
                r["reduced"]["pck_limbs"],
            ]
            for r in record["rows"]
        ],
    )
    body = (
        f"`{command}` · {machine_description()} · commit {git_commit()} · {record['threads']} threads · "
        f"median of {record['repeat']} runs per photo · model `{Path(record['model']).relative_to(REPO)}`\n\n"
        f"{record['rows'][0]['photos']} LSP val photos (im0801–) enlarged so the person is 60 % of the height, JPEG "
        f"q92; detector + pose on the best detection, as /v1/pose without boxes. `decode_min_side` = "
        f"{record['min_side']}: the reduced decode keeps the long side ≥ {record['min_side']} px.\n\n{table}\n\n"
        "End-to-end = header checks + decode + detector + crop + pose + mapping back (no HTTP). PCK@0.2, 12 limb "
        "joints, against the enlarged ground truth; enlarged photos hold no detail beyond the originals, so the PCK "
        "pair checks the mapping and the detector and crops at the lower resolution, not the fine detail a native "
        "12 MP photo could lose. JSON: docs/results/decode.json."
    )
    replace_section(out, SECTION, body)
