"""`supervised`: labeled data only — the baseline every semi-supervised method must beat."""

from __future__ import annotations

from training.losses import multilevel_mse
from training.methods import register_method
from training.methods.base import LabeledBatch, Method, RunContext, StepOutput, UnlabeledBatch
from training.ssl.monitor import labeled_mean_peak


@register_method("supervised")
class Supervised(Method):
    """Heatmap MSE on labeled crops; auxiliary (multi-level) heads, when the model has them, share the target."""

    def __init__(self, student, context: RunContext | None = None, aux_weight: float = 1.0):
        super().__init__(student, context)
        self.aux_weight = aux_weight

    def train_step(self, labeled: LabeledBatch, unlabeled: UnlabeledBatch | None, step: int) -> StepOutput:
        preds = self.student.forward_all(labeled.images)
        loss = multilevel_mse(preds, labeled.heatmaps, labeled.target_weight, self.aux_weight)
        logs = {
            "loss_sup": float(loss.detach()),
            "mean_peak_labeled": labeled_mean_peak(preds[0], labeled.target_weight),
        }
        return StepOutput(loss, logs)
