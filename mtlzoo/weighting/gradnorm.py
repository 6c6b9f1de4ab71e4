"""GradNorm: learn loss weights that balance the tasks' gradient norms.

Axes: t tasks (those present in the step), p flattened shared parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtlzoo import _checks
from mtlzoo.errors import MtlzooError
from mtlzoo.weighting.base import GradientWeighting, task_index
from mtlzoo.weighting.gradients import accumulate_flat, task_gradients
from mtlzoo.weighting.registry import register_weighting


@register_weighting("gradnorm")
class GradNorm(GradientWeighting):
    """Gradient normalisation with learnable task weights ``w_t`` (init 1).

    Z. Chen, V. Badrinarayanan, C.-Y. Lee, A. Rabinovich. "GradNorm: Gradient Normalization
    for Adaptive Loss Balancing in Deep Multitask Networks." International Conference on
    Machine Learning (ICML), 2018. arXiv:1711.02257

    With ``G_t = ||grad_shared L_t||`` and ``L_t(0)`` the first loss seen for task t::

        r_t = (L_t / L_t(0)) / mean_k (L_k / L_k(0))
        L_grad = sum_t | w_t G_t - mean_k(w_k G_k) r_t^alpha |     (the target held constant)

    ``backward`` adds ``dL_grad/dw`` to ``task_weights.grad`` (an ``nn.Parameter`` the trainer's
    optimizer updates) and gives the model the gradient of ``sum_t w_t L_t`` with ``w``
    held constant: shared parameters get ``einsum('t,tp->p', w, G)``, task-specific ones
    ``w_t grad L_t``. ``after_step()`` keeps ``w`` positive and rescales it to sum to T.

    The paper takes ``G_t`` on the last shared layer to save time; mtlzoo uses all shared
    parameters (the per-task gradients are computed anyway, in one batched backward).
    The returned weights are ``w`` of the tasks in the step.
    """

    initial_losses: Tensor

    def __init__(self, task_names: Sequence[str], *, alpha: float = 1.5) -> None:
        super().__init__(task_names)
        self.alpha = _checks.real("alpha", alpha)
        self.task_weights = nn.Parameter(torch.ones(len(self.task_names)))
        self.register_buffer("initial_losses", torch.full((len(self.task_names),), torch.nan))

    def backward(
        self,
        losses: dict[str, Tensor],
        shared: Sequence[Tensor],
        specific: Sequence[Tensor],
        representation: Tensor | None = None,
    ) -> Tensor:
        index = task_index(self.task_names, list(losses))
        values = torch.stack(list(losses.values()))
        shared_grads, specific_grads = task_gradients(values, shared, specific,
                                                       batched=self.batched_backward)
        update, weights = self._combine(self.summed(shared_grads), values.detach(), index)
        accumulate_flat(shared, self.share(update))
        accumulate_flat(specific, weights @ specific_grads)
        return weights

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        """For all the tasks, in order (``backward`` also handles a subset)."""
        if grads.shape[0] != len(self.task_names):
            raise MtlzooError(
                f"GradNorm.combine needs all {len(self.task_names)} tasks, got {grads.shape[0]}"
            )
        return self._combine(grads, losses, list(range(len(self.task_names))))

    def _combine(self, grads: Tensor, losses: Tensor, index: list[int]) -> tuple[Tensor, Tensor]:
        first = self.initial_losses[index]
        first = torch.where(first.isnan(), losses.to(first), first)
        self.initial_losses[index] = first
        tiny = torch.finfo(losses.dtype).tiny
        ratio = losses / first.to(losses).clamp_min(tiny)
        target_ratio = (ratio / ratio.mean().clamp_min(tiny)) ** self.alpha
        w = self.task_weights.detach()[index].to(grads)
        norms = grads.norm(dim=1)
        weighted = w * norms
        target = weighted.mean() * target_ratio
        grad_w = torch.zeros_like(self.task_weights)
        grad_w[index] = (torch.sign(weighted - target) * norms).to(grad_w)
        if self.task_weights.grad is None:
            self.task_weights.grad = grad_w
        else:
            self.task_weights.grad.add_(grad_w)
        return w @ grads, w

    @torch.no_grad()
    def after_step(self) -> None:
        self.task_weights.clamp_(min=1e-6)
        self.task_weights.mul_(len(self.task_names) / self.task_weights.sum())
