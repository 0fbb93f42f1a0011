"""Teachers for data distillation: person records → keypoints in image pixels, scores and agreement.

A teacher runs every member (members.py) on every test-time view of every person, maps each view's keypoints
back to image pixels through that view's inverse affine (flipped views also swap left/right channels), maps them
into the target schema by joint name (models/schema_map.py) and averages them in image space, weighted by score. The
spread of the views and members around that average is the teacher's own doubt, which the filter uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from models.codec import Refinement
from models.geometry import compose_affine, flip_affine, invert_affine, transform_points, warp_image
from models.schema_map import joint_map, map_joints
from models.schemas import KeypointSchema, get_schema
from training.datasets.records import PersonRecord
from training.datasets.topdown import read_rgb
from training.distill.members import Member, load_member


@dataclass(frozen=True)
class TTAConfig:
    """Test-time views: every scale (crop region × scale, i.e. padding × scale) unflipped and, with `flip`,
    mirrored. Heatmap members decode each view with `refinement` (DARK: sub-pixel, what averaging needs)."""

    scales: tuple[float, ...] = (0.9, 1.0, 1.1)
    flip: bool = True
    refinement: Refinement = "dark"

    def views(self) -> list[tuple[float, bool]]:
        flips = (False, True) if self.flip else (False,)
        return [(scale, flip) for scale in self.scales for flip in flips]

    def to_json(self) -> dict[str, Any]:
        return {"scales": list(self.scales), "flip": self.flip, "refinement": self.refinement}


@dataclass(frozen=True)
class TeacherOutput:
    """Per person and target-schema joint; NaN everywhere for joints the teacher cannot predict.

    keypoints: (N, K, 2) image pixels, the score-weighted mean over views and members.
    scores: (N, K) mean score (heatmap peak, or MoveNet confidence) over views and members.
    spread: (N, K) largest distance of a view/member from that mean, in units of the box's longer side.
    """

    keypoints: np.ndarray
    scores: np.ndarray
    spread: np.ndarray

    @property
    def known(self) -> np.ndarray:
        """(N, K) bool: joints the teacher predicts at all (schema mapping)."""
        return np.isfinite(self.scores)


class Teacher(Protocol):
    @property
    def schema(self) -> KeypointSchema:
        """The target (student) schema of every output."""
        ...

    def provenance(self) -> dict[str, Any]:
        """JSON-ready identity: members (kind, path, sha256, crop/decode settings), TTA, target schema."""
        ...

    def predict(self, records: Sequence[PersonRecord]) -> TeacherOutput: ...


def aggregate(points: np.ndarray, scores: np.ndarray, box_sizes: np.ndarray) -> TeacherOutput:
    """Pool P predictions (views × members) per person: points (P, N, K, 2) image pixels, scores (P, N, K), NaN
    where a member lacks the joint; box_sizes (N,) pixels normalise the spread."""
    finite = np.isfinite(scores)
    weight = np.where(finite, np.clip(np.nan_to_num(scores), 1e-6, None), 0.0)
    total = weight.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (weight[..., None] * np.nan_to_num(points)).sum(0) / total[..., None]
        score = np.where(finite, scores, 0.0).sum(0) / finite.sum(0)
    distance = np.linalg.norm(points - mean[None], axis=-1)
    spread = np.where(finite, distance, -np.inf).max(0) / np.asarray(box_sizes, np.float64)[:, None]
    unknown = ~finite.any(0)
    mean[unknown], score[unknown], spread[unknown] = np.nan, np.nan, np.nan
    return TeacherOutput(mean, score, spread)


class EnsembleTeacher:
    """One or more members × the TTA views, pooled in image space (a single member is an ensemble of one)."""

    def __init__(
        self,
        members: Sequence[Member],
        schema: str | KeypointSchema,
        tta: TTAConfig | None = None,
        batch_size: int = 32,
    ):
        if not members:
            raise ValueError("a teacher needs at least one member")
        self.members = list(members)
        self.schema = get_schema(schema) if isinstance(schema, str) else schema
        self.tta = tta or TTAConfig()
        self.batch_size = batch_size
        self._maps = [joint_map(m.schema, self.schema) for m in self.members]
        for member, mapping in zip(self.members, self._maps):
            if not (mapping >= 0).any():
                raise ValueError(
                    f"{member.identity()['path']}: no {member.schema.name} joint maps to {self.schema.name}"
                )

    def provenance(self) -> dict[str, Any]:
        return {
            "schema": self.schema.name,
            "tta": self.tta.to_json(),
            "members": [m.identity() for m in self.members],
        }

    def predict(self, records: Sequence[PersonRecord]) -> TeacherOutput:
        records = list(records)
        if not records:
            raise ValueError("no records to label")
        points, scores = [], []
        for start in range(0, len(records), self.batch_size):
            p, s = self.predict_views(records[start : start + self.batch_size])
            points.append(p)
            scores.append(s)
        boxes = np.stack([r.box for r in records]).astype(np.float64)
        return aggregate(np.concatenate(points, 1), np.concatenate(scores, 1), boxes[:, 2:].max(1))

    def predict_views(self, records: Sequence[PersonRecord]) -> tuple[np.ndarray, np.ndarray]:
        """(P, n, K, 2) image-pixel keypoints and (P, n, K) scores in the target schema, P = members × views."""
        images = [read_rgb(r.image_path) for r in records]
        points, scores = [], []
        for member, mapping in zip(self.members, self._maps):
            size = member.input_size
            for scale, flip in self.tta.views():
                affines = np.stack([member.view_affine(r.box, scale) for r in records])
                if flip:  # mirror the crop: channel j of the mirrored person is joint flip_index[j] of this one
                    affines = np.stack([compose_affine(flip_affine(size.w), a) for a in affines])
                crops = np.stack([warp_image(image, a, size) for image, a in zip(images, affines)])
                keypoints, score = member.infer(crops)
                if flip:
                    keypoints, score = keypoints[:, member.schema.flip_index], score[:, member.schema.flip_index]
                image_points = transform_points(keypoints, invert_affine(affines)).astype(np.float64)
                points.append(map_joints(image_points, mapping, axis=1))
                scores.append(map_joints(score, mapping, axis=1))
        return np.stack(points), np.stack(scores)


def build_teacher(
    paths: str | Path | Sequence[str | Path],
    schema: str | KeypointSchema,
    tta: TTAConfig | None = None,
    threads: int = 0,
) -> EnsembleTeacher:
    """A teacher from model files (`best.pt`, PoseLoop ONNX, MoveNet ONNX; several = an ensemble), predicting
    in `schema`. `threads` caps onnxruntime's intra-op threads (0 = its default)."""
    tta = tta or TTAConfig()
    files = [paths] if isinstance(paths, (str, Path)) else list(paths)
    return EnsembleTeacher([load_member(p, tta.refinement, threads) for p in files], schema, tta)
