"""Per-task gradients of many parameters in one vectorised backward, and the small solvers
that gradient methods run on their (t, t) Gram matrix.

Axes: t tasks, p flattened parameters.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from mtlzoo.errors import MtlzooError


def task_gradients(
    losses: Tensor,
    shared: Sequence[Tensor],
    specific: Sequence[Tensor] = (),
    *,
    retain_graph: bool = False,
    batched: bool = True,
) -> tuple[Tensor, Tensor]:
    """The Jacobian of ``losses`` (t,) w.r.t. the parameters, one row per task.

    One backward pass batched over the t tasks (``is_grads_batched=True``), not t passes
    with ``retain_graph=True``; ``batched=False`` takes the t passes (a compiled model's
    backward cannot be batched). Returns ``(shared (t, p_shared), specific (t, p_specific))``;
    a parameter a loss does not reach gets zeros.
    """
    params = [*shared, *specific]
    if batched:
        eye = torch.eye(len(losses), dtype=losses.dtype, device=losses.device)
        grads = torch.autograd.grad(
            losses, params, grad_outputs=eye, is_grads_batched=True, allow_unused=True,
            materialize_grads=True, retain_graph=retain_graph,
        )
    else:
        rows = [
            torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True,
                                retain_graph=retain_graph or task < len(losses) - 1)
            for task, loss in enumerate(losses)
        ]
        grads = tuple(torch.stack(per_param) for per_param in zip(*rows, strict=True))
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


def gram_matrix(grads: Tensor, rank_sum: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """``einsum('tp,sp->ts')`` of the (t, p) task gradients, in float64 on the CPU.

    The product runs on the gradients' device in at least float32; the (t, t) result is
    what the small solvers below work on (one device-to-host copy per step). ``rank_sum``
    (under DDP, where each rank holds other columns p): the product summed over the ranks.
    """
    wide = grads.to(torch.promote_types(grads.dtype, torch.float32))
    product = wide @ wide.T
    if rank_sum is not None:
        product = rank_sum(product)
    return product.cpu().double()


EPS = sys.float_info.epsilon
KKT_TOL = 1e-10  # of max_t M_tt: how far min_norm_weights may miss the optimality conditions


def check_gram(gram: Tensor) -> None:
    """A (t, t) matrix, t >= 1, of finite values; else ``MtlzooError`` naming the shape or
    the first bad entry."""
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] == 0:
        raise MtlzooError(
            f"gram must be a (t, t) matrix with t >= 1, got shape {tuple(gram.shape)}"
        )
    if not gram.isfinite().all():
        i, j = (~gram.isfinite()).nonzero()[0].tolist()
        raise MtlzooError(f"gram must be finite, got {gram[i, j].item()} at ({i}, {j})")


def min_norm_weights(gram: Tensor) -> Tensor:
    """The weights ``w`` in the simplex minimising ``||sum_t w_t g_t||^2 = w^T M w``, exactly.

    ``gram`` is ``M`` (t, t), float64 on the CPU (see ``gram_matrix``). One task gives
    ``[1]``; two tasks the closed form: the weight of ``g_1`` is
    ``clip((g_2 - g_1).g_2 / ||g_1 - g_2||^2, 0, 1)``. More tasks: an active-set method
    (``min_norm_active_set``) on ``M / max_t M_tt`` with its negative eigenvalues (rounding,
    in a Gram matrix) set to 0, whose answer is checked against the optimality conditions:
    ``(M w)_t >= w^T M w`` for every task, with equality where ``w_t > 0``, to
    ``KKT_TOL * max_t M_tt``. A miss raises ``MtlzooError`` rather than return a point that
    is not the minimum.
    """
    check_gram(gram)
    t = gram.shape[0]
    if t == 1:
        return gram.new_ones(1)
    if t == 2:
        (a, c), (c_t, b) = gram.tolist()
        c = (c + c_t) / 2
        gap = a - 2 * c + b
        first = min(max((b - c) / gap, 0.0), 1.0) if gap > 0 else 1.0
        return gram.new_tensor([first, 1 - first])
    scale = 2 * gram.diagonal().max().clamp_min(torch.finfo(gram.dtype).tiny)
    values, vectors = torch.linalg.eigh((gram + gram.T) / scale)
    m = ((vectors * values.clamp_min(0)) @ vectors.T).tolist()
    w = min_norm_active_set(m)
    total = sum(w)
    w = [wi / total for wi in w]
    mw = [sum(mij * wj for mij, wj in zip(row, w, strict=True)) for row in m]
    value = sum(wi * x for wi, x in zip(w, mw, strict=True))
    miss = max(value - min(mw), max(x - value for x, wi in zip(mw, w, strict=True) if wi > 0))
    if not miss <= KKT_TOL:
        raise MtlzooError(
            f"min_norm_weights: the weights {w} miss the optimality conditions by {miss:.3g} "
            f"of max_t M_tt (tolerance {KKT_TOL}) for gram={gram.tolist()}"
        )
    return gram.new_tensor(w)


def min_norm_active_set(m: list[list[float]]) -> list[float]:
    """The weights ``w`` (t,) in the simplex minimising ``w^T M w``, ``M`` (t, t) positive
    semi-definite with ``max_t M_tt = 1``, as lists of floats.

    A primal active-set method (Wolfe's min-norm-point algorithm, Math. Programming 1976):
    from the vertex of the shortest gradient, each step adds the task ``k`` of smallest slope
    ``(M w)_k`` to the support and moves to the minimum on its affine hull (``active_step``).
    Where rounding stalls that (a support affinely dependent to working precision, such as
    two copies of one gradient in a float32 Gram matrix), the step is the best exchange of
    weight between one task of the support and ``k`` (``exchange``). Every step lowers
    ``w^T M w`` (``move``). It stops at the optimum, where no slope on the support exceeds the
    smallest by more than ``16 t eps``, or when no step lowers ``w^T M w`` (``100 t`` steps at
    most).
    """
    t = len(m)
    k = min(range(t), key=lambda i: m[i][i])
    w = [0.0] * t
    w[k] = 1.0
    slope = [row[k] for row in m]
    order = [k]  # the support, in the order its tasks joined it
    rows: dict[tuple[int, ...], list[float]] = {}  # affine_min's Cholesky rows, kept
    for _ in range(100 * t):
        k = min(range(t), key=slope.__getitem__)
        if max(slope[i] for i in order) - slope[k] <= 16 * t * EPS:
            break
        trial = list(dict.fromkeys([*order, k]))
        v = active_step(m, w, trial, rows)
        new_slope, change = move(m, w, slope, v)
        if not change < 0:
            v = exchange(m, w, slope, k)
            new_slope, change = move(m, w, slope, v)
            if not change < 0:
                break
        w, slope, order = v, new_slope, [i for i in trial if v[i] > 0]
    return w


def move(
    m: list[list[float]], w: list[float], slope: list[float], v: list[float]
) -> tuple[list[float], float]:
    """The slopes ``M v`` and the change ``v^T M v - w^T M w`` for ``w``, ``v`` in the simplex,
    as ``sum_i (v_i - w_i) ((M v)_i + (M w)_i - 2 w^T M w)``: exact to rounding where the
    change is far below ``w^T M w``, unlike the difference of the two values."""
    nonzero = [(j, vj) for j, vj in enumerate(v) if vj]
    new_slope = [sum(row[j] * vj for j, vj in nonzero) for row in m]
    twice = 2 * sum(wi * x for wi, x in zip(w, slope, strict=True))
    change = sum((vi - wi) * (a + b - twice)
                 for vi, wi, a, b in zip(v, w, new_slope, slope, strict=True))
    return new_slope, change


def active_step(
    m: list[list[float]], w: list[float], trial: list[int], rows: dict[tuple[int, ...], list[float]]
) -> list[float]:
    """From ``w``, the minimum of ``w^T M w`` on the affine hull of ``trial`` (its support and
    one task more); where that minimum has a weight <= 0, as far towards it as the simplex
    allows, dropping the task whose weight reaches 0 and solving again; where a solve fails,
    the point reached so far."""
    u = w
    while True:
        v = affine_min(m, trial, rows)
        if v is None:
            return u
        u, kept = toward(u, v, trial)
        if kept == trial:
            return u
        trial = kept


def toward(u: list[float], v: list[float], free: list[int]) -> tuple[list[float], list[int]]:
    """The step of an active-set solve from ``u`` (weights >= 0, zero outside ``free``)
    towards ``v``: ``(v, free)`` when no weight of ``free`` goes below 0 there, else the
    point where the first reaches 0 and ``free`` without those that did."""
    # the step along u -> v at which each weight going negative reaches 0
    ratios = {i: u[i] / (u[i] - v[i]) if u[i] > 0 else 0.0 for i in free if v[i] <= 0}
    if not ratios:
        return v, free
    alpha = min(ratios.values())
    free = [i for i in free if ratios.get(i, math.inf) > alpha]
    return [ui + alpha * (vi - ui) if i in free else 0.0
            for i, (ui, vi) in enumerate(zip(u, v, strict=True))], free


def exchange(m: list[list[float]], w: list[float], slope: list[float], k: int) -> list[float]:
    """``w`` after the best exchange: weight moved from one task ``j`` of the support to task
    ``k``, by the exact line search along ``e_k - e_j``, capped at ``w_j``."""

    def step(j: int) -> float:
        q1, q2 = slope[k] - slope[j], m[k][k] - 2 * m[k][j] + m[j][j]
        return min(-q1 / q2, w[j]) if q2 > 0 else w[j]

    def gain(j: int) -> float:
        q1, q2 = slope[k] - slope[j], m[k][k] - 2 * m[k][j] + m[j][j]
        gamma = step(j)
        return -(2 * gamma * q1 + gamma * gamma * q2)

    j = max((i for i in range(len(w)) if w[i] > 0 and i != k), key=gain)
    v = list(w)
    gamma = step(j)
    v[k] += gamma
    v[j] = 0.0 if gamma == w[j] else w[j] - gamma
    return v


def affine_min(
    m: list[list[float]], support: list[int], rows: dict[tuple[int, ...], list[float]]
) -> list[float] | None:
    """The weights ``w`` (t,) minimising ``w^T M w`` subject to ``sum w = 1`` and ``w = 0``
    off ``support`` (S); None where S is affinely dependent to working precision.

    ``w_S`` is ``y / sum y`` for ``y = B^-1 1``, ``B = M_SS + 1 1^T`` (Wolfe 1976): the
    optimality conditions ``M_SS w_S = mu 1``, ``sum w_S = 1`` give ``B w_S = (mu + 1) 1``,
    and ``B`` is positive definite for affinely independent gradients. Solved by Cholesky on
    Python floats (float64), for t <= ~16 far cheaper than tensor calls. Row ``a`` of the
    factor depends on ``S[:a + 1]`` alone: ``rows`` keeps them by that prefix, so a support
    grown by one task costs one new row.
    """
    chol: list[list[float]] = []  # lower triangular, row a has a + 1 entries
    for a, i in enumerate(support):
        key = tuple(support[: a + 1])
        if key not in rows:
            row: list[float] = []
            for b, lower in enumerate(chol):
                dot = sum(x * y for x, y in zip(row, lower, strict=False))
                row.append((m[i][support[b]] + 1 - dot) / lower[b])
            square = m[i][i] + 1 - sum(x * x for x in row)
            if not square > 0:
                return None
            rows[key] = [*row, math.sqrt(square)]
        chol.append(rows[key])
    z: list[float] = []  # forward: chol z = 1
    for a, row in enumerate(chol):
        z.append((1 - sum(x * y for x, y in zip(row, z, strict=False))) / row[a])
    y = [0.0] * len(support)  # backward: chol^T y = z
    for a in range(len(support) - 1, -1, -1):
        y[a] = (z[a] - sum(chol[b][a] * y[b] for b in range(a + 1, len(support)))) / chol[a][a]
    total = sum(y)
    if not (total > 0 and all(map(math.isfinite, y))):
        return None
    w = [0.0] * len(m)
    for i, yi in zip(support, y, strict=True):
        w[i] = yi / total
    return w
