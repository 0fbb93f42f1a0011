"""Every training preset: builds from its registry name, computes a finite loss, and its unsupervised terms train
the student(s) — never a teacher (the USB MeanTeacher bug: a consistency loss that is silently zero)."""

import pytest
import torch
from torch import nn

from models.network import ModelConfig, build_model
from training.methods import LabeledBatch, UnlabeledBatch, available_methods, build_method

SSL_PRESETS = ["posecons", "posedual", "dsph", "trs", "akm", "continual"]


def _student(aux=()):
    torch.manual_seed(0)
    return _heatmap_scale(
        build_model(ModelConfig(pretrained=False, num_keypoints=14, head_channels=32, aux_stages=aux))
    )


def _heatmap_scale(net):
    """Final convs with heatmap-scale outputs (peaks ~1), so pseudo-labels are not all dropped."""
    for module in net.modules():
        if isinstance(module, nn.Conv2d) and module.out_channels == 14:
            nn.init.normal_(module.weight, std=0.3)
    return net


@torch.no_grad()
def _warm_bn(net, images):
    """Running BN statistics = this batch's (as after real training), so eval-mode teachers predict like the
    student instead of returning the ~1e-14 outputs of default statistics."""
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.momentum = 1.0
    net.train()
    net(images)
    for bn in bns:
        bn.momentum = 0.1


def _batches(n=4, h=64, w=48):
    g = torch.Generator().manual_seed(1)
    labeled = LabeledBatch(
        torch.randn(n, 3, h, w, generator=g), torch.rand(n, 14, h // 4, w // 4, generator=g), torch.zeros(n, 14)
    )  # zero weights: any gradient must come from unlabeled terms
    return labeled, UnlabeledBatch(torch.randn(n, 3, h, w, generator=g))


def test_all_presets_registered():
    assert set(SSL_PRESETS + ["supervised"]) <= set(available_methods())


@pytest.mark.parametrize("name", SSL_PRESETS)
def test_unsupervised_terms_train_students_not_teachers(name):
    torch.set_num_threads(1)
    aux = (2,) if name == "trs" else ()
    labeled, unlabeled = _batches()
    student = _student(aux)
    _warm_bn(student, unlabeled.images)
    # two random networks disagree everywhere: let dsph's uncertainty selection keep joints for this check
    params = {"uncertainty_threshold": 1e9} if name == "dsph" else {}
    method = build_method(name, student, guard_min_steps=1, **params)
    if method.peer is not None:
        _warm_bn(_heatmap_scale(method.peer), unlabeled.images)
    if method.reviewer is not None:  # give the reviewer a snapshot so its term is active too
        method.on_validation(50.0, 0)
        method.reviewer.update(method.student, method.spec.reviewer_every - 1)
    method.train()
    out = method.train_step(labeled, unlabeled, step=0)
    assert torch.isfinite(out.loss)
    assert out.logs["loss_sup"] == 0.0
    assert out.logs["mean_peak_labeled"] == 0.0  # no annotated joint in the batch: nothing is counted
    assert out.logs["loss_unsup"] > 0.0, "the unsupervised loss is silently zero"
    out.loss.backward()
    students = method.students()
    for net in students:
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads)
    trainable = {id(p) for p in method.trainable_parameters()}
    student_params = {id(p) for net in students for p in net.parameters()}
    assert trainable == student_params  # teachers (EMA, reviewer) never reach the optimizer
    for teacher in (method.ema, method.reviewer):
        if teacher is not None:
            assert all(p.grad is None for p in teacher.parameters())
    for key in ("mean_peak", "low_peak_fraction", "teacher_peak"):
        assert key in out.logs


def test_ema_teacher_follows_the_student_after_a_step():
    # an explicit momentum, and a step past the ramp-in (which copies the student on the first update)
    method = build_method("trs", _student((2,)), ema_momentum=0.999)
    before = [p.clone() for p in method.ema.model.parameters()]
    with torch.no_grad():
        for p in method.student.parameters():
            p.add_(1.0)
    method.after_optimizer_step(10_000)
    after = list(method.ema.model.parameters())
    assert all(torch.allclose(a, b + 0.001, atol=1e-5) for a, b in zip(after, before))


def test_unknown_params_are_refused():
    with pytest.raises(ValueError, match="unknown params"):
        build_method("posecons", _student(), lambda_typo=1.0)
    with pytest.raises((KeyError, ValueError)):
        build_method("posecons", _student(), paths=["no_such_augmentation"])


@pytest.mark.parametrize("name", ["posecons", "akm"])
def test_hard_views_can_be_kept_out_of_bn_running_statistics(name):
    """hard_view_bn_stats=False: after a step, BN running statistics equal those of the labeled forward alone
    (hard, masked and mixed views still train with their batch statistics); True: the hard views move them."""
    torch.set_num_threads(1)
    labeled, unlabeled = _batches()

    def running_stats(**params):
        method = build_method(name, _student(), **params)
        method.train()
        method.train_step(labeled, unlabeled, step=0)
        return torch.cat([m.running_mean for m in method.student.modules() if isinstance(m, nn.BatchNorm2d)])

    reference = _student()
    reference.train()
    with torch.no_grad():
        reference.forward_all(labeled.images)
    labeled_only = torch.cat([m.running_mean for m in reference.modules() if isinstance(m, nn.BatchNorm2d)])
    assert torch.allclose(running_stats(hard_view_bn_stats=False), labeled_only, atol=1e-6)
    assert not torch.allclose(running_stats(hard_view_bn_stats=True), labeled_only, atol=1e-4)


def test_posedual_clamps_soft_targets_to_the_codec_range():
    """Cross-teaching passes each net's overshoot to the other as a target; posedual clamps soft targets to
    [0, 1] (the range the codec encodes), and clamp_soft_targets=False hands the raw heatmaps through."""
    overshooting = torch.linspace(-0.5, 1.5, 2 * 14 * 16 * 12).reshape(2, 14, 16, 12)  # a teacher gone past 1
    clamped = build_method("posedual", _student())._pseudo(overshooting)
    assert torch.equal(clamped.heatmaps, overshooting.clamp(0, 1))
    assert clamped.weights.shape == (2, 14)
    raw = build_method("posedual", _student(), clamp_soft_targets=False)._pseudo(overshooting)
    assert torch.equal(raw.heatmaps, overshooting)


def test_supervised_logs_the_peak_of_its_annotated_joints():
    """`mean_peak_labeled` is the main head's mean peak over annotated joints only (the collapse statistics' labeled
    side), so a run's log can tell an unlabeled dip from the flat-heatmap phase of the labeled fit."""
    torch.set_num_threads(1)
    labeled, _ = _batches()
    weight = torch.zeros(4, 14)
    weight[:, :7] = 1.0
    labeled = LabeledBatch(labeled.images, labeled.heatmaps, weight)
    method = build_method("supervised", _student())
    method.train()
    out = method.train_step(labeled, None, step=0)
    with torch.no_grad():
        main = method.student.forward_all(labeled.images)[0]  # train-mode BN: the same batch gives the same maps
    expected = main.flatten(2).amax(-1)[:, :7].mean()
    assert out.logs["mean_peak_labeled"] == pytest.approx(float(expected), rel=1e-5)
    assert out.logs["mean_peak_labeled"] != pytest.approx(float(main.flatten(2).amax(-1).mean()), rel=1e-3)
