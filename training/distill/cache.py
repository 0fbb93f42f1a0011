"""Pseudo-label caches: a teacher labels an unlabeled pool once; the filtered labels and their provenance are one
JSON file, reused by any later call with the same inputs.

Layout: `<cache_root>/<key>/pseudo_labels.json`, key = sha256 of (teacher members' kind + file sha256 + crop and
decode settings, TTA, target schema, filter spec, pool record ids, dev record ids); paths do not count, so a moved
teacher file still hits. The file (strict JSON; NaN/inf written as null):

    {"format": "poseloop.pseudo_labels/1", "key": ..., "schema": "lsp14",
     "provenance": {"teacher": {"schema", "tta", "members": [{"kind", "path", "sha256", ...}]},
                    "filter": {...}, "thresholds": {"score", "spread", "min_joints"},
                    "calibration": {"target", "precision", "kept_fraction", "joints", "dev_records", ...} | null,
                    "pool": {"records", "ids_sha256"}, "counts": {...}, "created": ISO-8601 UTC},
     "persons": [{"id", "image", "box": [x, y, w, h], "keypoints": [[x, y] | null] * K (image pixels),
                  "scores": [...], "spread": [...], "kept": [bool] * K, "person_kept": bool}]}

Every pool person is stored (dropped ones too, so a file explains itself); `training.data.load_pseudo_labels`
reads back the kept ones as training records.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.fileio import atomic_write_bytes
from training.data import PSEUDO_LABELS_FORMAT, load_pseudo_labels
from training.datasets.records import PersonRecord
from training.distill.filter import Calibration, FilterSpec, calibrate, json_safe, keep_mask, pck_correct
from training.distill.teachers import Teacher, TeacherOutput

CACHE_FILE = "pseudo_labels.json"


@dataclass(frozen=True)
class PseudoLabels:
    """A written (or found) cache: its file, whether it was reused, and its provenance block."""

    path: Path
    reused: bool
    provenance: dict[str, Any]

    def records(self) -> list[PersonRecord]:
        return load_pseudo_labels(self.path)


def _ids_sha256(records: Sequence[PersonRecord]) -> str:
    return hashlib.sha256("\n".join(r.record_id for r in records).encode()).hexdigest()


def cache_key(
    teacher: dict[str, Any], spec: FilterSpec, pool: Sequence[PersonRecord], dev: Sequence[PersonRecord]
) -> str:
    """16 hex digits identifying a labelling: `teacher` is `Teacher.provenance()`."""
    members = [{k: v for k, v in m.items() if k != "path"} for m in teacher["members"]]
    blob = {
        "teacher": {**teacher, "members": members},
        "filter": spec.to_json(),
        "pool": _ids_sha256(pool),
        "dev": _ids_sha256(dev),
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(
    teacher: Teacher,
    pool: Sequence[PersonRecord],
    cache_root: str | Path,
    spec: FilterSpec | None = None,
    dev: Sequence[PersonRecord] = (),
) -> Path:
    """Where `label_pool` with these inputs writes (or finds) its cache; runs no model."""
    spec = spec or FilterSpec()
    key = cache_key(teacher.provenance(), spec, pool, dev if spec.thresholds is None else [])
    return Path(cache_root) / key / CACHE_FILE


def calibrate_teacher(teacher: Teacher, dev: Sequence[PersonRecord], spec: FilterSpec) -> Calibration:
    """Run the teacher on labeled dev records (its schema) and calibrate thresholds for `spec.precision`."""
    if any(r.keypoints is None or r.visibility is None or r.schema != teacher.schema.name for r in dev):
        raise ValueError(f"dev records must be labeled {teacher.schema.name} persons")
    out = teacher.predict(dev)
    gt = np.stack([r.keypoints for r in dev if r.keypoints is not None])
    visibility = np.stack([r.visibility for r in dev if r.visibility is not None])
    correct, counted = pck_correct(out.keypoints, gt, visibility, teacher.schema, spec.pck_threshold)
    return calibrate(out.scores, out.spread, correct, counted, spec.precision, spec.min_joints, spec.spread_grid)


def label_pool(
    teacher: Teacher,
    pool: Sequence[PersonRecord],
    cache_root: str | Path,
    spec: FilterSpec | None = None,
    dev: Sequence[PersonRecord] = (),
) -> PseudoLabels:
    """Pseudo-labels for `pool` (unlabeled records) from `teacher`, filtered by `spec`: calibrated on `dev` unless
    `spec.thresholds` fixes them. Reuses the cache when the same inputs were labelled before."""
    spec = spec or FilterSpec()
    pool, dev = list(pool), list(dev)
    if not pool:
        raise ValueError("empty unlabeled pool")
    if len({r.record_id for r in pool}) != len(pool):
        raise ValueError("pool record ids must be unique (pseudo-labels are keyed by them)")
    if spec.thresholds is None and not dev:
        raise ValueError("calibrating thresholds needs labeled dev records (or FilterSpec.thresholds)")
    provenance = teacher.provenance()
    path = cache_path(teacher, pool, cache_root, spec, dev)
    key = path.parent.name
    if path.exists():
        payload = json.loads(path.read_text())
        if payload.get("format") == PSEUDO_LABELS_FORMAT and payload.get("key") == key:
            return PseudoLabels(path, True, payload["provenance"])
    calibration, thresholds = None, spec.thresholds
    if thresholds is None:
        calibration = calibrate_teacher(teacher, dev, spec)
        thresholds = calibration.thresholds
    out = teacher.predict(pool)
    kept, person_kept = keep_mask(out.scores, out.spread, thresholds)
    payload = {
        "format": PSEUDO_LABELS_FORMAT,
        "key": key,
        "schema": teacher.schema.name,
        "provenance": {
            "teacher": provenance,
            "filter": spec.to_json(),
            "thresholds": json_safe(asdict(thresholds)),
            "calibration": _calibration_json(calibration, dev),
            "pool": {"records": len(pool), "ids_sha256": _ids_sha256(pool)},
            "counts": {
                "persons": len(pool),
                "persons_kept": int(person_kept.sum()),
                "joints_known": int(out.known.sum()),
                "joints_kept": int(kept[person_kept].sum()),
            },
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "persons": _persons(pool, out, kept, person_kept),
    }
    atomic_write_bytes(path, json.dumps(payload, allow_nan=False).encode())
    return PseudoLabels(path, False, payload["provenance"])


def _calibration_json(calibration: Calibration | None, dev: Sequence[PersonRecord]) -> dict[str, Any] | None:
    if calibration is None:
        return None
    return {**calibration.to_json(), "dev_records": len(dev), "dev_ids_sha256": _ids_sha256(dev)}


def _rounded(values: np.ndarray, digits: int) -> list:
    """Nested lists with NaN → None (JSON null)."""
    return [None if not np.isfinite(v) else round(float(v), digits) for v in np.asarray(values).reshape(-1)]


def _persons(
    pool: list[PersonRecord], out: TeacherOutput, kept: np.ndarray, person_kept: np.ndarray
) -> list[dict[str, Any]]:
    persons = []
    for i, record in enumerate(pool):
        xy = _rounded(out.keypoints[i], 3)
        persons.append(
            {
                "id": record.record_id,
                "image": str(record.image_path),
                "box": [round(float(v), 3) for v in record.box],
                "keypoints": [None if x is None else [x, y] for x, y in zip(xy[0::2], xy[1::2])],
                "scores": _rounded(out.scores[i], 4),
                "spread": _rounded(out.spread[i], 5),
                "kept": [bool(k) for k in kept[i]],
                "person_kept": bool(person_kept[i]),
            }
        )
    return persons
