"""`trs`: EMA teacher + reviewer + student, multi-level heads, Keypoint-Mix."""

from training.methods import register_method
from training.methods.consistency import ConsistencyMethod, ConsistencySpec


@register_method("trs")
class TeacherReviewerStudent(ConsistencyMethod):
    """Yun et al., "Teacher-Reviewer-Student" semi-supervised pose estimation (arXiv 2501.09565, 2025). An EMA
    teacher supervises the student's Keypoint-Mix hard view; a reviewer holding important historical parameters
    (snapshots of the EMA teacher every 250 steps, the last 2 kept: a criterion that needs no labels, so the
    training signal never depends on a split the method is scored on) adds a second supervision term; multi-level
    feature learning supervises auxiliary heatmap heads on several backbone stages (set `model.aux_stages` in the
    config) with every target. The EMA momentum scales with the schedule (ConsistencySpec.ema_momentum); λr = 0.5,
    the snapshot interval and count are our choices (the paper's values were not available).
    """

    defaults = ConsistencySpec(
        teacher="ema",
        reviewer="every_k",
        reviewer_source="ema",
        reviewer_every=250,
        reviewer_keep=2,
        paths=("keypoint_mix",),
        affine=True,
        lambda_r=0.5,
    )
