"""CAGrad: the update that best improves the worst task near the mean gradient.

Axes: t tasks, p flattened shared parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from mtlzoo.weighting.base import GradientWeighting
from mtlzoo.weighting.gradients import frank_wolfe, gram_matrix
from mtlzoo.weighting.registry import check_real, register_weighting


@register_weighting("cagrad")
class CAGrad(GradientWeighting):
    """Conflict-averse gradient descent.

    B. Liu, X. Liu, X. Jin, P. Stone, Q. Liu. "Conflict-Averse Gradient Descent for
    Multi-task Learning." Advances in Neural Information Processing Systems 34 (NeurIPS),
    2021. arXiv:2110.14048

    With ``G`` the (t, p) task gradients, ``g0 = mean_t g_t`` and ``phi = c^2 ||g0||^2``,
    the paper's dual problem over the simplex::

        w = argmin_{w in simplex} w^T G g0 + sqrt(phi) ||G^T w||
        g_w = einsum('t,tp->p', w, G)
        update = (g0 + sqrt(phi) / ||g_w|| g_w) / (1 + c^2)

    solves ``max_d min_t g_t . d`` over the ball ``||d - g0|| <= sqrt(phi)``. The division
    by ``1 + c^2`` is the official code's default rescaling (``rescale=1``), not in the
    paper's formula. ``w`` is found on the (t, t) Gram matrix by Frank-Wolfe with an exact
    line search (``gradients.frank_wolfe``, from ``w = 1/t``). ``c = 0`` gives ``g0``
    exactly. The returned weights are the coefficients of the update,
    ``(1/t + sqrt(phi) / ||g_w|| w_t) / (1 + c^2)``.
    """

    def __init__(self, task_names: Sequence[str], *, c: float = 0.5) -> None:
        super().__init__(task_names)
        self.c = check_real("c", c)

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        t = grads.shape[0]
        if self.c == 0:
            return grads.mean(dim=0), grads.new_full((t,), 1 / t)
        w, lam = conflict_averse_weights(gram_matrix(grads), self.c)
        weights = ((1 / t + lam * w) / (1 + self.c**2)).to(grads)
        return weights @ grads, weights


def conflict_averse_weights(gram: Tensor, c: float) -> tuple[Tensor, float]:
    """CAGrad's ``w`` (t,) and ``lam = sqrt(phi) / ||g_w||``, from ``gram`` (float64 CPU)."""
    t = gram.shape[0]
    start = gram.new_full((t,), 1 / t)
    a = (gram @ start).tolist()  # a_t = g_t . g0
    rho = c * math.sqrt(max(sum(a) / t, 0.0))  # sqrt(phi) = c ||g0||
    tiny = torch.finfo(gram.dtype).tiny

    def gradient(w: list[float], mw: list[float]) -> list[float]:
        scale = rho / math.sqrt(max(sum(x * y for x, y in zip(w, mw, strict=True)), tiny))
        return [ai + scale * x for ai, x in zip(a, mw, strict=True)]

    def step(q0: float, q1: float, q2: float, to: int, away: int) -> float:
        # root of d/dy [y delta + rho sqrt(q0 + 2 y q1 + y^2 q2)], the derivative along d
        delta = a[to] - a[away]
        if rho == 0 or delta + rho * math.sqrt(max(q2, 0.0)) <= 0:
            return math.inf  # the objective falls all along d
        kappa = -delta / rho
        if q2 <= kappa**2:
            return 0.0  # the objective rises all along d
        return (-q1 + kappa * math.sqrt(max(q0 * q2 - q1 * q1, 0.0) / (q2 - kappa**2))) / q2

    w = frank_wolfe(gram, start, gradient, step) if rho > 0 else start
    norm = math.sqrt(max(float(w @ gram @ w), 0.0))
    return w, rho / norm if norm > 0 else 0.0
