"""`dsph`: dual students with denoised (threshold-and-refine) multi-view pseudo-heatmaps."""

from training.methods import register_method
from training.methods.consistency import ConsistencyMethod, ConsistencySpec


@register_method("dsph")
class DenoisedPseudoHeatmaps(ConsistencyMethod):
    """Yu et al., "Denoising and Selecting Pseudo-Heatmaps for Semi-Supervised Human Pose Estimation", WACV 2024.
    Dual students; each teacher prediction aggregates several augmented views (pixel-wise max after mapping back to
    one frame; both students see the *same* views), is thresholded and re-rendered as a clean Gaussian at its peak
    with the codec's σ (threshold-and-refine). Selection, our reading of the paper: the pool holds one refined
    candidate per student, each ranked per joint by how much that student's views disagree, and both students
    learn from the least uncertain one; joints on which the two students disagree (max pixel-wise std above a
    threshold) are dropped. The peer is the EfficientNet-Lite0 twin of the student (two different ImageNet inits).
    Strong multi-path hard views (JOCO and JCCM). View count (3), refine threshold (0.3) and uncertainty
    threshold (0.25) are our choices: the paper's values were not available.
    """

    defaults = ConsistencySpec(
        teacher="peer",
        peer_init="backbone",
        paths=("cut_occlude+cutout", "joint_cutout+cutmix"),
        affine=True,
        pseudo_label="refine",
        refine_threshold=0.3,
        easy_views=3,
        pool_selection=True,
        uncertainty_threshold=0.25,
        path_reduction="mean",
    )
