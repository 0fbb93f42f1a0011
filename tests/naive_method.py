"""The collapsing anti-example, kept for tests only: consistency between two equally hard views, each the other's
target with gradients through both (Xie et al. §3: this drifts to all-background heatmaps). Importing this module
registers it as method `naive_symmetric`; the production methods never offer it."""

from __future__ import annotations

import torch

from training.losses import heatmap_mse
from training.methods import register_method
from training.methods.consistency import ConsistencyMethod, UnlabeledTerms
from training.methods.parts import invert, random_theta
from training.ssl import augment


@register_method("naive_symmetric")
class NaiveSymmetric(ConsistencyMethod):
    """Two random affine views of the unlabeled batch; view B's prediction, mapped into view A's frame through
    θ_a∘θ_b⁻¹, is view A's target and vice versa (no detached easy view, no accuracy-superior teacher)."""

    def unlabeled_terms(self, x: torch.Tensor) -> UnlabeledTerms:
        theta_a, theta_b = random_theta(x, self.generator), random_theta(x, self.generator)
        pa = self.student(augment.warp(x, theta_a))
        pb = self.student(augment.warp(x, theta_b))
        pb_in_a = augment.warp(augment.warp(pb, invert(theta_b)), theta_a)
        zero = x.new_zeros(())
        return UnlabeledTerms(heatmap_mse(pa, pb_in_a), zero, zero, pa, None)
