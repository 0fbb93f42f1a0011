"""`trs`: EMA teacher + reviewer + student, multi-level heads, Keypoint-Mix."""

from training.methods import register_method
from training.methods.consistency import ConsistencyMethod, ConsistencySpec


@register_method("trs")
class TeacherReviewerStudent(ConsistencyMethod):
    """Yun et al., "Teacher-Reviewer-Student" semi-supervised pose estimation (arXiv 2501.09565, 2025). An EMA
    teacher supervises the student's Keypoint-Mix hard view; a reviewer holding important historical parameters
    (snapshots of the student at its best validation scores) adds a second supervision term; multi-level feature
    learning supervises auxiliary heatmap heads on several backbone stages (set `model.aux_stages` in the config)
    with every target.
    Momentum 0.999, λr = 0.5 and keeping 2 snapshots are our choices (the paper's values were not available).
    """

    defaults = ConsistencySpec(
        teacher="ema",
        ema_momentum=0.999,
        reviewer="best",
        reviewer_source="student",
        reviewer_keep=2,
        paths=("keypoint_mix",),
        affine=True,
        lambda_r=0.5,
    )
