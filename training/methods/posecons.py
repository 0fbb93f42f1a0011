"""`posecons`: one network teaches its own hard view from its detached easy view."""

from training.methods import register_method
from training.methods.consistency import ConsistencyMethod, ConsistencySpec


@register_method("posecons")
class PoseCons(ConsistencyMethod):
    """PoseCons (Xie et al., "An Empirical Study of the Collapsing Problem in Semi-Supervised 2D Human Pose
    Estimation", ICCV 2021). Naive consistency between equally hard views collapses to all-background; teaching a
    *hard* view (Joint Cutout + a random affine θ applied to image and target alike) from the detached *easy* view
    keeps the teacher more accurate than the student. Joint Cutout here uses correct geometry (x = column,
    y = row; the reference code swaps H and W). Raw soft targets, no confidence threshold, λu = 1, as published.
    Teacher passes run in eval mode (our choice: the reference runs them in train mode, which pollutes BN stats).
    """

    defaults = ConsistencySpec(teacher="self", paths=("joint_cutout",), affine=True)
