"""Easy→hard consistency: the one semi-supervised method class every preset configures.

A preset is a `ConsistencySpec` (declarative: teacher kind, reviewer, augmentation paths, pseudo-label
processing, loss weights) plus a docstring citing its paper; see posecons.py, posedual.py, dsph.py, trs.py, akm.py,
continual.py. The loop (training/engine.py) is shared by all of them.

Per step, for unlabeled images x (the easy view: flip and a mild scale, `data.unlabeled_augment`):
1. teachers predict easy-view heatmaps T (no gradient): the student itself, the peer network, or an EMA teacher
   (optionally several affine views, the same for both students, aggregated by pixel-wise max) → pseudo-labels
   (soft or threshold-and-refine with the codec's σ) with per-joint weights; dual students are crossed or, with
   pool selection, share the least uncertain candidate;
2. each augmentation path turns x into a hard view using the joints of the heatmaps that teach that student, then
   one random affine θ warps the hard image *and* its target heatmaps (same grid_sample convention);
3. loss = supervised MSE + ramp·(λu·Σ paths MSE(student(hard), θ·T) + λr·reviewer term + λm·Mixup term).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from training.losses import heatmap_mse, joint_mse, multilevel_mse
from training.methods import parts
from training.methods.base import LabeledBatch, Method, RunContext, StepOutput, UnlabeledBatch
from training.methods.spec import ConsistencySpec
from training.ssl import augment, pseudo
from training.ssl.monitor import CollapseGuard, collapse_stats, labeled_mean_peak
from training.ssl.teachers import EMATeacher, ReviewerTeacher

if TYPE_CHECKING:
    from models.network import PoseNet


class ConsistencyMethod(Method):
    """The composition engine; subclasses only set `defaults` (and a docstring)."""

    needs_unlabeled = True
    defaults: ClassVar[ConsistencySpec] = ConsistencySpec()

    def __init__(self, student: PoseNet, context: RunContext | None = None, **params):
        super().__init__(student, context)
        try:
            self.spec = spec = ConsistencySpec.build(self.defaults, params)
        except ValueError as err:
            raise ValueError(f"{type(self).__name__}: {err}") from None
        for path in spec.paths:
            augment.check_path(path)
        self.peer = (
            parts.build_peer(student, spec.seed + 1, spec.peer_init, spec.peer_backbone)
            if spec.teacher == "peer"
            else None
        )
        self.ema = EMATeacher(student, momentum=self.ema_momentum(), warmup=True) if spec.uses_ema() else None
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

    def ema_momentum(self) -> float:
        """The spec's momentum, or one scaled to the schedule: the teacher's horizon 1/(1 − m) is `ema_horizon`
        of the run's steps (at least 10), e.g. 0.98 for 1,000 steps and 0.05 — where a fixed 0.999 would leave
        the teacher at 37 % of its initial weights after those 1,000 steps."""
        spec = self.spec
        if spec.ema_momentum is not None:
            return spec.ema_momentum
        steps = self.context.total_steps or 1000
        return 1.0 - 1.0 / max(10.0, spec.ema_horizon * steps)

    # ------------------------------------------------------------------ helpers
    def students(self) -> list[PoseNet]:
        return [self.student] + ([self.peer] if self.peer is not None else [])  # type: ignore[list-item]

    @torch.no_grad()
    def _views(self, net: nn.Module, images: torch.Tensor, thetas: list[torch.Tensor]) -> list[torch.Tensor]:
        """Detached easy-view heatmaps (identity + each θ, mapped back); eval mode, so teacher passes never touch
        BN running statistics."""
        was = net.training
        net.eval()
        try:
            return parts.easy_views(net, images, thetas)
        finally:
            net.train(was)

    def _teacher_targets(self, images: torch.Tensor) -> list[pseudo.PseudoLabels]:
        """The targets each student is taught with, in order of `students()`.

        Dual students see the same easy views (one set of θs for both), are crossed (A learns from B's
        heatmaps, B from A's) and, with pool_selection, both learn per joint from the least uncertain refined
        candidate; uncertainty_threshold then drops joints the two disagree on."""
        spec = self.spec
        thetas = [parts.random_theta(images, self.generator) for _ in range(spec.easy_views - 1)]
        if spec.teacher == "ema":
            assert self.ema is not None  # built in __init__ for teacher="ema"
            return [self._pseudo(pseudo.aggregate_views(self._views(self.ema.model, images, thetas)))]
        if spec.teacher == "self":
            return [self._pseudo(pseudo.aggregate_views(self._views(self.student, images, thetas)))]
        assert self.peer is not None  # built in __init__ for teacher="peer"
        views = [self._views(net, images, thetas) for net in (self.student, self.peer)]
        raw = [pseudo.aggregate_views(v) for v in views]
        own = [self._pseudo(r) for r in raw]
        if spec.pool_selection:
            spread = [pseudo.view_disagreement(v) for v in views]
            chosen = pseudo.select_by_uncertainty(own, spread)
            targets = [chosen, chosen]
        else:
            targets = [own[1], own[0]]  # cross-teaching
        if spec.uncertainty_threshold is not None:
            keep = (pseudo.cross_student_uncertainty(raw[0], raw[1]) <= spec.uncertainty_threshold).float()
            targets = [pseudo.PseudoLabels(t.heatmaps, t.weights * keep) for t in targets]
        return targets

    def _hard_view_bn(self, net: nn.Module):
        return contextlib.nullcontext() if self.spec.hard_view_bn_stats else parts.frozen_bn_statistics(net)

    def _pseudo(self, heatmaps: torch.Tensor) -> pseudo.PseudoLabels:
        spec = self.spec
        if spec.pseudo_label == "refine":
            # re-rendered with the codec's σ, so a refined target looks like a labeled one
            return pseudo.threshold_and_refine(
                heatmaps, threshold=spec.refine_threshold, sigma=self.context.heatmap_sigma
            )
        if spec.clamp_soft_targets:
            heatmaps = heatmaps.clamp(0.0, 1.0)
        return pseudo.PseudoLabels(heatmaps, pseudo.confidence_weights(heatmaps, threshold=spec.confidence_threshold))

    # ------------------------------------------------------------------ the step
    def train_step(self, labeled: LabeledBatch, unlabeled: UnlabeledBatch | None, step: int) -> StepOutput:
        spec = self.spec
        logs: dict[str, float] = {}
        preds = [net.forward_all(labeled.images) for net in self.students()]
        losses = [multilevel_mse(p, labeled.heatmaps, labeled.target_weight, spec.aux_weight) for p in preds]
        loss_sup = sum(losses[1:], losses[0])  # one term per student
        logs["loss_sup"] = float(loss_sup.detach())
        logs["mean_peak_labeled"] = labeled_mean_peak(preds[0][0], labeled.target_weight)
        if unlabeled is None:
            return StepOutput(loss_sup, logs)
        terms = self.unlabeled_terms(unlabeled.images)
        ramp = min(1.0, (step + 1) / spec.rampup_steps) if spec.rampup_steps else 1.0
        loss = loss_sup + ramp * (
            spec.lambda_u * terms.consistency + spec.lambda_r * terms.review + spec.lambda_m * terms.mix
        )
        stats = collapse_stats(terms.student_pred.detach(), terms.reference)
        logs.update(
            loss_unsup=float(terms.consistency.detach()),
            loss_review=float(terms.review.detach()),
            loss_mix=float(terms.mix.detach()),
            mean_peak=stats.mean_peak,
            low_peak_fraction=stats.low_peak_fraction,
            ramp=ramp,
        )
        if stats.agreement is not None:
            logs["agreement"] = stats.agreement
        if stats.reference_peak is not None:
            logs["teacher_peak"] = stats.reference_peak
        if self.guard is not None:
            self.guard.update(stats)  # sticky: once fired it keeps its reason
        return StepOutput(loss, logs)

    def unlabeled_terms(self, x: torch.Tensor) -> UnlabeledTerms:
        """Easy→hard: every student's hard views are built from the joints of the heatmaps that teach it, then
        one θ warps the hard image and its target alike."""
        spec = self.spec
        targets = self._teacher_targets(x)
        stride = x.shape[-1] / targets[0].heatmaps.shape[-1]
        theta = parts.random_theta(x, self.generator) if spec.affine else None
        loss_u = x.new_zeros(())
        first_pred: torch.Tensor | None = None
        for path in spec.paths:
            students = self.students()
            for net, target in zip(students, targets if len(targets) == len(students) else targets * len(students)):
                values, coords = pseudo.peaks(target.heatmaps)
                hard = augment.apply_path(path, x, coords * stride, target.weights > 0, values, self.generator)
                heat = target.heatmaps
                if theta is not None:
                    hard, heat = augment.warp(hard, theta), augment.warp(heat, theta)
                with self._hard_view_bn(net):
                    preds = net.forward_all(hard)
                loss_u = loss_u + multilevel_mse(preds, heat, target.weights, spec.aux_weight)
                if first_pred is None:
                    first_pred = preds[0]  # the first student's first path: what the collapse monitor watches
        assert first_pred is not None  # validate() guarantees at least one path
        if spec.path_reduction == "mean":
            loss_u = loss_u / len(spec.paths)
        loss_r = x.new_zeros(())
        if self.reviewer is not None and self.reviewer.ready:
            review = self._pseudo(self.reviewer.predict(x))
            heat = augment.warp(review.heatmaps, theta) if theta is not None else review.heatmaps
            loss_r = heatmap_mse(first_pred, heat, review.weights)
        loss_m = self._mixup_term(x, targets[0]) if spec.lambda_m > 0 else x.new_zeros(())
        reference = augment.warp(targets[0].heatmaps, theta) if theta is not None else targets[0].heatmaps
        return UnlabeledTerms(loss_u, loss_r, loss_m, first_pred, reference)

    def _mixup_term(self, x: torch.Tensor, target: pseudo.PseudoLabels) -> torch.Tensor:
        """AKM's dual-branch Mixup: Lm = α‖f(Xm) − Hi‖² + (1 − α)‖f(Xm) − Hj‖², Xm = αXi + (1 − α)Xj."""
        mixed, lam, perm = augment.mixup(x, alpha=self.spec.mixup_alpha, min_keep=0.0, generator=self.generator)
        with self._hard_view_bn(self.student):
            pred = self.student(mixed)
        per_i = joint_mse(pred, target.heatmaps, target.weights).mean(-1)
        per_j = joint_mse(pred, target.heatmaps[perm], target.weights[perm]).mean(-1)
        return (lam * per_i + (1 - lam) * per_j).mean()

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


@dataclass(frozen=True)
class UnlabeledTerms:
    """The unlabeled loss terms of one step and what the collapse monitor compares: the first student's
    hard-view prediction and the (warped) target it was taught with (None where there is no such target)."""

    consistency: torch.Tensor
    review: torch.Tensor
    mix: torch.Tensor
    student_pred: torch.Tensor
    reference: torch.Tensor | None
