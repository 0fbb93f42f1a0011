"""Teachers: EMA/EMAN arithmetic, freezing, resume; self/peer teachers and BN statistics; the TRS reviewer."""

import copy

import pytest
import torch
from torch import nn

from training.methods.base import Method
from training.ssl.teachers import (
    EMATeacher,
    PeerTeacher,
    ReviewerTeacher,
    SelfTeacher,
    Teacher,
    teacher_parameters_frozen,
)

torch.set_num_threads(1)
X = torch.randn(4, 3, 16, 12, generator=torch.Generator().manual_seed(0))  # non-square crops


def tiny_net(seed: int = 0, k: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, k, 1))


def _bn_state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}


def _train_a_bit(net: nn.Module, seed: int) -> None:
    """Move params and BN running stats the way a training step would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    net.train()
    net(X * (1 + seed))


class _Holder(Method):
    def __init__(self, student: nn.Module, momentum: float = 0.9):
        super().__init__(student)
        self.teacher = EMATeacher(student, momentum=momentum)


# ------------------------------------------------------------------ EMA
@pytest.mark.parametrize("ema_buffers", [True, False])
def test_ema_update_is_m_old_plus_one_minus_m_student(ema_buffers):
    student = tiny_net()
    teacher = EMATeacher(student, momentum=0.9, ema_buffers=ema_buffers)
    _train_a_bit(student, 1)
    old = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    teacher.update(student, step=10)
    new, cur = teacher.model.state_dict(), student.state_dict()
    for name, value in new.items():
        if "num_batches" in name or ("running" in name and not ema_buffers):
            assert torch.equal(value, cur[name])
        else:
            assert torch.allclose(value, 0.9 * old[name] + 0.1 * cur[name], atol=1e-6), name
    assert not torch.allclose(new["1.running_mean"], old["1.running_mean"])  # BN stats do follow


def test_ema_warmup_copies_the_student_on_the_first_update():
    student = tiny_net()
    teacher = EMATeacher(student, momentum=0.999, warmup=True)
    _train_a_bit(student, 1)
    teacher.update(student, step=0)
    assert all(torch.equal(a, b) for a, b in zip(teacher.model.state_dict().values(), student.state_dict().values()))
    assert teacher.momentum_at(1) == 0.5 and teacher.momentum_at(10**6) == 0.999


def test_ema_teacher_has_no_grad_is_not_optimised_and_stays_in_eval_mode():
    method = _Holder(tiny_net())
    method.train()  # what the engine does
    assert not method.teacher.model.training and method.student.training
    assert teacher_parameters_frozen(method.teacher) and not teacher_parameters_frozen(method.student)
    teacher_ids = {id(p) for p in method.teacher.parameters()}
    optimizer = torch.optim.Adam(method.trainable_parameters(), lr=1e-3)
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimised and not optimised & teacher_ids
    assert optimised == {id(p) for p in method.student.parameters()}
    target = method.teacher.predict(X)
    assert not target.requires_grad and target.shape == (4, 3, 16, 12)
    loss = (method.student(X) - target).pow(2).mean()
    loss.backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    assert all(p.grad is not None for p in method.student.parameters())
    assert isinstance(method.teacher, Teacher) and method.teacher.ready


def test_ema_resume_round_trip_reproduces_the_teacher():
    a = _Holder(tiny_net(0))
    for step in range(3):
        _train_a_bit(a.student, step + 1)
        a.teacher.update(a.student, step)
    state = copy.deepcopy(a.state_dict())
    b = _Holder(tiny_net(7))  # a different init: everything must come from the state dict
    b.load_state_dict(state)
    assert torch.equal(a.teacher.predict(X), b.teacher.predict(X))
    _train_a_bit(a.student, 9)
    b.student.load_state_dict(a.student.state_dict())
    a.teacher.update(a.student, 3)
    b.teacher.update(b.student, 3)
    assert all(torch.equal(x, y) for x, y in zip(a.teacher.state_dict().values(), b.teacher.state_dict().values()))


# ------------------------------------------------------------------ self / peer
def test_self_teacher_train_bn_uses_batch_stats_without_touching_running_stats():
    student = tiny_net()
    _train_a_bit(student, 1)
    student.train()
    before = _bn_state(student)
    out = SelfTeacher(student, train_mode_bn=True).predict(X)
    after = _bn_state(student)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert student.training and not out.requires_grad
    reference = copy.deepcopy(student).train()
    with torch.no_grad():
        expected = reference(X)  # batch statistics (and this pass does move its running stats)
    assert torch.allclose(out, expected, atol=1e-6)
    assert not torch.equal(_bn_state(reference)["1.running_mean"], before["1.running_mean"])
    assert all(m.track_running_stats for m in student.modules() if isinstance(m, nn.BatchNorm2d))


def test_self_teacher_eval_mode_uses_running_stats_and_restores_the_mode():
    student = tiny_net()
    _train_a_bit(student, 1)
    student.train()
    out = SelfTeacher(student).predict(X)
    assert student.training and all(m.training for m in student.modules())
    with torch.no_grad():
        expected = copy.deepcopy(student).eval()(X)
    assert torch.allclose(out, expected, atol=1e-6) and not out.requires_grad


def test_peer_teacher_predicts_the_peer():
    student, peer = tiny_net(0), tiny_net(1)
    student.eval(), peer.eval()
    out = PeerTeacher(peer).predict(X)
    with torch.no_grad():
        assert torch.allclose(out, peer(X)) and not torch.allclose(out, student(X))


# ------------------------------------------------------------------ reviewer
def _set_marker(net: nn.Module, value: float) -> None:
    with torch.no_grad():
        net[3].bias.fill_(value)


def _marker(net: nn.Module) -> float:
    return float(net[3].bias[0])


def test_reviewer_every_k_keeps_the_last_snapshots_and_is_not_ready_before_the_first():
    student = tiny_net()
    reviewer = ReviewerTeacher(student, policy="every_k", k=2, keep=3)
    assert not reviewer.ready
    with pytest.raises(RuntimeError):
        reviewer.predict(X)
    for step in range(10):
        _set_marker(student, float(step))
        reviewer.update(student, step)
        if step == 0:
            assert not reviewer.ready
    assert [s for s, _ in reviewer.snapshots()] == [5, 7, 9]  # snapshots after steps 1,3,5,7,9; last three
    assert sorted(_marker(slot) for slot in reviewer.slots) == [5.0, 7.0, 9.0]
    assert teacher_parameters_frozen(reviewer)


@pytest.mark.parametrize("maximize, expected", [(True, [0.5, 0.6]), (False, [0.1, 0.2])])
def test_reviewer_best_keeps_the_best_metrics(maximize, expected):
    student = tiny_net()
    reviewer = ReviewerTeacher(student, policy="best", keep=2, maximize=maximize)
    reviewer.update(student, 0)  # no metric: no snapshot
    assert not reviewer.ready
    for step, metric in enumerate([0.1, 0.5, 0.3, 0.2, 0.6, float("nan")], start=1):
        _set_marker(student, metric)
        reviewer.update(student, step, metric)
    assert sorted(m for _, m in reviewer.snapshots()) == pytest.approx(expected)
    assert sorted(_marker(slot) for slot in reviewer.slots) == pytest.approx(expected)


def test_reviewer_predicts_the_mean_of_its_snapshots_and_round_trips():
    student = tiny_net()
    reviewer = ReviewerTeacher(student, policy="every_k", k=1, keep=2)
    snaps = []
    for step in range(2):
        _train_a_bit(student, step + 1)
        reviewer.update(student, step)
        snaps.append(copy.deepcopy(student).eval())
    reviewer.train()
    with torch.no_grad():
        expected = (snaps[0](X) + snaps[1](X)) / 2
    out = reviewer.predict(X)
    assert torch.allclose(out, expected, atol=1e-6) and not out.requires_grad
    fresh = ReviewerTeacher(tiny_net(5), policy="every_k", k=1, keep=2)
    fresh.load_state_dict(reviewer.state_dict())
    assert fresh.ready and fresh.snapshots() == reviewer.snapshots()
    assert torch.equal(fresh.predict(X), out)


def test_reviewer_can_snapshot_the_ema_teacher():
    student = tiny_net()
    ema = EMATeacher(student, momentum=0.5)
    reviewer = ReviewerTeacher(student, policy="every_k", k=1, keep=1, source="ema", ema=ema)
    _train_a_bit(student, 1)
    ema.update(student, 0)
    reviewer.update(student, 0)
    for a, b in zip(reviewer.slots[0].state_dict().values(), ema.model.state_dict().values()):
        assert torch.equal(a, b)
    assert not any(k.startswith("_ema") for k in reviewer.state_dict())
