"""Heatmap losses (torch)."""

from __future__ import annotations

import torch


def joint_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-joint SimpleBaseline MSE, (N, K): 0.5·mean over pixels of squared error, × weight (N, K) if given."""
    per_joint = 0.5 * (pred.float() - target.float()).pow(2).flatten(2).mean(-1)
    return per_joint * weight.float() if weight is not None else per_joint


def heatmap_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """SimpleBaseline's joints MSE averaged over joints and batch; pred, target (N, K, h, w). Returns a scalar."""
    return joint_mse(pred, target, weight).mean()


def multilevel_mse(
    preds: list[torch.Tensor], target: torch.Tensor, weight: torch.Tensor | None = None, aux_weight: float = 1.0
) -> torch.Tensor:
    """Main head + auxiliary heads (all at the target's resolution), each supervised by the same target."""
    loss = heatmap_mse(preds[0], target, weight)
    for aux in preds[1:]:
        loss = loss + aux_weight * heatmap_mse(aux, target, weight)
    return loss
