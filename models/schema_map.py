"""Teacher → student keypoint schemas, matched by joint name (`KeypointSchema.keypoints`).

All three schemas name limb joints alike and person-centric ("left_wrist"), so COCO-17 → LSP-14 maps the 12 limb
joints and leaves LSP's neck and head_top unlabeled (COCO has no such joints; its face points are not them).
Names that differ only by convention are mapped here, and only here, in NAME_ALIASES.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.schemas import KeypointSchema

# (source schema, target schema) → {target joint name: source joint name}, for joints that are the same point
# under different names. MPII's upper_neck is LSP's neck (the usual MPII → LSP conversion, e.g. HMR); MPII's
# thorax (between the shoulders) has no LSP counterpart.
NAME_ALIASES: dict[tuple[str, str], dict[str, str]] = {
    ("mpii16", "lsp14"): {"neck": "upper_neck"},
    ("lsp14", "mpii16"): {"upper_neck": "neck"},
}


def joint_map(source: KeypointSchema, target: KeypointSchema) -> np.ndarray:
    """(K_target,) int64: the source index of each target joint, −1 where the source has no such joint."""
    aliases = NAME_ALIASES.get((source.name, target.name), {})
    index = {name: i for i, name in enumerate(source.keypoints)}
    return np.array([index.get(aliases.get(name, name), -1) for name in target.keypoints], np.int64)


def map_joints(values: np.ndarray, mapping: np.ndarray, axis: int = -1) -> np.ndarray:
    """Reorder a source-schema array along its joint `axis` into the target schema; unmapped joints get NaN.

    E.g. keypoints (V, N, K_src, 2) with axis=2 → (V, N, K_target, 2); scores (V, N, K_src) with axis=-1."""
    values = np.asarray(values, np.float64)
    out = np.take(values, np.where(mapping >= 0, mapping, 0), axis=axis)
    missing: list[Any] = [slice(None)] * out.ndim
    missing[axis] = np.flatnonzero(mapping < 0)
    out[tuple(missing)] = np.nan
    return out
