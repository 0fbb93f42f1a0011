"""Components the consistency method composes: the peer network, shared easy views, BN-statistics control.

Pure helpers over torch modules and tensors; none holds training state.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from training.ssl import augment

if TYPE_CHECKING:
    from models.network import PoseNet


@contextlib.contextmanager
def frozen_bn_statistics(net: nn.Module) -> Iterator[None]:
    """Train-mode BN (batch statistics, gradients as usual) that leaves running_mean/var untouched (momentum 0)."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum


class Renormalized(nn.Module):
    """A network that expects another input normalisation, fed the student's: x' = x·(σ_s/σ_p) + (μ_s − μ_p)/σ_p
    per channel, so one batch (normalised for the student) serves a peer with another backbone."""

    scale: Tensor
    shift: Tensor

    def __init__(self, net: PoseNet, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.net = net
        ms, ss = torch.tensor(mean), torch.tensor(std)
        mp, sp = torch.tensor(net.mean), torch.tensor(net.std)
        self.register_buffer("scale", (ss / sp).view(1, 3, 1, 1))
        self.register_buffer("shift", ((ms - mp) / sp).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x * self.scale + self.shift)

    def forward_all(self, x: Tensor) -> list[Tensor]:
        return self.net.forward_all(x * self.scale + self.shift)


def build_peer(student: PoseNet, seed: int, how: str, backbone: str) -> nn.Module:
    """The second network of a dual method.

    fresh_head: the student's architecture and backbone init, a re-drawn head (the nets decorrelate through it
    and through their own hard views). backbone: the same head on another ImageNet backbone — the two nets
    then differ from the first step, as Xie et al.'s two-init PoseDual checkpoints do; it is fed the student's
    normalisation through `Renormalized`. copy: the student itself, for warm starts from a trained checkpoint.
    """
    if how == "backbone":
        from models.network import PoseNet

        with torch.random.fork_rng():
            torch.manual_seed(seed)
            peer = PoseNet(student.config.model_copy(update={"backbone": backbone}))
        if tuple(peer.mean) == tuple(student.mean) and tuple(peer.std) == tuple(student.std):
            return peer
        return Renormalized(peer, student.mean, student.std)
    peer_net = copy.deepcopy(student)
    if how == "copy":
        return peer_net
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for module in peer_net.head.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.normal_(module.weight, std=0.001)
    return peer_net


def random_theta(images: Tensor, generator: torch.Generator) -> Tensor:
    """Random scale/rotation θ that is a true rotation in pixels for this (non-square) crop size."""
    h, w = images.shape[-2:]
    return augment.random_affine(images.shape[0], generator, size=(w, h), device=images.device)


def invert(theta: Tensor) -> Tensor:
    """Inverse of affine_grid θ matrices (N, 2, 3)."""
    full = torch.cat([theta, theta.new_tensor([0, 0, 1]).expand(theta.shape[0], 1, 3)], 1)
    return torch.linalg.inv(full)[:, :2]


def easy_views(net: nn.Module, images: Tensor, thetas: list[Tensor]) -> list[Tensor]:
    """Heatmaps (N, K, h, w) of the identity view and of each affine view θ, mapped back to the identity frame.
    Both students of a dual method get the *same* θs, so their disagreement measures the nets, not the views."""
    views = [net(images)]
    for theta in thetas:
        views.append(augment.warp(net(augment.warp(images, theta)), invert(theta)))
    return views
