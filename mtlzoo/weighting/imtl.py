"""IMTL-G: the update with equal projections onto every task's gradient direction.

Axes: t tasks, p flattened shared parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlzoo.weighting.base import GradientWeighting
from mtlzoo.weighting.gradients import gram_matrix
from mtlzoo.weighting.registry import register_weighting


@register_weighting("imtl")
class IMTL(GradientWeighting):
    """Impartial multi-task learning, gradient balance (IMTL-G).

    L. Liu, Y. Li, Z. Kuang, J.-H. Xue, Y. Chen, W. Yang, Q. Liao, W. Zhang. "Towards
    Impartial Multi-task Learning." International Conference on Learning Representations
    (ICLR), 2021.

    Find the update ``g = sum_t alpha_t g_t`` with ``sum_t alpha_t = 1`` whose projection
    onto every unit task gradient ``u_t = g_t / ||g_t||`` is the same (``g . (u_1 - u_t) = 0``).
    With the rows ``D_t = g_1 - g_t`` and ``U_t = u_1 - u_t`` for ``t = 2..T``, in closed form::

        alpha_{2..T} = g_1 U^T (D U^T)^{-1},     alpha_1 = 1 - sum_{t>=2} alpha_t

    computed from the (t, t) Gram matrix in float64; the inverse is a pseudo-inverse, so degenerate
    gradients (parallel or zero) still give an answer. The returned weights are ``alpha``;
    one task gives ``[1]``. Here ``g_t`` are the gradients of the shared parameters (the
    paper takes them w.r.t. the shared representation); IMTL-L, the loss-scale half of the
    paper, is not included.
    """

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        gram = gram_matrix(grads)
        norms = gram.diagonal().sqrt().clamp_min(torch.finfo(gram.dtype).tiny)
        dots = gram / norms[None, :]  # dots[i, j] = g_i . u_j
        g1_u = dots[0, 0] - dots[0, 1:]  # g_1 U^T
        d_u = g1_u[None, :] - dots[1:, 0, None] + dots[1:, 1:]  # D U^T
        rest = g1_u @ torch.linalg.pinv(d_u)
        alpha = torch.cat([1 - rest.sum(dim=0, keepdim=True), rest]).to(grads)
        return alpha @ grads, alpha
