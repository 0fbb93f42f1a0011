"""What every method shares: named batches, the step output, and the Method interface."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from models.network import PoseNet


@dataclass
class LabeledBatch:
    images: torch.Tensor  # (N, 3, H, W) normalised
    heatmaps: torch.Tensor  # (N, K, h, w)
    target_weight: torch.Tensor  # (N, K)

    @classmethod
    def from_item(
        cls, item: dict, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format
    ) -> LabeledBatch:
        images = item["image"].to(device, non_blocking=True).contiguous(memory_format=memory_format)
        return cls(images, item["heatmaps"].to(device, non_blocking=True), item["target_weight"].to(device))


@dataclass
class UnlabeledBatch:
    images: torch.Tensor  # (N, 3, H, W) normalised easy view (base augmentation only)

    @classmethod
    def from_item(
        cls, item: dict, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format
    ) -> UnlabeledBatch:
        return cls(item["image"].to(device, non_blocking=True).contiguous(memory_format=memory_format))


@dataclass
class StepOutput:
    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RunContext:
    """What a method may know about the run it is part of (the Trainer passes it): the schedule length, so EMA
    horizons can scale with it, and the codec's Gaussian width, so re-rendered pseudo-heatmaps match the targets
    the student is trained on."""

    total_steps: int | None = None
    heatmap_sigma: float = 2.0


class Method(nn.Module):
    """Owns the networks it trains. `student` is the network that is validated, exported and served."""

    method_name: ClassVar[str] = ""
    needs_unlabeled: ClassVar[bool] = False

    def __init__(self, student: PoseNet, context: RunContext | None = None):
        super().__init__()
        self.student = student
        self.context = context or RunContext()

    def train_step(self, labeled: LabeledBatch, unlabeled: UnlabeledBatch | None, step: int) -> StepOutput:
        raise NotImplementedError

    def forward(self, labeled: LabeledBatch, unlabeled: UnlabeledBatch | None, step: int) -> StepOutput:
        """A step through `module(...)`, so DistributedDataParallel can wrap a method and average its gradients."""
        return self.train_step(labeled, unlabeled, step)

    def after_optimizer_step(self, step: int) -> None:
        """Hook for teacher updates (EMA, reviewer snapshots); nothing by default."""

    def on_validation(self, metric: float, step: int) -> None:
        """Hook called with the validation metric (e.g. a reviewer keeping best-on-validation snapshots)."""

    def collapse_reason(self) -> str | None:
        """Why training must stop because predictions collapsed (None while healthy)."""
        return None

    def students(self) -> list[PoseNet]:
        """Every trained network; dual methods return two, whose averaged heatmaps are the ensemble."""
        return [self.student]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
