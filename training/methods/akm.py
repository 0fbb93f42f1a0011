"""`akm`: adaptive keypoint masking + dual-branch Mixup."""

from training.methods import register_method
from training.methods.consistency import ConsistencyMethod, ConsistencySpec


@register_method("akm")
class AdaptiveKeypointMasking(ConsistencyMethod):
    """Meng, Li, Jiang, "Semi-Supervised 2D Human Pose Estimation via Adaptive Keypoint Masking" (arXiv
    2404.14835). From the teacher's relative responses r = (h − Hmin)/(Hmax − Hmin), joints with r ≥ τ are easy;
    the mask count grows with the share of easy joints and masks sit on easy joints; extremely difficult samples get
    minimal masking. A second branch mixes two unlabeled images, Xm = αXi + (1 − α)Xj, and is trained towards both
    teachers' heatmaps: Lm = α‖f(Xm) − Hi‖² + (1 − α)‖f(Xm) − Hj‖². L = Ls + λu·Lu + λm·Lm. Teacher: EMA (our
    choice, as the paper's teacher–student setup). τ = 0.5, up to 5 masks, λm = 1 are our choices.
    """

    defaults = ConsistencySpec(teacher="ema", paths=("adaptive_mask",), affine=True, lambda_m=1.0, mixup_alpha=1.0)
