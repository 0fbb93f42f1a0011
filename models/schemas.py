"""Keypoint schemas, defined once: names, left/right flip pairs, skeleton edges, OKS sigmas.

A schema travels with every exported model (ONNX metadata), so serving never needs this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class KeypointSchema:
    """One keypoint layout. Left/right are person-centric; indices are 0-based."""

    name: str
    keypoints: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    skeleton: tuple[tuple[int, int], ...]
    sigmas: tuple[float, ...] | None = None  # COCO OKS sigmas; None where the dataset defines none

    def __post_init__(self) -> None:
        k = len(self.keypoints)
        for a, b in (*self.flip_pairs, *self.skeleton):
            if not (0 <= a < k and 0 <= b < k):
                raise ValueError(f"{self.name}: index out of range in pair ({a}, {b})")
        if self.sigmas is not None and len(self.sigmas) != k:
            raise ValueError(f"{self.name}: {len(self.sigmas)} sigmas for {k} keypoints")

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoints)

    @property
    def flip_index(self) -> np.ndarray:
        """Permutation p such that keypoint j of a mirrored person is keypoint p[j] of the original."""
        index = np.arange(self.num_keypoints)
        for a, b in self.flip_pairs:
            index[a], index[b] = b, a
        return index

    def index(self, keypoint_name: str) -> int:
        return self.keypoints.index(keypoint_name)

    def to_metadata(self) -> dict[str, str]:
        """String key/values for ONNX `metadata_props` (readable with no Python from this repo)."""
        meta = {
            "poseloop.schema": self.name,
            "poseloop.keypoints": json.dumps(list(self.keypoints)),
            "poseloop.flip_pairs": json.dumps([list(p) for p in self.flip_pairs]),
            "poseloop.skeleton": json.dumps([list(p) for p in self.skeleton]),
        }
        if self.sigmas is not None:
            meta["poseloop.sigmas"] = json.dumps(list(self.sigmas))
        return meta

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> KeypointSchema:
        sigmas = meta.get("poseloop.sigmas")
        return cls(
            name=meta.get("poseloop.schema", "custom"),
            keypoints=tuple(json.loads(meta["poseloop.keypoints"])),
            flip_pairs=tuple(tuple(p) for p in json.loads(meta["poseloop.flip_pairs"])),
            skeleton=tuple(tuple(p) for p in json.loads(meta["poseloop.skeleton"])),
            sigmas=tuple(json.loads(sigmas)) if sigmas else None,
        )


COCO17 = KeypointSchema(
    name="coco17",
    keypoints=(
        "nose",
        "left_eye",
        "right_eye",
        "left_ear",
        "right_ear",
        "left_shoulder",
        "right_shoulder",
        "left_elbow",
        "right_elbow",
        "left_wrist",
        "right_wrist",
        "left_hip",
        "right_hip",
        "left_knee",
        "right_knee",
        "left_ankle",
        "right_ankle",
    ),
    flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
    skeleton=(
        (15, 13),
        (13, 11),
        (16, 14),
        (14, 12),
        (11, 12),
        (5, 11),
        (6, 12),
        (5, 6),
        (5, 7),
        (6, 8),
        (7, 9),
        (8, 10),
        (1, 2),
        (0, 1),
        (0, 2),
        (1, 3),
        (2, 4),
        (3, 5),
        (4, 6),
    ),
    sigmas=(
        0.026,
        0.025,
        0.025,
        0.035,
        0.035,
        0.079,
        0.079,
        0.072,
        0.072,
        0.062,
        0.062,
        0.107,
        0.107,
        0.087,
        0.087,
        0.089,
        0.089,
    ),
)

LSP14 = KeypointSchema(
    name="lsp14",
    keypoints=(
        "right_ankle",
        "right_knee",
        "right_hip",
        "left_hip",
        "left_knee",
        "left_ankle",
        "right_wrist",
        "right_elbow",
        "right_shoulder",
        "left_shoulder",
        "left_elbow",
        "left_wrist",
        "neck",
        "head_top",
    ),
    flip_pairs=((0, 5), (1, 4), (2, 3), (6, 11), (7, 10), (8, 9)),
    skeleton=(
        (0, 1),
        (1, 2),
        (5, 4),
        (4, 3),
        (2, 3),
        (2, 8),
        (3, 9),
        (8, 9),
        (6, 7),
        (7, 8),
        (11, 10),
        (10, 9),
        (8, 12),
        (9, 12),
        (12, 13),
    ),
    sigmas=None,
)

MPII16 = KeypointSchema(
    name="mpii16",
    keypoints=(
        "right_ankle",
        "right_knee",
        "right_hip",
        "left_hip",
        "left_knee",
        "left_ankle",
        "pelvis",
        "thorax",
        "upper_neck",
        "head_top",
        "right_wrist",
        "right_elbow",
        "right_shoulder",
        "left_shoulder",
        "left_elbow",
        "left_wrist",
    ),
    flip_pairs=((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)),
    skeleton=(
        (0, 1),
        (1, 2),
        (2, 6),
        (6, 3),
        (3, 4),
        (4, 5),
        (6, 7),
        (7, 8),
        (8, 9),
        (10, 11),
        (11, 12),
        (12, 7),
        (7, 13),
        (13, 14),
        (14, 15),
    ),
    sigmas=None,
)

SCHEMAS: dict[str, KeypointSchema] = {s.name: s for s in (COCO17, LSP14, MPII16)}

# LSP protocol: PCK@0.2 with torso = left shoulder <-> right hip; "limbs" = all joints but neck and head top.
LSP_TORSO = (LSP14.index("left_shoulder"), LSP14.index("right_hip"))
LSP_LIMB_JOINTS = tuple(range(12))


def get_schema(name: str) -> KeypointSchema:
    try:
        return SCHEMAS[name]
    except KeyError:
        raise KeyError(f"unknown keypoint schema {name!r}; known: {sorted(SCHEMAS)}") from None
