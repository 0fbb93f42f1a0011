"""PyTorch inference over person records (evaluation and the `predict` command's torch path)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from models.codec import HeatmapCodec
from models.schemas import get_schema
from training.datasets.records import PersonRecord
from training.datasets.topdown import TopDownDataset


@dataclass
class Predictions:
    keypoints: np.ndarray  # (N, K, 2) source-image pixels
    scores: np.ndarray  # (N, K) heatmap peak values


class HeatmapEnsemble(torch.nn.Module):
    """Averages the heatmaps of several networks (the two-net result of dual methods)."""

    def __init__(self, members: Sequence[torch.nn.Module]):
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.train(members[0].training)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(images) for m in self.members]).mean(0)


@torch.inference_mode()
def predict_heatmaps(
    model: torch.nn.Module, images: torch.Tensor, flip_index: np.ndarray | None, codec: HeatmapCodec
) -> np.ndarray:
    """(N, 3, H, W) → (N, K, h, w) numpy; with `flip_index` averages with the flipped-back mirrored pass."""
    heatmaps = model(images).float().cpu().numpy()
    if flip_index is not None:
        mirrored = model(images.flip(-1)).float().cpu().numpy()
        heatmaps = 0.5 * (heatmaps + codec.flip_back(mirrored, flip_index))
    return heatmaps


def predict_records(
    model: torch.nn.Module,
    records: list[PersonRecord],
    codec: HeatmapCodec,
    mean,
    std,
    padding: float = 1.25,
    flip_test: bool = False,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
) -> Predictions:
    """Keypoints in image pixels for each record's box (eval crop, no augmentation).

    Always runs with contiguous (NCHW) weights: a model trained channels_last gives slightly different floats,
    enough to move a joint across a PCK threshold, so the validation logged during training and any later
    re-score of the saved checkpoint would disagree."""
    dataset = TopDownDataset(records, codec, mean, std, padding=padding, augment=None)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    flip_index = get_schema(records[0].schema).flip_index if flip_test else None
    was_training = model.training
    channels_last = _is_channels_last(model)
    model.eval()
    if channels_last:
        model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # Module.to's stubs omit it
    keypoints, scores = [], []
    try:
        for item in loader:
            heatmaps = predict_heatmaps(model, item["image"].to(device), flip_index, codec)
            crop_kpts, crop_scores = codec.decode(heatmaps)
            keypoints.append(codec.to_image(crop_kpts, item["affine"].numpy()))
            scores.append(crop_scores)
    finally:
        model.train(was_training)
        if channels_last:
            model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return Predictions(np.concatenate(keypoints), np.concatenate(scores))


def _is_channels_last(model: torch.nn.Module) -> bool:
    """Whether the model's 4-D weights are stored NHWC (the trainer's channels_last option)."""
    weights = [p for p in model.parameters() if p.dim() == 4]
    return (
        bool(weights) and not weights[0].is_contiguous() and weights[0].is_contiguous(memory_format=torch.channels_last)
    )
