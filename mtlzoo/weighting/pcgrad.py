"""PCGrad: project each task gradient off the gradients it conflicts with.

Axes: t tasks, p flattened shared parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlzoo.tasks import Task
from mtlzoo.weighting.base import GradientWeighting
from mtlzoo.weighting.gradients import gram_matrix
from mtlzoo.weighting.registry import GeneratorState, register_weighting, seeded_generator


@register_weighting("pcgrad")
class PCGrad(GeneratorState, GradientWeighting):
    """Projecting conflicting gradients ("gradient surgery").

    T. Yu, S. Kumar, A. Gupta, S. Levine, K. Hausman, C. Finn. "Gradient Surgery for
    Multi-Task Learning." Advances in Neural Information Processing Systems 33 (NeurIPS),
    2020. arXiv:2001.06782

    Each task ``i`` starts from ``g_i^PC = g_i`` and visits the other tasks ``j`` in a
    random order (one permutation per task and step); where they conflict it removes the
    component along ``g_j``::

        if g_i^PC . g_j < 0:   g_i^PC <- g_i^PC - (g_i^PC . g_j) / ||g_j||^2  g_j
        update = sum_i g_i^PC

    The orders come from the weighting's own generator (``seed``; None takes one from
    torch's global RNG), checkpointed in ``state_dict()``. Every ``g_i^PC`` is a combination
    of the raw gradients, so the projections run on the (t, t) Gram matrix (float64, all
    tasks at once, one step per position in the orders): ``g_i^PC = sum_s c_is g_s`` and::

        w_s = sum_i c_is,     update = einsum('s,sp->p', w, grads)

    The returned weights are the weights applied, ``w``: the coefficient of each task's raw
    gradient in the update (1 for every task when no two gradients conflict).
    """

    def __init__(self, task_names: Sequence[str | Task], *, seed: int | None = None) -> None:
        super().__init__(task_names)
        self.generator = seeded_generator(seed)

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        t = grads.shape[0]
        gram = gram_matrix(grads)
        keys = torch.rand(t, t, generator=self.generator, dtype=torch.float64)
        orders = keys.argsort(dim=1)  # row i: the order in which task i meets the others
        tasks = torch.arange(t)
        coefs = torch.eye(t, dtype=torch.float64)  # g^PC = einsum('ts,sp->tp', coefs, grads)
        for others in orders.T:  # others[i]: the task that task i meets at this position
            dots = (coefs * gram[others]).sum(dim=1)  # g_i^PC . g_j
            conflict = (dots < 0) & (others != tasks)
            coefs[tasks, others] -= torch.where(conflict, dots / gram[others, others], 0.0)
        weights = coefs.sum(dim=0).to(grads)
        return weights @ grads, weights
