"""Easy→hard consistency: the one semi-supervised method class every preset configures.

A preset is a `ConsistencySpec` (declarative: teacher kind, reviewer, augmentation paths, pseudo-label
processing, loss weights) plus a docstring citing its paper; see posecons.py, posedual.py, dsph.py, trs.py, akm.py,
continual.py. The loop (training/engine.py) is shared by all of them.

Per step, for unlabeled images x (the easy view: base augmentation only):
1. teachers predict easy-view heatmaps T (no gradient): the student itself, the peer network, or an EMA teacher
   (optionally several views aggregated by pixel-wise max) → pseudo-labels (soft or threshold-and-refine) with
   per-joint weights;
2. each augmentation path turns x into a hard view using the teacher's joints, then one random affine θ warps the
   hard image *and* its target heatmaps (same grid_sample convention);
3. loss = supervised MSE + ramp·(λu·Σ paths MSE(student(hard), θ·T) + λr·reviewer term + λm·Mixup term).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from torch import nn

from training.losses import heatmap_mse, joint_mse, multilevel_mse
from training.methods.base import LabeledBatch, Method, StepOutput, UnlabeledBatch
from training.ssl import augment, pseudo
from training.ssl.monitor import CollapseGuard, collapse_stats
from training.ssl.teachers import EMATeacher, ReviewerTeacher

if TYPE_CHECKING:
    from models.network import PoseNet


@dataclass(frozen=True)
class ConsistencySpec:
    """Declarative recipe; every field can be overridden from the config's `method.params`."""

    teacher: Literal["self", "peer", "ema"] = "self"  # "peer" = two students teaching each other (dual)
    peer_init: Literal["fresh_head", "copy"] = "fresh_head"  # "copy" when warm-starting: a fresh head is untrained
    ema_momentum: float = 0.999
    reviewer: Literal["none", "best", "every_k"] = "none"
    reviewer_source: Literal["student", "ema"] = "ema"
    reviewer_every: int = 500
    reviewer_keep: int = 3
    paths: tuple[str, ...] = ("none",)  # hard-view paths (training.ssl.augment registry names)
    affine: bool = True  # shared random θ on top of every path
    path_reduction: Literal["sum", "mean"] = "sum"
    pseudo_label: Literal["soft", "refine"] = "soft"
    confidence_threshold: float = 0.0  # hard per-joint threshold on the teacher peak (0 = keep all)
    # True: soft targets are clamped to [0, 1], the range the codec encodes. Peer cross-teaching with raw targets
    # is a loop (A's overshoot is B's target, and back): posedual diverged at steps ~490 and ~690 on LSP.
    clamp_soft_targets: bool = False
    refine_threshold: float = 0.3
    easy_views: int = 1  # >1: also predict mirrored/affine views, aggregate by max
    uncertainty_threshold: float | None = None  # dual only: drop joints whose cross-student std is higher
    naive_symmetric: bool = False  # anti-example: consistency between two hard views (collapses)
    lambda_u: float = 1.0
    lambda_r: float = 0.5
    lambda_m: float = 0.0  # AKM dual-branch Mixup term
    mixup_alpha: float = 1.0
    rampup_steps: int = 0
    aux_weight: float = 1.0
    # False: forwards on hard/mixed unlabeled views normalise with their batch statistics but do not move BN's
    # running statistics (used at evaluation and serving), which then come from labeled crops only. Masked, mixed
    # and warped views have other statistics; letting them in costs 2.4 PCK limbs on LSP (docs/benchmarks.md).
    # True is the reference code's behaviour, kept for that ablation.
    hard_view_bn_stats: bool = False
    collapse_guard: bool = True
    guard_min_steps: int = 100
    guard_window: int = 50  # steps the collapse guard averages over
    seed: int = 0


class ConsistencyMethod(Method):
    """The composition engine; subclasses only set `defaults` (and a docstring)."""

    needs_unlabeled = True
    defaults: ClassVar[ConsistencySpec] = ConsistencySpec()

    def __init__(self, student: PoseNet, **params):
        super().__init__(student)
        known = {f.name for f in fields(ConsistencySpec)}
        unknown = set(params) - known
        if unknown:
            raise ValueError(f"{type(self).__name__}: unknown params {sorted(unknown)}")
        if "paths" in params:
            params["paths"] = tuple(params["paths"])
        self.spec = spec = replace(self.defaults, **params)
        for path in spec.paths:
            augment.check_path(path)
        self.peer = _second_init(student, spec.seed + 1, spec.peer_init) if spec.teacher == "peer" else None
        wants_ema = spec.teacher == "ema" or (spec.reviewer != "none" and spec.reviewer_source == "ema")
        self.ema = EMATeacher(student, momentum=spec.ema_momentum) if wants_ema else None
        self.reviewer = (
            ReviewerTeacher(
                student,
                policy=spec.reviewer,
                k=spec.reviewer_every,
                keep=spec.reviewer_keep,
                source=spec.reviewer_source,
                ema=self.ema,
            )
            if spec.reviewer != "none"
            else None
        )
        self.guard = (
            CollapseGuard(window=spec.guard_window, min_steps=spec.guard_min_steps) if spec.collapse_guard else None
        )
        self.generator = torch.Generator().manual_seed(spec.seed)

    # ------------------------------------------------------------------ helpers
    def students(self) -> list[PoseNet]:
        return [self.student] + ([self.peer] if self.peer is not None else [])

    @torch.no_grad()
    def _predict(self, net: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Detached easy-view heatmaps; eval mode so teacher passes never touch BN running statistics."""
        was = net.training
        net.eval()
        try:
            return _multi_view(net, images, self.spec.easy_views, self.generator)
        finally:
            net.train(was)

    def _teacher_heatmaps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """One easy-view prediction per student: the heatmaps that student is taught with."""
        spec = self.spec
        if spec.teacher == "peer":
            assert self.peer is not None  # built in __init__ for teacher="peer"
            a, b = self._predict(self.student, images), self._predict(self.peer, images)
            return [b, a]  # cross-teaching: A learns from B, B from A
        if spec.teacher == "ema":
            assert self.ema is not None  # built in __init__ for teacher="ema"
            return [self._predict(self.ema.model, images)]
        return [self._predict(self.student, images)]

    def _hard_view_bn(self, net: nn.Module):
        return contextlib.nullcontext() if self.spec.hard_view_bn_stats else _frozen_bn_statistics(net)

    def _pseudo(self, heatmaps: torch.Tensor) -> pseudo.PseudoLabels:
        spec = self.spec
        if spec.pseudo_label == "refine":
            return pseudo.threshold_and_refine(heatmaps, threshold=spec.refine_threshold)
        if spec.clamp_soft_targets:
            heatmaps = heatmaps.clamp(0.0, 1.0)
        return pseudo.PseudoLabels(heatmaps, pseudo.confidence_weights(heatmaps, threshold=spec.confidence_threshold))

    # ------------------------------------------------------------------ the step
    def train_step(self, labeled: LabeledBatch, unlabeled: UnlabeledBatch | None, step: int) -> StepOutput:
        spec = self.spec
        logs: dict[str, float] = {}
        losses = [
            multilevel_mse(net.forward_all(labeled.images), labeled.heatmaps, labeled.target_weight, spec.aux_weight)
            for net in self.students()
        ]
        loss_sup = sum(losses[1:], losses[0])  # one term per student
        logs["loss_sup"] = float(loss_sup.detach())
        if unlabeled is None:
            return StepOutput(loss_sup, logs)
        x = unlabeled.images
        if spec.naive_symmetric:
            loss_u, student_pred, teacher_ref = self._naive_symmetric(x)
            loss_r = loss_m = x.new_zeros(())
        else:
            loss_u, loss_r, loss_m, student_pred, teacher_ref = self._easy_to_hard(x)
        ramp = min(1.0, (step + 1) / spec.rampup_steps) if spec.rampup_steps else 1.0
        loss = loss_sup + ramp * (spec.lambda_u * loss_u + spec.lambda_r * loss_r + spec.lambda_m * loss_m)
        stats = collapse_stats(student_pred.detach(), teacher_ref)
        logs.update(
            loss_unsup=float(loss_u.detach()),
            loss_review=float(loss_r.detach()),
            loss_mix=float(loss_m.detach()),
            mean_peak=stats.mean_peak,
            low_peak_fraction=stats.low_peak_fraction,
            ramp=ramp,
        )
        if stats.agreement is not None:
            logs["agreement"] = stats.agreement
        if self.guard is not None:
            self.guard.update(stats)  # sticky: once fired it keeps its reason
        return StepOutput(loss, logs)

    def _easy_to_hard(self, x: torch.Tensor):
        spec = self.spec
        raw = self._teacher_heatmaps(x)
        targets = [self._pseudo(t) for t in raw]
        if self.peer is not None and spec.uncertainty_threshold is not None:
            targets = _drop_uncertain(raw, targets, spec.uncertainty_threshold)
        stride = x.shape[-1] / targets[0].heatmaps.shape[-1]
        theta = _random_theta(x, self.generator) if spec.affine else None
        loss_u = x.new_zeros(())
        first_pred: list[torch.Tensor] = []
        for path in spec.paths:
            for i, net in enumerate(self.students()):
                guide = targets[(i + 1) % len(targets)] if len(targets) > 1 else targets[0]  # the other's joints
                values, coords = pseudo.peaks(guide.heatmaps)
                hard = augment.apply_path(path, x, coords * stride, guide.weights > 0, values, self.generator)
                target = targets[i if len(targets) > 1 else 0]
                heat = target.heatmaps
                if theta is not None:
                    hard, heat = augment.warp(hard, theta), augment.warp(heat, theta)
                with self._hard_view_bn(net):
                    preds = net.forward_all(hard)
                loss_u = loss_u + multilevel_mse(preds, heat, target.weights, spec.aux_weight)
                if i == 0 and not first_pred:
                    first_pred = [preds[0], hard]
        if spec.path_reduction == "mean":
            loss_u = loss_u / len(spec.paths)
        student_pred, _ = first_pred  # (main heatmaps, hard view) of the first student's first path
        loss_r = x.new_zeros(())
        if self.reviewer is not None and self.reviewer.ready:
            review = self._pseudo(self.reviewer.predict(x))
            heat = augment.warp(review.heatmaps, theta) if theta is not None else review.heatmaps
            loss_r = heatmap_mse(student_pred, heat, review.weights)
        loss_m = self._mixup_term(x, targets[0]) if spec.lambda_m > 0 else x.new_zeros(())
        reference = augment.warp(targets[0].heatmaps, theta) if theta is not None else targets[0].heatmaps
        return loss_u, loss_r, loss_m, student_pred, reference

    def _mixup_term(self, x: torch.Tensor, target: pseudo.PseudoLabels) -> torch.Tensor:
        """AKM's dual-branch Mixup: Lm = α‖f(Xm) − Hi‖² + (1 − α)‖f(Xm) − Hj‖², Xm = αXi + (1 − α)Xj."""
        mixed, lam, perm = augment.mixup(x, alpha=self.spec.mixup_alpha, min_keep=0.0, generator=self.generator)
        with self._hard_view_bn(self.student):
            pred = self.student(mixed)
        per_i = joint_mse(pred, target.heatmaps, target.weights).mean(-1)
        per_j = joint_mse(pred, target.heatmaps[perm], target.weights[perm]).mean(-1)
        return (lam * per_i + (1 - lam) * per_j).mean()

    def _naive_symmetric(self, x: torch.Tensor):
        """Two equally hard views, each the other's target with gradients through both (collapses; for tests)."""
        theta_a, theta_b = _random_theta(x, self.generator), _random_theta(x, self.generator)
        pa = self.student(augment.warp(x, theta_a))
        pb = self.student(augment.warp(x, theta_b))
        # map both into the un-warped frame is not possible exactly; compare in view A's frame via θ_b⁻¹∘θ_a
        pb_in_a = augment.warp(augment.warp(pb, _invert(theta_b)), theta_a)
        return heatmap_mse(pa, pb_in_a), pa, None

    # ------------------------------------------------------------------ hooks
    def after_optimizer_step(self, step: int) -> None:
        if self.ema is not None:
            self.ema.update(self.student, step)
        if self.reviewer is not None and self.spec.reviewer == "every_k":
            self.reviewer.update(self.student, step)

    def on_validation(self, metric: float, step: int) -> None:
        if self.reviewer is not None and self.spec.reviewer == "best":
            self.reviewer.update(self.student, step, metric=metric)

    def collapse_reason(self) -> str | None:
        return self.guard.reason if self.guard is not None else None


# ---------------------------------------------------------------------- small pure helpers
@contextlib.contextmanager
def _frozen_bn_statistics(net: nn.Module):
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


def _second_init(student: PoseNet, seed: int, how: str) -> PoseNet:
    """The dual network: same architecture and backbone init, a differently initialised head (decorrelates).

    From a trained (warm-started) student the peer starts as a copy instead, so it can teach from step one; the
    two nets then decorrelate through their independent hard views and augmentation draws.
    """
    peer = copy.deepcopy(student)
    if how == "copy":
        return peer
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for module in peer.head.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(module.weight, std=0.001)
    return peer


def _multi_view(net: nn.Module, images: torch.Tensor, views: int, generator: torch.Generator) -> torch.Tensor:
    """Heatmaps of the identity view, max-aggregated with `views − 1` affine views mapped back (Yu et al.)."""
    out = net(images)
    if views <= 1:
        return out
    predictions = [out]
    for _ in range(views - 1):
        theta = _random_theta(images, generator)
        predictions.append(augment.warp(net(augment.warp(images, theta)), _invert(theta)))
    return pseudo.aggregate_views(predictions)


def _random_theta(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random scale/rotation θ that is a true rotation in pixels for this (non-square) crop size."""
    h, w = images.shape[-2:]
    return augment.random_affine(images.shape[0], generator, size=(w, h), device=images.device)


def _invert(theta: torch.Tensor) -> torch.Tensor:
    """Inverse of affine_grid θ matrices (N, 2, 3)."""
    full = torch.cat([theta, theta.new_tensor([0, 0, 1]).expand(theta.shape[0], 1, 3)], 1)
    return torch.linalg.inv(full)[:, :2]


def _drop_uncertain(
    raw: list[torch.Tensor], targets: list[pseudo.PseudoLabels], threshold: float
) -> list[pseudo.PseudoLabels]:
    """Select only joints the two students agree on: cross-student uncertainty (max pixel-wise std of their raw
    heatmaps, Yu et al.) above `threshold` zeroes that joint's weight in both students' targets."""
    u = pseudo.cross_student_uncertainty(raw[0], raw[1])
    keep = (u <= threshold).float()
    return [pseudo.PseudoLabels(t.heatmaps, t.weights * keep) for t in targets]
