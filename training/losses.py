"""Heatmap losses (torch)."""
from __future__ import annotations

import torch


def heatmap_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """SimpleBaseline's joints MSE: per joint 0.5·mean over pixels of squared error, × weight, mean over joints/batch.

    pred, target: (N, K, h, w); weight: (N, K) or None (all ones). Returns a scalar.
    """
    per_joint = 0.5 * (pred.float() - target.float()).pow(2).flatten(2).mean(-1)  # (N, K)
    if weight is not None:
        per_joint = per_joint * weight.float()
    return per_joint.mean()


def multilevel_mse(preds: list[torch.Tensor], target: torch.Tensor, weight: torch.Tensor | None = None,
                   aux_weight: float = 1.0) -> torch.Tensor:
    """Main head + auxiliary heads (all at the target's resolution), each supervised by the same target."""
    loss = heatmap_mse(preds[0], target, weight)
    for aux in preds[1:]:
        loss = loss + aux_weight * heatmap_mse(aux, target, weight)
    return loss
