"""`posedual`: two networks, each teaching the other's hard view."""

from training.methods import register_method
from training.methods.consistency import ConsistencyMethod, ConsistencySpec


@register_method("posedual")
class PoseDual(ConsistencyMethod):
    """PoseDual (Xie et al., ICCV 2021): two students of the same architecture cross-teach — net A's hard view is
    built with net B's predicted joints (Joint Cutout) and supervised by B's easy-view heatmaps, and vice versa —
    which decorrelates their errors. The paper's two nets start from two different ImageNet inits; here the peer
    is the same head on the other ImageNet backbone the project has (EfficientNet-Lite0, fed the student's input
    normalisation), so the two nets differ from step one (`peer_init: copy` for warm starts). The first
    network is the one evaluated and exported; the ensemble is reported separately by the benchmark. Our choice:
    the soft targets are clamped to [0, 1] — unclamped, each net's overshoot became the other's target and the
    pair diverged on LSP (twice, at steps ~490 and ~690 of 1,000).
    """

    defaults = ConsistencySpec(
        teacher="peer", peer_init="backbone", paths=("joint_cutout",), affine=True, clamp_soft_targets=True
    )
