"""`PersonRecord`: one person in one image, the common currency of every dataset loader.

Coordinate conventions (all loaders convert to these):
- Keypoints are image pixels, 0-based, pixel-centre: the centre of the pixel in row r, column c is
  (x, y) = (c, r). Datasets annotated in MATLAB (LSP, MPII) are shifted by -1 on loading.
- Boxes are (x, y, w, h) in the COCO convention (the image spans [0, W] x [0, H]). The half-pixel
  difference from the keypoint convention is below annotation noise and ignored, as in COCO,
  HRNet and MMPose.
- Visibility follows COCO: 0 not labeled, 1 labeled but occluded, 2 labeled and visible.
  Coordinates of joints with visibility 0 carry no meaning (loaders set them to 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.schemas import get_schema


def _frozen_array(value, dtype, shape: tuple[int | None, ...], name: str) -> np.ndarray:
    array = np.array(value, dtype=dtype, copy=True)
    if array.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, array.shape)):
        raise ValueError(f"{name}: expected shape {shape}, got {array.shape}")
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class PersonRecord:
    """One annotated (or unlabeled) person. Arrays are read-only copies: copy before modifying.

    Attributes:
        image_path: the image file.
        box: (4,) float32, xywh image pixels.
        keypoints: (K, 2) float32 image pixels (x = column, y = row); None for unlabeled persons.
        visibility: (K,) int8 in {0, 1, 2} (COCO semantics); None exactly when keypoints is None.
        schema: keypoint schema name ("coco17" | "lsp14" | "mpii16"); K must match it.
        record_id: unique, stable identifier such as "lsp/im0001" or "coco/<ann_id>".
        image_id: COCO image id (for pycocotools evaluation).
        area: COCO segmentation area (OKS scale).
        head_size: PCKh normaliser in pixels, already including any SC_BIAS factor.

    Equality and hashing are by identity (eq=False): numpy fields make value equality ambiguous.
    """

    image_path: Path
    box: np.ndarray
    keypoints: np.ndarray | None
    visibility: np.ndarray | None
    schema: str
    record_id: str
    image_id: int | None = None
    area: float | None = None
    head_size: float | None = None

    def __post_init__(self) -> None:
        k = get_schema(self.schema).num_keypoints
        object.__setattr__(self, "image_path", Path(self.image_path))
        object.__setattr__(self, "box", _frozen_array(self.box, np.float32, (4,), "box"))
        if (self.keypoints is None) != (self.visibility is None):
            raise ValueError(f"{self.record_id}: keypoints and visibility must both be set or both be None")
        if self.keypoints is not None:
            kpts = _frozen_array(self.keypoints, np.float32, (k, 2), f"{self.record_id} keypoints")
            vis = _frozen_array(self.visibility, np.int8, (k,), f"{self.record_id} visibility")
            if not np.isin(vis, (0, 1, 2)).all():
                raise ValueError(f"{self.record_id}: visibility values must be 0, 1 or 2")
            object.__setattr__(self, "keypoints", kpts)
            object.__setattr__(self, "visibility", vis)

    @property
    def is_labeled(self) -> bool:
        return self.keypoints is not None


def box_from_keypoints(
    keypoints: np.ndarray,
    visibility: np.ndarray | None,
    margin: float = 0.15,
    image_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Person box from the extent of the labeled joints, widened by `margin` x extent on each side.

    Same rule as LSPET `boxes.json` ("annotated extent plus a 15% margin").

    Args:
        keypoints: (K, 2) image pixels.
        visibility: (K,) COCO visibility; joints with 0 are ignored. None: every joint counts.
        margin: fraction of the extent's width (height) added on the left and right (top and bottom).
        image_size: (w, h); when given the box is clipped to [0, w] x [0, h].

    Returns:
        (4,) float32 xywh.
    """
    kpts = np.asarray(keypoints, dtype=np.float64).reshape(-1, 2)
    labeled = np.ones(len(kpts), bool) if visibility is None else np.asarray(visibility).reshape(-1) > 0
    if not labeled.any():
        raise ValueError("box_from_keypoints: no labeled keypoint")
    x0, y0 = kpts[labeled].min(axis=0)
    x1, y1 = kpts[labeled].max(axis=0)
    dx, dy = margin * (x1 - x0), margin * (y1 - y0)
    x0, x1, y0, y1 = x0 - dx, x1 + dx, y0 - dy, y1 + dy
    if image_size is not None:
        w, h = image_size
        x0, x1 = np.clip([x0, x1], 0, w)
        y0, y1 = np.clip([y0, y1], 0, h)
    return np.array([x0, y0, x1 - x0, y1 - y0], dtype=np.float32)


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(w, h) of an image file, from its header where possible (Pillow), else by decoding (OpenCV)."""
    try:
        from PIL import Image
    except ImportError:  # pillow comes with matplotlib; decode as a fallback
        pass
    else:
        with Image.open(path) as handle:
            return handle.size
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise OSError(f"cannot read image {path}")
    h, w = image.shape[:2]
    return w, h
