"""Where unlabeled targets come from: the student itself, a peer network, an EMA teacher, or a reviewer of
historical snapshots (methods.md §2, §6, §8, §11.3). A method config names the kind; the method builds it.

Ownership rules:
- SelfTeacher / PeerTeacher hold no weights of their own: they reference networks the method owns and trains
  (plain objects, not nn.Modules, so nothing is checkpointed twice).
- EMATeacher / ReviewerTeacher are nn.Modules holding frozen copies: assign them as attributes of the Method so
  `Method.state_dict()` (engine checkpoints, resume) and `.to(device)` include them. Their parameters have
  requires_grad=False, so `Method.trainable_parameters()` — and therefore the optimizer — never sees them
  (`teacher_parameters_frozen` checks it). Their frozen networks stay in eval mode even when the engine calls
  `method.train()`.
- predict() always returns detached main-head heatmaps (N, K, h, w), computed under no_grad.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


@runtime_checkable
class Teacher(Protocol):
    @property
    def ready(self) -> bool: ...

    def predict(self, images: Tensor) -> Tensor: ...

    def update(self, student: nn.Module, step: int, metric: float | None = None) -> None: ...


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy with requires_grad False, no .grad, in eval mode."""
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.grad = None
        p.requires_grad_(False)
    return twin.eval()


def teacher_parameters_frozen(module: nn.Module) -> bool:
    """True when no parameter of `module` requires grad (so trainable_parameters() and the optimizer skip it)."""
    return not any(p.requires_grad for p in module.parameters())


@contextmanager
def _mode(model: nn.Module, train: bool) -> Iterator[None]:
    """Temporarily put every submodule in train/eval mode; restores each module's own flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.train(train)
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextmanager
def _batch_stats_without_update(model: nn.Module) -> Iterator[None]:
    """Train-mode BN layers normalise with batch statistics but neither update running_mean/var nor count
    num_batches_tracked (track_running_stats is switched off for the pass: torch's _BatchNorm then passes no
    running buffers to F.batch_norm)."""
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    for m in layers:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in layers:
            m.track_running_stats = True


def _predict(model: nn.Module, images: Tensor, train_mode_bn: bool) -> Tensor:
    with torch.no_grad():
        if train_mode_bn:
            with _mode(model, True), _batch_stats_without_update(model):
                out = model(images)
        else:
            with _mode(model, False):
                out = model(images)
    return out.detach()


class SelfTeacher:
    """PoseCons: the student itself on the easy view, detached.

    train_mode_bn=False (default): eval mode, i.e. BN running statistics (and no dropout).
    train_mode_bn=True: the reference repos' behaviour — train mode, BN normalises with the batch's statistics —
    except that the pass does NOT update the running statistics (methods.md §9.4: in the repos it does, so the
    stats used at test time drift towards whatever pass ran last). Either way the student's module flags and BN
    buffers are unchanged afterwards.
    """

    ready = True

    def __init__(self, student: nn.Module, train_mode_bn: bool = False):
        self.model = student
        self.train_mode_bn = train_mode_bn

    def predict(self, images: Tensor) -> Tensor:
        return _predict(self.model, images, self.train_mode_bn)

    def update(self, student: nn.Module, step: int, metric: float | None = None) -> None:
        """Nothing to do: the teacher is the live network."""


class PeerTeacher(SelfTeacher):
    """PoseDual: the other (trained) network, detached. The method owns and optimises the peer; BN handling as
    in SelfTeacher."""

    def __init__(self, peer: nn.Module, train_mode_bn: bool = False):
        super().__init__(peer, train_mode_bn)


class _FrozenTeacher(nn.Module):
    """Base for teachers that own frozen copies: keeps them in eval mode whatever train() is called with."""

    def train(self, mode: bool = True) -> _FrozenTeacher:
        super().train(mode)
        for m in self.frozen_models():
            m.eval()
        return self

    def frozen_models(self) -> list[nn.Module]:
        raise NotImplementedError


class EMATeacher(_FrozenTeacher):
    """Mean teacher: θ_t ← m·θ_t + (1 − m)·θ_s after each optimizer step (call update() from
    Method.after_optimizer_step). Predicts in eval mode.

    ema_buffers=True is EMAN (Cai et al. 2021; Pose-MUM, methods.md §8): BN running_mean/var are averaged with the
    same momentum; False copies the student's buffers. Integer buffers (num_batches_tracked) are always copied.
    warmup=True uses Tarvainen & Valpola's m_t = min(m, 1 − 1/(step + 1)) (step = the engine's 0-based step),
    so the first update copies the student; off by default. 0.999 is the usual default, not a TRS number.
    """

    ready = True

    def __init__(self, student: nn.Module, momentum: float = 0.999, ema_buffers: bool = True, warmup: bool = False):
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.model = frozen_copy(student)
        self.momentum = momentum
        self.ema_buffers = ema_buffers
        self.warmup = warmup

    def frozen_models(self) -> list[nn.Module]:
        return [self.model]

    def momentum_at(self, step: int) -> float:
        return min(self.momentum, 1.0 - 1.0 / (step + 1)) if self.warmup else self.momentum

    @torch.no_grad()
    def update(self, student: nn.Module, step: int, metric: float | None = None) -> None:
        m = self.momentum_at(step)
        mine = dict(self.model.named_parameters())
        theirs = dict(student.named_parameters())
        if mine.keys() != theirs.keys():
            raise ValueError("student and EMA teacher have different parameter names")
        names = list(mine)
        torch._foreach_lerp_([mine[k] for k in names], [theirs[k].detach() for k in names], 1.0 - m)
        their_buffers = dict(student.named_buffers())
        for name, buf in self.model.named_buffers():
            src = their_buffers[name]
            if self.ema_buffers and buf.is_floating_point():
                buf.lerp_(src, 1.0 - m)
            else:
                buf.copy_(src)

    def predict(self, images: Tensor) -> Tensor:
        return _predict(self.model, images, train_mode_bn=False)


class ReviewerTeacher(_FrozenTeacher):
    """TRS reviewer (methods.md §6): keeps up to `keep` snapshots of "important historical parameters" and
    predicts the mean of their heatmaps (eval mode; one forward pass per snapshot).

    policy="every_k": a snapshot after every k-th optimizer step (when (step + 1) % k == 0), ring buffer of the
      last `keep`.
    policy="best": a snapshot whenever update() gets a metric that beats the worst kept one (or a slot is free);
      update() calls without a metric do nothing. Higher is better unless maximize=False; NaN metrics are ignored.
    source="student" snapshots the student passed to update(); source="ema" snapshots `ema.model` (call
      ema.update first). For policy="best" the metric should then describe the EMA.

    Slots are preallocated frozen copies, so state_dict keys do not depend on how many are filled and resume
    round-trips with strict loading. `ready` is False until the first snapshot: the method must skip the
    reviewer's loss term until then (predict raises).
    """

    # registered buffers (checkpointed with the slots), one entry per slot
    filled: Tensor  # (keep,) bool: the slot holds a snapshot
    slot_step: Tensor  # (keep,) long: optimizer step of the snapshot, -1 when empty
    slot_metric: Tensor  # (keep,) float64: its metric, NaN when empty or for every_k
    num_snapshots: Tensor  # () long: snapshots taken so far (every_k's ring position)
    _ema: EMATeacher | None  # set through __dict__: a reference, not a submodule

    def __init__(
        self,
        student: nn.Module,
        policy: Literal["best", "every_k"] = "every_k",
        k: int = 500,
        keep: int = 3,
        source: Literal["student", "ema"] = "student",
        ema: EMATeacher | None = None,
        maximize: bool = True,
    ):
        super().__init__()
        if policy not in ("best", "every_k"):
            raise ValueError(f"unknown reviewer policy {policy!r}")
        if source not in ("student", "ema"):
            raise ValueError(f"unknown reviewer source {source!r}")
        if source == "ema" and ema is None:
            raise ValueError("source='ema' needs the EMATeacher to snapshot (ema=...)")
        if keep < 1 or k < 1:
            raise ValueError("keep and k must be >= 1")
        self.policy, self.k, self.keep, self.source, self.maximize = policy, k, keep, source, maximize
        self.__dict__["_ema"] = ema  # a reference, not a submodule: the method owns (and checkpoints) the EMA
        self.slots = nn.ModuleList(frozen_copy(student) for _ in range(keep))
        self.register_buffer("filled", torch.zeros(keep, dtype=torch.bool))
        self.register_buffer("slot_step", torch.full((keep,), -1, dtype=torch.long))
        self.register_buffer("slot_metric", torch.full((keep,), math.nan, dtype=torch.float64))
        self.register_buffer("num_snapshots", torch.zeros((), dtype=torch.long))

    def frozen_models(self) -> list[nn.Module]:
        return list(self.slots)

    @property
    def ready(self) -> bool:
        return bool(self.filled.any())

    def snapshots(self) -> list[tuple[int, float | None]]:
        """(step, metric) of the kept snapshots, oldest first (metric None for every_k)."""
        rows = zip(self.filled.tolist(), self.slot_step.tolist(), self.slot_metric.tolist())
        return sorted((step, None if math.isnan(metric) else metric) for f, step, metric in rows if f)

    @torch.no_grad()
    def _store(self, slot: int, source: nn.Module, step: int, metric: float) -> None:
        target = self.slots[slot]
        src = dict(source.state_dict())
        for name, t in target.state_dict().items():
            t.copy_(src[name])
        self.filled[slot] = True
        self.slot_step[slot] = step
        self.slot_metric[slot] = metric
        self.num_snapshots += 1

    def update(self, student: nn.Module, step: int, metric: float | None = None) -> None:
        source = student
        if self.source == "ema":
            assert self._ema is not None  # __init__ requires it for source="ema"
            source = self._ema.model
        if self.policy == "every_k":
            if (step + 1) % self.k == 0:
                self._store(int(self.num_snapshots) % self.keep, source, step, math.nan)
            return
        if metric is None or math.isnan(metric):
            return
        score = metric if self.maximize else -metric
        free = (~self.filled).nonzero()
        if len(free):
            self._store(int(free[0]), source, step, metric)
            return
        scores = self.slot_metric if self.maximize else -self.slot_metric
        worst = int(scores.argmin())
        if score > float(scores[worst]):
            self._store(worst, source, step, metric)

    def predict(self, images: Tensor) -> Tensor:
        if not self.ready:
            raise RuntimeError("reviewer has no snapshot yet: check `ready` and skip its loss term")
        filled = self.filled.tolist()
        outs = [_predict(slot, images, train_mode_bn=False) for slot, f in zip(self.slots, filled) if f]
        return torch.stack(outs).mean(0)
