"""`continual`: the recipe the training worker runs on streams of unlabeled uploads."""

from training.methods import register_method
from training.methods.consistency import ConsistencyMethod, ConsistencySpec


@register_method("continual")
class Continual(ConsistencyMethod):
    """PoseLoop's streaming recipe, designed to start from an already-trained (served) model: an EMA teacher
    (stable targets, no cold start since the student is already good; momentum scaled to the job's steps), a
    reviewer keeping periodic EMA snapshots (guards against drift on a shifting stream; label-free, so the gate's
    split never shapes the training signal), adaptive keypoint masking as the hard view with a
    low confidence threshold (0.1, SSPCM's) so garbage uploads teach nothing, and a short ramp-up of the
    unsupervised weight. Components: Yun et al. 2025 (TRS) and Meng et al. (AKM); the combination is ours and is
    revisited with the LSP-SSL benchmark.
    """

    defaults = ConsistencySpec(
        teacher="ema",
        reviewer="every_k",
        reviewer_source="ema",
        reviewer_every=100,
        reviewer_keep=2,
        paths=("adaptive_mask",),
        affine=True,
        confidence_threshold=0.1,
        lambda_m=0.5,
        rampup_steps=200,
    )
