"""Top-down samples: person record → (augmented) affine crop → normalised tensor + heatmap targets.

One crop affine per sample maps image pixels to crop pixels; keypoints go through the same matrix, so image and
targets can never disagree. Random draws come from a per-sample generator seeded by (seed, epoch, index):
reproducible, and different across DataLoader workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from models.codec import HeatmapCodec
from models.geometry import (
    Size,
    box_to_center_scale,
    compose_affine,
    crop_affine,
    flip_affine,
    normalize_crop,
    transform_points,
    warp_image,
)
from models.schemas import get_schema
from training.config import AugmentConfig
from training.datasets.records import PersonRecord


@lru_cache(maxsize=8192)
def _read_rgb(path: str) -> np.ndarray:
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_rgb(path: str | Path) -> np.ndarray:
    """HxWx3 RGB uint8 (cached: datasets here are small; callers must not modify the array)."""
    return _read_rgb(str(path))


@dataclass(frozen=True)
class CropParams:
    scale: float = 1.0
    rotation: float = 0.0
    flip: bool = False
    shift: tuple[float, float] = (0.0, 0.0)  # crop centre offset, fractions of the crop region's (w, h)

    @classmethod
    def sample(cls, rng: np.random.Generator, cfg: AugmentConfig) -> CropParams:
        sf, rf = cfg.scale_factor, cfg.rotation_factor
        scale = float(np.clip(rng.normal(1.0, sf), 1 - sf, 1 + sf))
        rotation = float(np.clip(rng.normal(0.0, rf), -2 * rf, 2 * rf)) if rng.random() < cfg.rotation_prob else 0.0
        flip = bool(rng.random() < cfg.flip_prob)
        if cfg.shift_factor <= 0:  # nothing drawn: configs without shift keep their random streams
            return cls(scale, rotation, flip)
        dx, dy = (float(v) for v in rng.uniform(-cfg.shift_factor, cfg.shift_factor, 2))
        return cls(scale, rotation, flip, (dx, dy))


def sample_occlusion(rng: np.random.Generator, cfg: AugmentConfig, crop: Size) -> list[tuple[int, int, int, int]]:
    """Occlusion rectangles (x0, y0, x1, y1), crop pixels, end-exclusive, each inside the crop; [] when off.

    Nothing is drawn when `occlusion_prob` is 0, so configs without occlusion keep their random streams."""
    if cfg.occlusion_prob <= 0 or rng.random() >= cfg.occlusion_prob:
        return []
    short = min(crop.w, crop.h)
    boxes = []
    for _ in range(cfg.occlusion_boxes):
        w, h = (max(1, round(float(rng.uniform(*cfg.occlusion_size)) * short)) for _ in range(2))
        x0, y0 = int(rng.integers(0, crop.w - w + 1)), int(rng.integers(0, crop.h - h + 1))
        boxes.append((x0, y0, x0 + w, y0 + h))
    return boxes


def sample_affine(box: np.ndarray, out: Size, padding: float, params: CropParams) -> np.ndarray:
    """Image → crop affine for one person; a flip mirrors the crop (applied after the crop)."""
    center, size = box_to_center_scale(box, out.aspect, padding)
    center = center + np.asarray(params.shift, np.float32) * size
    matrix = crop_affine(center, size * params.scale, params.rotation, out)
    return compose_affine(flip_affine(out.w), matrix) if params.flip else matrix


class TopDownDataset(Dataset):
    """Labeled or unlabeled person crops.

    Item keys: image (3, H, W) float32 normalised; affine (2, 3) image→crop; index. Labeled records add
    heatmaps (K, h, w), target_weight (K,), keypoints (K, 2) in crop pixels.
    `augment=None` gives the deterministic evaluation crop.
    """

    def __init__(
        self,
        records: list[PersonRecord],
        codec: HeatmapCodec,
        mean,
        std,
        padding: float = 1.25,
        augment: AugmentConfig | None = None,
        seed: int = 0,
    ):
        if not records:
            raise ValueError("empty record list")
        self.records = records
        self.codec = codec
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        self.padding = padding
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.flip_index = get_schema(records[0].schema).flip_index

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def crop_params(self, index: int) -> CropParams:
        return self._draws(index)[0]

    def _draws(self, index: int) -> tuple[CropParams, list[tuple[int, int, int, int]]]:
        """Crop parameters, then occlusion rectangles, from the item's one generator (seed, epoch, index)."""
        if self.augment is None:
            return CropParams(), []
        rng = np.random.default_rng([self.seed, self.epoch, index])
        params = CropParams.sample(rng, self.augment)
        return params, sample_occlusion(rng, self.augment, self.codec.input_size)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        record = self.records[index]
        image = read_rgb(record.image_path)
        params, occlusion = self._draws(index)
        size = self.codec.input_size
        affine = sample_affine(record.box, size, self.padding, params)
        pixels = normalize_crop(warp_image(image, affine, size), self.mean, self.std)
        for x0, y0, x1, y1 in occlusion:
            pixels[:, y0:y1, x0:x1] = 0.0  # the normalisation mean; keypoint targets are unchanged
        item = {
            "image": torch.from_numpy(pixels),
            "affine": torch.from_numpy(affine.astype(np.float32)),
            "index": torch.tensor(index),
        }
        if record.keypoints is not None:
            keypoints = transform_points(record.keypoints, affine)
            labeled = np.asarray(record.visibility) > 0
            if params.flip:
                keypoints, labeled = keypoints[self.flip_index], labeled[self.flip_index]
            heatmaps, weight = self.codec.encode(keypoints, labeled)
            item.update(
                heatmaps=torch.from_numpy(heatmaps),
                target_weight=torch.from_numpy(weight),
                keypoints=torch.from_numpy(keypoints.astype(np.float32)),
            )
        return item
