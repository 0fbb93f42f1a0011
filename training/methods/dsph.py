"""`dsph`: dual students with denoised (threshold-and-refine) multi-view pseudo-heatmaps."""

from training.methods import register_method
from training.methods.consistency import ConsistencyMethod, ConsistencySpec


@register_method("dsph")
class DenoisedPseudoHeatmaps(ConsistencyMethod):
    """Yu et al., "Denoising and Selecting Pseudo-Heatmaps for Semi-Supervised Human Pose Estimation", WACV 2024.
    Dual students; each teacher prediction aggregates several augmented views (pixel-wise max after mapping back to
    one frame), is thresholded and re-rendered as a clean Gaussian at its peak (threshold-and-refine), and joints
    on which the two students disagree (max pixel-wise std above a threshold) are dropped — our reading of the
    uncertainty-guided selection. Strong multi-path hard views (JOCO and JCCM). View count (3), refine threshold
    (0.3) and uncertainty threshold (0.25) are our choices: the paper's values were not available.
    """

    defaults = ConsistencySpec(
        teacher="peer",
        paths=("cut_occlude+cutout", "joint_cutout+cutmix"),
        affine=True,
        pseudo_label="refine",
        refine_threshold=0.3,
        easy_views=3,
        uncertainty_threshold=0.25,
        path_reduction="mean",
    )
