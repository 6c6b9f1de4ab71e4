"""Per-task gradients of many parameters in one vectorised backward, and the small solvers
that gradient methods run on their (t, t) Gram matrix.

Axes: t tasks, p flattened parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def task_gradients(
    losses: Tensor,
    shared: Sequence[Tensor],
    specific: Sequence[Tensor] = (),
    *,
    retain_graph: bool = False,
) -> tuple[Tensor, Tensor]:
    """The Jacobian of ``losses`` (t,) w.r.t. the parameters, one row per task.

    One backward pass batched over the t tasks (``is_grads_batched=True``), not t passes
    with ``retain_graph=True``. Returns ``(shared (t, p_shared), specific (t, p_specific))``;
    a parameter a loss does not reach gets zeros.
    """
    params = [*shared, *specific]
    eye = torch.eye(len(losses), dtype=losses.dtype, device=losses.device)
    grads = torch.autograd.grad(
        losses, params, grad_outputs=eye, is_grads_batched=True, allow_unused=True,
        materialize_grads=True, retain_graph=retain_graph,
    )
    flat = [g.reshape(len(losses), -1) for g in grads]
    empty = losses.new_zeros(len(losses), 0)
    shared_flat = torch.cat(flat[: len(shared)], dim=1) if shared else empty
    specific_flat = torch.cat(flat[len(shared) :], dim=1) if specific else empty
    return shared_flat, specific_flat


def accumulate_flat(params: Sequence[Tensor], flat: Tensor) -> None:
    """Add the slices of a flat (p,) vector to the parameters' ``.grad``."""
    offset = 0
    for param in params:
        piece = flat[offset : offset + param.numel()].view_as(param)
        offset += param.numel()
        if param.grad is None:
            param.grad = piece.clone()
        else:
            param.grad.add_(piece)


def gram_matrix(grads: Tensor) -> Tensor:
    """``einsum('tp,sp->ts')`` of the (t, p) task gradients, in float64 on the CPU.

    The product runs on the gradients' device in at least float32; the (t, t) result is
    what the small solvers below work on (one device-to-host copy per step).
    """
    wide = grads.to(torch.promote_types(grads.dtype, torch.float32))
    return (wide @ wide.T).cpu().double()


Gradient = Callable[[list[float], list[float]], list[float]]
StepRule = Callable[[float, float, float, int, int], float]


def frank_wolfe(
    gram: Tensor,
    weights: Tensor,
    gradient: Gradient,
    step: StepRule,
    *,
    max_iter: int = 1000,
    tol: float = 1e-10,
) -> Tensor:
    """Minimise a convex function of ``w`` over the simplex by pairwise Frank-Wolfe.

    ``gradient(w, M w)`` is the function's gradient (t,). Each iteration moves weight from
    the ``away`` task (the largest gradient among those with weight) to the ``to`` task
    (the smallest gradient, the Frank-Wolfe vertex), by the exact line search
    ``step(q0, q1, q2, to, away)`` along ``d = e_to - e_away``, where ``q0 = w^T M w``,
    ``q1 = d^T M w``, ``q2 = d^T M d``; the step is then capped at ``w_away``.
    Pairwise steps (Lacoste-Julien & Jaggi, NeurIPS 2015) converge linearly where plain
    Frank-Wolfe steps crawl when the optimum lies inside a face. It stops when the pairwise
    gap ``grad_away - grad_to`` (zero at a KKT point) is at most ``tol * max_t M_tt``, or
    when no step makes progress. The (t, t) problem is tiny: the loop runs on Python floats
    (float64), far cheaper per iteration than tensor calls.
    """
    m, w = gram.tolist(), weights.tolist()
    tasks = range(len(w))
    scale = max(m[i][i] for i in tasks)
    mw = [sum(mij * wj for mij, wj in zip(row, w, strict=True)) for row in m]
    for _ in range(max_iter):
        grad = gradient(w, mw)
        to = min(tasks, key=grad.__getitem__)
        away = max((i for i in tasks if w[i] > 0), key=grad.__getitem__)
        if grad[away] - grad[to] <= tol * scale:
            break
        q0 = sum(wi * x for wi, x in zip(w, mw, strict=True))
        q1 = mw[to] - mw[away]
        q2 = m[to][to] - 2 * m[to][away] + m[away][away]
        gamma = min(step(q0, q1, q2, to, away), w[away])
        if not gamma > 0:
            break  # no progress along the best pair: stuck at a kink of the function
        w[to] += gamma
        w[away] -= gamma
        mw = [x + gamma * (row[to] - row[away]) for x, row in zip(mw, m, strict=True)]
    return torch.tensor(w, dtype=gram.dtype)


def min_norm_weights(gram: Tensor, *, max_iter: int = 1000, tol: float = 1e-10) -> Tensor:
    """The weights ``w`` in the simplex minimising ``||sum_t w_t g_t||^2 = w^T M w``.

    ``gram`` is ``M`` (t, t), float64 on the CPU (see ``gram_matrix``). One task gives
    ``[1]``; two tasks the exact closed form: the weight of ``g_1`` is
    ``clip((g_2 - g_1).g_2 / ||g_1 - g_2||^2, 0, 1)``. More tasks start from the best such
    pair, as the MGDA reference code does, and run Frank-Wolfe (``frank_wolfe``) with its
    exact quadratic line search.
    """
    t = gram.shape[0]
    if t == 1:
        return gram.new_ones(1)
    diag = gram.diagonal()
    # every pair (i, j) at once: gamma_ij is g_i's weight on the segment [g_i, g_j]
    gap = diag[:, None] - 2 * gram + diag[None, :]
    gamma = ((diag[None, :] - gram) / gap.clamp_min(torch.finfo(gap.dtype).tiny)).clamp(0, 1)
    gamma = torch.where(gap > 0, gamma, 1.0)
    norms = gamma**2 * diag[:, None] + 2 * gamma * (1 - gamma) * gram + (1 - gamma) ** 2 * diag
    i, j = divmod(int(norms.argmin()), t)
    weights = gram.new_zeros(t)
    weights[i] += gamma[i, j]
    weights[j] += 1 - gamma[i, j]
    if t == 2:
        return weights

    def quadratic_step(q0: float, q1: float, q2: float, to: int, away: int) -> float:
        return -q1 / q2 if q2 > 0 else math.inf

    return frank_wolfe(gram, weights, lambda w, mw: mw, quadratic_step, max_iter=max_iter, tol=tol)
