"""MGDA: the min-norm point of the convex hull of the task gradients.

Axes: t tasks, p flattened shared parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlzoo import _checks
from mtlzoo.weighting.base import GradientWeighting, task_index
from mtlzoo.weighting.gradients import gram_matrix, min_norm_weights, task_gradients
from mtlzoo.weighting.registry import register_weighting

NORMALISATIONS = ("none", "l2", "loss", "loss+")


@register_weighting("mgda")
class MGDA(GradientWeighting):
    """Multiple-gradient descent: the common descent direction of minimum norm.

    O. Sener, V. Koltun. "Multi-Task Learning as Multi-Objective Optimization." Advances in
    Neural Information Processing Systems 31 (NeurIPS), 2018. arXiv:1810.04650

    With ``g_t`` the gradient of ``L_t`` w.r.t. the shared parameters, scaled by ``1 / n_t``::

        alpha = argmin_{alpha in simplex} || einsum('t,tp->p', alpha, g / n) ||^2
        update = einsum('t,tp->p', alpha, g)

    ``normalisation`` picks ``n_t`` as in the paper's code: ``"none"`` 1, ``"l2"``
    ``||g_t||``, ``"loss"`` ``L_t``, ``"loss+"`` ``L_t ||g_t||``; the update uses the raw
    gradients, as the code's ``sum_t alpha_t L_t`` does. The loss normalisations expect
    positive losses; a zero ``n_t`` counts as 1. The returned weights are ``alpha``
    (sum 1), solved exactly (``gradients.min_norm_weights``): one task gives ``alpha = [1]``,
    two the closed form, more an active-set method checked against the optimality conditions.

    MGDA-UB (``upper_bound=True``, the default, the paper's efficient form): where the
    trainer hands over the shared representation ``Z`` (the encoder's output, for a model
    with an encoder trained on one batch a step), ``g_t`` are the gradients of ``L_t``
    w.r.t. ``Z`` instead, one cheap backward to ``Z`` batched over the tasks, and the update
    is the ordinary backward of ``sum_t alpha_t L_t`` (so every parameter, shared or not,
    gets the alpha-weighted gradient). Without ``Z`` (no encoder, an encoder without
    parameters, or one dataset per task with several forward passes a step), or with
    ``upper_bound=False``, ``g_t`` are the exact per-task gradients of the shared parameters.
    """

    def __init__(
        self, task_names: Sequence[str], *, normalisation: str = "none",
        upper_bound: bool = True,
    ) -> None:
        super().__init__(task_names)
        _checks.choice("normalisation", normalisation, NORMALISATIONS)
        _checks.boolean("upper_bound", upper_bound)
        self.normalisation, self.upper_bound = normalisation, upper_bound

    def backward(
        self,
        losses: dict[str, Tensor],
        shared: Sequence[Tensor],
        specific: Sequence[Tensor],
        representation: Tensor | None = None,
    ) -> Tensor:
        if not self.upper_bound or representation is None or not representation.requires_grad:
            return super().backward(losses, shared, specific)
        task_index(self.task_names, list(losses))  # names checked, at least one
        values = torch.stack(list(losses.values()))
        # (t, b*d): one backward to Z batched over the tasks; the graph is kept for the update
        grads, _ = task_gradients(values, [representation], retain_graph=True,
                                  batched=self.batched_backward)
        # under DDP each rank holds other rows of Z: the Gram matrix is the ranks' sum
        gram = gram_matrix(grads, self.rank_sum)
        alpha = self.alpha_from_gram(gram, values.detach()).to(values)  # fp32 under bf16
        (alpha.detach() * values).sum().backward()
        return alpha.detach()

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        alpha = self.alpha_from_gram(gram_matrix(grads), losses).to(grads)
        return alpha @ grads, alpha

    def alpha_from_gram(self, gram: Tensor, losses: Tensor) -> Tensor:
        """``alpha`` (t,), float64, from the (t, t) Gram matrix of the gradients."""
        scale = torch.ones_like(gram.diagonal())
        if self.normalisation in ("l2", "loss+"):
            scale = scale * gram.diagonal().sqrt()
        if self.normalisation in ("loss", "loss+"):
            scale = scale * losses.detach().to(gram)
        scale = torch.where(scale > 0, scale, 1.0)  # a zero norm or loss: leave g_t as is
        return min_norm_weights(gram / scale[:, None] / scale[None, :])
