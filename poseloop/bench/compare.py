"""Pose models side by side on LSP validation (im0801–1000, protocol v1) under three box protocols.

    poseloop bench compare [--model PATH ...] [--threads 2]

Every model (PoseLoop ONNX with its metadata contract, or a MoveNet single-pose ONNX) is run through the
distillation members (training.distill.members), one view (no flip, no scales), on the same persons with the
same boxes; only the crop rule that turns a box into the model's input is the model's own (PoseLoop: the
metadata padding around the box at the input's aspect; MoveNet: a square of the box's longer side × 1.25).
Keypoints come back to image pixels through that crop's inverse affine and are mapped into LSP-14 by joint name
(models.schema_map: a COCO-17 model predicts the 12 limb joints, not neck and head top).

Box protocols (the box each model is given for a person):
- `tight`: the GT keypoint box, the joints' extent + 15 % of it on each side, clipped to the image (the
  `PersonRecord.box` of training.datasets.lsp, the LSPET `boxes.json` rule);
- `detector`: PoseLoop's own NanoDet-g 416 (serving.detection.PersonDetector, score threshold 0.35, NMS 0.6):
  the highest-scoring person box, which is what a user sending the image without boxes gets; the figure with
  the detection best overlapping the GT box is reported alongside (`detector_best_iou`). An image with no
  detection counts all its joints wrong;
- `whole`: the whole image [0, 0, W, H] as the box.

Metric: LSP PCK@0.2 (torso normaliser, training.evaluation.lsp_pck) on the 12 limb joints; per-person correct
counts are kept in the JSON for paired comparisons. Speed: median ms per person of the pose stage (crop +
network + decode + map back) over the tight-box pass, `threads` intra-op threads, in the same run. COCO-17 models
also get OKS AP on the COCO fixtures (GT boxes; the fixtures are 4 images, a smoke figure, not a benchmark).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from models.codec import Refinement
from models.detection import box_iou
from models.geometry import invert_affine, transform_points, warp_image
from models.metadata import MetadataError, ModelMetadata
from models.schema_map import joint_map, map_joints
from models.schemas import COCO17, LSP14, LSP_LIMB_JOINTS
from poseloop.bench.doc import git_commit, machine_description, markdown_table, replace_section
from serving.backends.detector import embedded_detector
from serving.detection import PersonDetector
from training.datasets.records import PersonRecord
from training.datasets.topdown import read_rgb
from training.distill.members import Member, MoveNetMember, onnx_member
from training.evaluation import coco_keypoint_ap, lsp_pck, to_coco_results

REPO = Path(__file__).resolve().parents[2]
DETECTOR = REPO / "artifacts" / "detector-nanodet-g-416" / "model.onnx"
DEFAULT_MODELS = (
    REPO / "artifacts" / "lsp14-mbv2-128x96" / "v1" / "model.onnx",
    REPO / "artifacts" / "teachers" / "movenet-thunder" / "model.onnx",
    REPO / "artifacts" / "teachers" / "movenet-lightning" / "model.onnx",
)
PROTOCOLS = ("tight", "detector", "whole")
DET_THRESHOLD = 0.35  # serving's PoseOptions.det_threshold default
SECTION = "Pose models side by side (LSP val, three box protocols)"


@dataclass(frozen=True)
class PoseModel:
    """A model under comparison: its name in the tables, its file and the member that runs it."""

    name: str
    path: Path
    member: Member


def load_pose_model(path: str | Path, threads: int = 2) -> PoseModel:
    """PoseLoop ONNX (decoded with its metadata's own decode mode, as serving does) or MoveNet ONNX."""
    path = Path(path)
    try:
        meta = ModelMetadata.from_onnx(path)
    except MetadataError:
        return PoseModel(_name(path), path, MoveNetMember(path, threads=threads))
    return PoseModel(_name(path), path, onnx_member(path, cast(Refinement, meta.decode), threads))


def _name(path: Path) -> str:
    parts = path.resolve().parts
    if path.name == "model.onnx" and len(parts) >= 3:  # artifacts/<model>/[<version>/]model.onnx
        return "/".join(p for p in parts[-3:-1] if p not in ("teachers", "artifacts"))
    return path.stem


def predict_boxes(model: PoseModel, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4) xywh boxes in one RGB image → LSP-14 keypoints (N, 14, 2) image pixels (NaN for joints the
    model's schema lacks) and scores (N, 14)."""
    member = model.member
    affines = np.stack([member.view_affine(b, 1.0) for b in boxes])
    crops = np.stack([warp_image(image, a, member.input_size) for a in affines])
    keypoints, scores = member.infer(crops)
    points = transform_points(keypoints, invert_affine(affines)).astype(np.float64)
    mapping = joint_map(member.schema, LSP14)
    return map_joints(points, mapping, axis=1), map_joints(scores, mapping, axis=1)


def detect_boxes(detector: PersonDetector, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image: the detector's person boxes (M, 4) xywh, best first, and their scores (M,)."""
    found = [detector.detect(image, DET_THRESHOLD, 20) for image in images]
    return [(np.asarray(d.boxes, np.float64).reshape(-1, 4), np.asarray(d.scores)) for d in found]


def xywh_iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one xywh box with each of (M, 4) xywh boxes."""
    to_xyxy = lambda b: np.concatenate([b[..., :2], b[..., :2] + b[..., 2:]], -1)  # noqa: E731
    return box_iou(to_xyxy(np.asarray(box, np.float64)), to_xyxy(np.asarray(others, np.float64).reshape(-1, 4)))


def protocol_boxes(
    records: Sequence[PersonRecord], images: Sequence[np.ndarray], detections: list[tuple[np.ndarray, np.ndarray]]
) -> dict[str, list[np.ndarray | None]]:
    """Each protocol's box per person (None: the detector found nobody, all joints wrong)."""
    boxes: dict[str, list[np.ndarray | None]] = {p: [] for p in (*PROTOCOLS, "detector_best_iou")}
    for record, image, (found, _) in zip(records, images, detections):
        h, w = image.shape[:2]
        boxes["tight"].append(np.asarray(record.box, np.float64))
        boxes["whole"].append(np.array([0.0, 0.0, w, h]))
        boxes["detector"].append(found[0] if len(found) else None)
        best = found[int(np.argmax(xywh_iou(record.box, found)))] if len(found) else None
        boxes["detector_best_iou"].append(best)
    return boxes


def score_protocol(
    model: PoseModel, records: Sequence[PersonRecord], images: Sequence[np.ndarray], boxes: list[np.ndarray | None]
) -> tuple[dict[str, Any], list[float]]:
    """PCK@0.2 limbs of one model with one box per person; returns the result and ms per person call."""
    pred = np.full((len(records), LSP14.num_keypoints, 2), np.nan)
    times: list[float] = []
    for i, (image, box) in enumerate(zip(images, boxes)):
        if box is None:
            continue
        started = time.perf_counter()
        pred[i] = predict_boxes(model, image, box[None])[0][0]
        times.append((time.perf_counter() - started) * 1e3)
    gt = np.stack([np.asarray(r.keypoints, np.float64) for r in records])
    result = lsp_pck(pred, gt)
    assert result.correct is not None
    limbs = list(LSP_LIMB_JOINTS)
    per_person = result.correct[:, limbs].sum(1).astype(int).tolist()
    return {"pck_limbs": result.subset["limbs"], "per_person_correct": per_person, "persons": len(records)}, times


def coco_oks_ap(model: PoseModel, coco_root: Path) -> dict[str, float] | None:
    """OKS AP/AR on the COCO fixtures with GT boxes, for COCO-17 models (None for other schemas)."""
    from training.datasets.coco import load_coco_keypoints

    if model.member.schema.name != COCO17.name:
        return None
    ann = coco_root / "test_coco.json"
    records = load_coco_keypoints(ann, coco_root)
    keypoints, scores = [], []
    for record in records:
        member = model.member
        affine = member.view_affine(np.asarray(record.box, np.float64), 1.0)
        crop = warp_image(read_rgb(record.image_path), affine, member.input_size)
        k, s = member.infer(crop[None])
        keypoints.append(transform_points(k, invert_affine(affine[None]))[0])
        scores.append(s[0])
    results = to_coco_results([int(r.image_id or 0) for r in records], np.stack(keypoints), np.stack(scores))
    stats = coco_keypoint_ap(results, ann)
    return {"AP": stats["AP"], "AP50": stats["AP50"], "persons": float(len(records))}


def run_compare(
    records: Sequence[PersonRecord],
    model_paths: Sequence[str | Path] = DEFAULT_MODELS,
    threads: int = 2,
    detector_path: str | Path = DETECTOR,
    coco_root: Path | None = None,
) -> dict[str, Any]:
    """Every model × protocol on `records`; JSON-ready (see the module docstring for the rules)."""
    started = time.perf_counter()
    models = [load_pose_model(p, threads) for p in model_paths]
    images = [read_rgb(r.image_path) for r in records]
    detector = embedded_detector(detector_path, intra_op_threads=threads)
    det_started = time.perf_counter()
    detections = detect_boxes(detector, images)
    det_ms = (time.perf_counter() - det_started) * 1e3 / max(len(images), 1)
    boxes = protocol_boxes(records, images, detections)
    top_iou = [float(xywh_iou(r.box, d[0][:1])[0]) if len(d[0]) else 0.0 for r, d in zip(records, detections)]
    rows = []
    for model in models:
        predict_boxes(model, images[0], np.asarray(records[0].box, np.float64)[None])  # warm-up
        row: dict[str, Any] = {"model": model.name, "path": str(model.path), "schema": model.member.schema.name}
        for protocol, protocol_box in boxes.items():
            result, times = score_protocol(model, records, images, protocol_box)
            row[protocol] = result
            if protocol == "tight":
                row["ms_per_person"] = statistics.median(times)
                row["ms_per_person_best"] = min(times)  # nearer an idle machine's figure when the CPU is shared
        row["coco_fixtures"] = coco_oks_ap(model, coco_root) if coco_root is not None else None
        rows.append(row)
    return {
        "split": "LSP val im0801–1000 (protocol v1)",
        "persons": len(records),
        "threads": threads,
        "detector": {
            "path": str(detector_path),
            "threshold": DET_THRESHOLD,
            "ms_per_image_mean": det_ms,
            "images_without_detection": sum(1 for d in detections if len(d[0]) == 0),
            "top_box_iou_vs_gt_mean": float(np.mean(top_iou)),
            "top_box_is_best_iou": sum(
                1 for r, (found, _) in zip(records, detections) if len(found) and np.argmax(xywh_iou(r.box, found)) == 0
            ),
        },
        "rows": rows,
        "wall_s": time.perf_counter() - started,
    }


def write_section(record: dict[str, Any], out: Path, command: str, load: str = "") -> None:
    """The docs/benchmarks.md section of one `run_compare` record."""
    headers = ["model", "schema", "tight box", "detector (top score)", "detector (best IoU)", "whole image"]
    headers += ["ms/person (best)", "COCO fixtures OKS AP"]
    table = []
    for row in record["rows"]:
        coco = row.get("coco_fixtures")
        table.append(
            [
                row["model"],
                row["schema"],
                row["tight"]["pck_limbs"],
                row["detector"]["pck_limbs"],
                row["detector_best_iou"]["pck_limbs"],
                row["whole"]["pck_limbs"],
                f"{row['ms_per_person']:.1f} ({row['ms_per_person_best']:.1f})",
                f"{coco['AP']:.1f}" if coco else "n/a (not COCO-17)",
            ]
        )
    det = record["detector"]
    body = f"""`{command}` · {machine_description()} · commit {git_commit()} · {record["threads"]} threads ·
{record["wall_s"]:.0f} s wall{load}

{record["split"]}, {record["persons"]} persons, PCK@0.2 (torso) on the 12 limb joints, one view (no flip), the
same box for every model under each protocol; each model turns a box into its input with its own crop rule
(PoseLoop: metadata padding at its input aspect; MoveNet: square of the longer side × 1.25).
- Tight box = GT keypoint extent + 15 % each side, clipped to the image.
- Detector = NanoDet-g 416 at score ≥ {det["threshold"]}: the highest-scoring person (what a request without
  boxes gets) and, for reference, the detection best overlapping the GT box; an image without a detection counts
  all its joints wrong.
- Whole image = the box [0, 0, W, H].
- ms/person = median pose stage (crop + network + decode) per tight-box person in this run; in brackets the
  fastest call, nearer an idle machine's figure when the CPU is shared.
- OKS AP = COCO fixtures (4 images, their labeled persons, GT boxes), COCO-17 models only: a smoke figure.

{markdown_table(headers, table)}

Detector on these images: {det["ms_per_image_mean"]:.1f} ms/image (mean, letterbox + network + decode),
{det["images_without_detection"]} image(s) without a person at ≥ {det["threshold"]}, top box IoU with the GT box
{det["top_box_iou_vs_gt_mean"]:.2f} on average, top box = best-IoU box on {det["top_box_is_best_iou"]} of
{record["persons"]} images. Figures and per-person correct counts: docs/results/compare.json."""
    replace_section(out, SECTION, body)
