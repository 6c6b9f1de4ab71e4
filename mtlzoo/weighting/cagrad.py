"""CAGrad: the update that best improves the worst task near the mean gradient.

Axes: t tasks, p flattened shared parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from operator import mul

import torch
from torch import Tensor

from mtlzoo import _checks
from mtlzoo.errors import MtlzooError
from mtlzoo.weighting.base import GradientWeighting
from mtlzoo.weighting.gradients import EPS, check_gram, gram_matrix, toward
from mtlzoo.weighting.registry import register_weighting

KKT_TOL = 1e-10  # of max_t M_tt: how far conflict_averse_weights may miss the optimality conditions


@register_weighting("cagrad")
class CAGrad(GradientWeighting):
    """Conflict-averse gradient descent.

    B. Liu, X. Liu, X. Jin, P. Stone, Q. Liu. "Conflict-Averse Gradient Descent for
    Multi-task Learning." Advances in Neural Information Processing Systems 34 (NeurIPS),
    2021. arXiv:2110.14048

    With ``G`` the (t, p) task gradients, ``g0 = mean_t g_t`` and ``phi = c^2 ||g0||^2``,
    the update solves ``max_d min_t g_t . d`` over the ball ``||d - g0|| <= sqrt(phi)``.
    The paper's dual problem over the simplex::

        w = argmin_{w in simplex} w^T G g0 + sqrt(phi) ||G^T w||
        g_w = einsum('t,tp->p', w, G)
        update = (g0 + sqrt(phi) / ||g_w|| g_w) / (1 + c^2)

    The division by ``1 + c^2`` is the official code's default rescaling (``rescale=1``),
    not in the paper's formula. The problem is solved exactly on the (t, t) Gram matrix
    (``conflict_averse_weights``), not by the paper's iterative solver. Where the minimum
    has ``g_w = 0`` (``0`` in the convex hull of the gradients, such as a task with a zero
    gradient) the formula is 0/0 and every ``d`` in the ball with ``min_t g_t . d = 0`` is
    a maximum; the update is then the closest one to ``g0``. ``c = 0`` gives ``g0`` exactly.
    The returned weights are the coefficients of the update on the raw gradients,
    ``(1/t + y_t) / (1 + c^2)`` with ``y = sqrt(phi) / ||g_w|| w``.
    """

    def __init__(self, task_names: Sequence[str], *, c: float = 0.5) -> None:
        super().__init__(task_names)
        self.c = _checks.real("c", c)

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        t = grads.shape[0]
        if self.c == 0:
            return grads.mean(dim=0), grads.new_full((t,), 1 / t)
        y = conflict_averse_weights(gram_matrix(grads), self.c, precision=gram_precision(grads))
        weights = ((1 / t + y) / (1 + self.c**2)).to(grads)
        return weights @ grads, weights


def gram_precision(grads: Tensor) -> float:
    """The relative rounding of ``gram_matrix(grads)``: the eps of the dtype its product
    runs in (at least float32), or of TF32 / bfloat16 where float32 products on CUDA may
    use them (``torch.get_float32_matmul_precision()`` "high" / "medium")."""
    wide = torch.promote_types(grads.dtype, torch.float32)
    if wide == torch.float32 and grads.is_cuda:
        return {"high": 2.0**-10, "medium": 2.0**-7}.get(
            torch.get_float32_matmul_precision(), torch.finfo(wide).eps
        )
    return torch.finfo(wide).eps


def conflict_averse_weights(gram: Tensor, c: float, *, precision: float = EPS) -> Tensor:
    """The coefficients ``y`` (t,) >= 0 of CAGrad's update ``d = g0 + G^T y`` (before the
    ``1 + c^2`` rescaling), from ``gram`` = ``M = G G^T`` (float64, CPU), exactly.

    ``d`` maximises ``min_t g_t . d`` over ``||d - g0|| <= rho = c ||g0||``. The dual,
    ``min_{w in simplex} f(g_w)`` with ``f(x) = g0 . x + rho ||x||`` convex, is solved by an
    active-set method (``conflict_averse_active_set``) on ``M / max_t M_tt``, and
    ``y = rho / ||g_w|| w``. Where the dual minimum is at ``g_w = 0`` (the maximum of
    ``min_t g_t . d`` is then 0) that formula is 0/0, and ``d`` is the projection of ``g0``
    onto ``{d : G d >= 0}`` (``nonnegative_least_squares``).

    The answer is checked against the optimality conditions on the slopes
    ``s = G d = a + M y`` (``a = G g0``), in units of ``max_t M_tt``: ``y >= 0``;
    ``s_t = min s`` where ``y_t > 0``; ``||G^T y|| = rho``, or at ``g_w = 0``,
    ``||G^T y|| <= rho`` and ``min s >= 0``. Each to ``KKT_TOL`` plus what rounding of ``M``
    (``precision``, relative: float64's eps by default) makes of it, which grows with
    ``sum y = rho / ||g_w||``. Where rounding leaves ``M`` indefinite (a float32 Gram matrix
    of nearly dependent gradients) and the check fails, it is solved again with the
    negative eigenvalues of ``M`` set to 0. A miss then raises ``MtlzooError`` rather than
    return a point that is not the maximum.
    """
    check_gram(gram)
    raw = gram.tolist()
    t = len(raw)
    top = max(raw[i][i] for i in range(t))
    if c == 0 or not top > 0:
        return gram.new_zeros(t)  # d = g0
    m = [[(x + y) / (2 * top) for x, y in zip(row, col, strict=True)]
         for row, col in zip(raw, zip(*raw, strict=True), strict=True)]
    precision = max(precision, EPS)
    miss = ""
    for clipped in (False, True):
        if clipped:
            values, vectors = torch.linalg.eigh(torch.tensor(m, dtype=torch.float64))
            m = ((vectors * values.clamp_min(0)) @ vectors.T).tolist()
        a = [sum(row) / t for row in m]  # a_t = g_t . g0
        rho = c * math.sqrt(max(sum(a) / t, 0.0))  # c ||g0||
        if not rho > 0:
            return gram.new_zeros(t)  # g0 = 0: the ball is the point d = 0
        y, kink = conflict_averse_active_set(m, a, rho)
        miss = check_conflict_averse(m, a, rho, y, kink, precision)
        if not miss:
            return gram.new_tensor(y)
    raise MtlzooError(
        f"conflict_averse_weights: the coefficients {y} miss the optimality condition {miss}, "
        f"for gram={gram.tolist()} and c={c}"
    )


def check_conflict_averse(
    m: list[list[float]], a: list[float], rho: float, y: list[float], kink: list[float] | None,
    precision: float,
) -> str:
    """Which optimality condition (see ``conflict_averse_weights``) ``d = g0 + G^T y``
    misses, by how much and to what tolerance, or "" where it meets them all; ``kink`` is
    the ``w`` with ``g_w = 0`` where that is the dual minimum, else None."""
    t = len(m)
    my = [sum(mij * yj for mij, yj in zip(row, y, strict=True)) for row in m]
    slope = [ai + x for ai, x in zip(a, my, strict=True)]  # (G d)_t
    value = min(slope)
    square = sum(yi * x for yi, x in zip(y, my, strict=True))  # ||d - g0||^2
    length = math.sqrt(max(square, 0.0))
    total = sum(y)
    # an error E in M moves the slopes by E (1/t + y), y^T M y by y^T E y
    tol = KKT_TOL + 64 * t * precision * (1 + total)
    ball_tol = KKT_TOL + 64 * t * precision * (1 + total) ** 2 / rho
    flat = max((s - value for s, yi in zip(slope, y, strict=True) if yi > 0), default=0.0)
    misses = [("y >= 0", -min(y), tol), ("s_t = min s where y_t > 0", flat, tol)]
    if kink is None:
        misses.append(("||G^T y|| = rho", abs(length - rho), ball_tol))
    else:
        mw = [sum(mij * wj for mij, wj in zip(row, kink, strict=True)) for row in m]
        zero = sum(wi * x for wi, x in zip(kink, mw, strict=True))  # w^T M w
        misses += [("||G^T y|| <= rho", length - rho, ball_tol), ("min s >= 0", -value, tol),
                   ("w^T M w = 0", zero, 16 * t * t * precision)]
    for name, miss, bound in misses:
        if not miss <= bound:
            return f"{name} by {miss:.3g} of max_t M_tt (tolerance {bound:.3g})"
    return ""


def conflict_averse_active_set(
    m: list[list[float]], a: list[float], rho: float
) -> tuple[list[float], list[float] | None]:
    """CAGrad's update coefficients ``y`` (t,), from ``M`` (t, t) positive semi-definite with
    ``max_t M_tt = 1``, ``a = M 1 / t`` and ``rho = c ||g0|| > 0``, as lists of floats; and
    the weights ``w`` of a zero ``g_w`` where that is the dual minimum, else None.

    Minimises ``F(w) = a . w + rho sqrt(w^T M w)``, a convex function of ``x = g_w`` alone,
    over the simplex by a primal active-set method in the manner of Wolfe's min-norm-point
    algorithm. Where the minimum of ``F`` on the affine hull of all the tasks lies inside the
    simplex, that is the answer; else, from the best vertex, each step adds the task ``k``
    of smallest slope ``dF/dw_k = (a + rho M w / ||g_w||)_k`` to the support and moves to
    the minimum of ``F`` on its affine hull (``face_minimum``, in closed form), dropping a
    task whose weight reaches 0 on the way. Where rounding stalls that, the step is the best
    exchange of weight between a task of the support and ``k``, with an exact line search
    (``exchange``). Every step lowers ``F``. It stops at the optimum, where no slope on the
    support exceeds the smallest by more than ``16 t eps (1 + rho / ||g_w||)``, or when no
    step lowers ``F`` (``100 t`` steps at most); ``y`` is then the face's own (see
    ``face_minimum``). Where it reaches ``g_w = 0`` (``F = 0``, not differentiable), ``y``
    is the least-squares fit ``nonnegative_least_squares``; where that leaves ``d`` outside
    the ball, ``F(y / sum y) < 0`` and the method goes on from there.
    """
    t = len(m)
    kink_tol = 16 * t * t * EPS  # w^T M w below this is g_w = 0 (rounding)
    rows: dict[tuple[int, ...], list[float]] = {}  # face_minimum's Cholesky rows, kept
    found = face_minimum(m, a, rho, list(range(t)), rows)
    if found is not None and found[2] is not None and min(found[0]) > 0:
        return found[2], None  # every task in the support, the slopes equal: the minimum
    k = min(range(t), key=lambda i: a[i] + rho * math.sqrt(max(m[i][i], 0.0)))
    w, order = [0.0] * t, [k]  # order: the support, in the order its tasks joined it
    w[k] = 1.0
    coef: list[float] | None = None  # y, where w is a face's minimum
    slope_w = [sum(mij * wj for mij, wj in zip(row, w, strict=True)) for row in m]  # M w
    left_kink = False
    for _ in range(100 * t):
        q = sum(wi * x for wi, x in zip(w, slope_w, strict=True))
        if q <= kink_tol:
            y = nonnegative_least_squares(m, a)
            total = sum(y)
            length = sum(yi * mij * yj for row, yi in zip(m, y, strict=True)
                         for mij, yj in zip(row, y, strict=True))
            if left_kink or length <= rho * rho or not total > 0:
                return y, w
            left_kink = True  # F(y / sum y) < 0: the minimum is elsewhere
            w, coef = [yi / total for yi in y], None
            slope_w = [sum(mij * wj for mij, wj in zip(row, w, strict=True)) for row in m]
            order = [i for i in range(t) if w[i] > 0]
            continue
        if coef is None:
            ratio = rho / math.sqrt(q)
            grad = [ai + ratio * x for ai, x in zip(a, slope_w, strict=True)]
        else:  # a face's minimum: its coefficients give the slopes to rounding
            ratio = sum(coef)
            grad = [ai + sum(mij * yj for mij, yj in zip(row, coef, strict=True))
                    for ai, row in zip(a, m, strict=True)]
        k = min(range(t), key=grad.__getitem__)
        if max(grad[i] for i in order) - grad[k] <= 16 * t * EPS * (1 + ratio):
            break
        trial = list(dict.fromkeys([*order, k]))
        v, new_coef = face_step(m, a, rho, w, trial, rows)
        new_slope, change = move(m, a, rho, w, slope_w, v)
        if not change < 0:
            v, new_coef = exchange(m, a, rho, w, slope_w, grad, k), None
            new_slope, change = move(m, a, rho, w, slope_w, v)
            if not change < 0:
                break
        w, slope_w, coef, order = v, new_slope, new_coef, [i for i in trial if v[i] > 0]
    if coef is None:  # stopped off a face's minimum (by rounding): where that is in reach
        found = face_minimum(m, a, rho, order, rows)
        if found is not None and found[2] is not None and min(found[0][i] for i in order) > 0:
            coef = found[2]
    if coef is not None:  # w is the minimum on its face: the face's own coefficients
        return coef, None
    q = sum(wi * x for wi, x in zip(w, slope_w, strict=True))
    ratio = rho / math.sqrt(q) if q > 0 else 0.0
    return [ratio * wi for wi in w], None


def move(
    m: list[list[float]], a: list[float], rho: float, w: list[float], slope_w: list[float],
    v: list[float],
) -> tuple[list[float], float]:
    """``M v`` and the change ``F(v) - F(w)``, with the change of ``w^T M w`` summed as
    ``sum_i (v_i - w_i) ((M v)_i + (M w)_i)``: exact to rounding where it is small."""
    nonzero = [(j, vj) for j, vj in enumerate(v) if vj]
    slope_v = [sum(row[j] * vj for j, vj in nonzero) for row in m]
    qv = max(sum(vi * x for vi, x in zip(v, slope_v, strict=True)), 0.0)
    qw = max(sum(wi * x for wi, x in zip(w, slope_w, strict=True)), 0.0)
    dq = sum((vi - wi) * (x + y) for vi, wi, x, y in zip(v, w, slope_v, slope_w, strict=True))
    root = math.sqrt(qv) + math.sqrt(qw)
    linear = sum(ai * (vi - wi) for ai, vi, wi in zip(a, v, w, strict=True))
    return slope_v, linear + (rho * dq / root if root > 0 else 0.0)


def face_step(
    m: list[list[float]], a: list[float], rho: float, w: list[float], trial: list[int],
    rows: dict[tuple[int, ...], list[float]],
) -> tuple[list[float], list[float] | None]:
    """From ``w``, the minimum of ``F`` on the affine hull of ``trial`` (its support and one
    task more). Where that minimum has a weight <= 0, or ``F`` falls without bound along a
    direction of the hull, as far towards it as the simplex allows (``F`` falls all along,
    being convex), dropping the task whose weight reaches 0 and solving again; where a solve
    fails, the point reached so far. Returns the point, and the update's coefficients where
    it is a face's minimum (see ``face_minimum``), else None."""
    u = w
    while True:
        found = face_minimum(m, a, rho, trial, rows)
        if found is None:
            return u, None
        v, bounded, coef = found
        if bounded:  # towards the point v
            ratios = {i: u[i] / (u[i] - v[i]) if u[i] > 0 else 0.0 for i in trial if v[i] <= 0}
            if not ratios:
                return v, coef
            step = [vi - ui for ui, vi in zip(u, v, strict=True)]
        else:  # along the direction v
            ratios = {i: u[i] / -v[i] if u[i] > 0 else 0.0 for i in trial if v[i] < 0}
            if not ratios:
                return u, None
            step = v
        alpha = min(ratios.values())
        trial = [i for i in trial if ratios.get(i, math.inf) > alpha]
        u = [ui + alpha * si if i in trial else 0.0
             for i, (ui, si) in enumerate(zip(u, step, strict=True))]


def face_minimum(
    m: list[list[float]], a: list[float], rho: float, support: list[int],
    rows: dict[tuple[int, ...], list[float]],
) -> tuple[list[float], bool, list[float] | None] | None:
    """The minimum of ``F(w) = a . w + rho sqrt(w^T M w)`` subject to ``sum w = 1`` and
    ``w = 0`` off ``support`` (S), as ``(w, True, y)`` with ``y = rho / ||g_w|| w`` the
    update's coefficients (None where ``g_w = 0``); ``(direction, False, None)`` where ``F``
    falls without bound along that direction of the hull; None where S is affinely
    dependent to working precision.

    On the hull, ``w = w0 + nu w1``: ``w0`` is the hull's point of least ``w^T M w``
    (``eta0``), ``w1`` (summing to 0) the direction of steepest fall of ``a . w``, with
    ``G^T w1`` the projection of ``-g0`` onto the hull's directions (``eps1 = w1^T M w1``).
    The two are orthogonal under ``M``, so ``w^T M w = eta0 + nu^2 eps1`` and
    ``F = a . w0 - nu eps1 + rho sqrt(eta0 + nu^2 eps1)``: its minimum is at
    ``nu = sqrt(eta0 / (rho^2 - eps1))`` where ``rho^2 > eps1``, else ``F`` falls without
    bound along ``w1``. There ``rho / ||g_w|| = 1 / nu``, and ``y = w0 / nu + w1`` has
    equal slopes ``(a + M y)_t`` on S to rounding (``M w0`` and ``M w1 + a`` are constant
    on S), however few digits ``nu`` has. With ``B = M_SS + 1 1^T`` (positive definite for
    affinely independent gradients), ``w0 = B^-1 1 / 1^T B^-1 1`` and
    ``w1 = eta1 B^-1 1 - B^-1 a_S`` with ``eta1 = 1^T B^-1 a_S / 1^T B^-1 1``; ``B`` is
    factored by Cholesky on Python floats, one row per task kept by support prefix.
    """
    chol: list[list[float]] = []  # lower triangular, row i has i + 1 entries
    sub = [[m[i][j] for j in support] for i in support]  # M_SS
    for i, row_m in enumerate(sub):
        key = tuple(support[: i + 1])
        row = rows.get(key)
        if row is None:
            row = []
            for j, lower in enumerate(chol):
                row.append((row_m[j] + 1 - sum(map(mul, row, lower))) / lower[j])
            square = row_m[i] + 1 - sum(map(mul, row, row))
            if not square > 0:
                return None
            row.append(math.sqrt(square))
            rows[key] = row
        chol.append(row)
    a_s = [a[i] for i in support]
    ones = solve_cholesky(chol, [1.0] * len(support))
    lin = solve_cholesky(chol, a_s)
    total = sum(ones)
    if not (total > 0 and all(map(math.isfinite, ones + lin))):
        return None
    eta1 = sum(lin) / total
    w0 = [x / total for x in ones]
    w1 = [eta1 * x - y for x, y in zip(ones, lin, strict=True)]
    eta0 = max(sum(x * sum(map(mul, row, w0)) for x, row in zip(w0, sub, strict=True)), 0.0)
    # eps1 = -a . w1 = w1^T M w1 at the exact w1; their combination -2 a . w1 - w1^T M w1
    # (minus twice the minimum of a . z + z^T M z / 2) has an error second order in w1's
    eps1 = max(-sum(x * (2 * ai + sum(map(mul, row, w1)))
                    for x, ai, row in zip(w1, a_s, sub, strict=True)), 0.0)
    out = [0.0] * len(m)
    if rho * rho > eps1:
        nu = math.sqrt(eta0 / (rho * rho - eps1))
        coef = [0.0] * len(m) if nu > 0 else None
        for i, x, y in zip(support, w0, w1, strict=True):
            out[i] = x + nu * y
            if coef is not None:
                coef[i] = x / nu + y
        return out, True, coef
    for i, y in zip(support, w1, strict=True):
        out[i] = y
    return out, False, None


def solve_cholesky(chol: list[list[float]], b: list[float]) -> list[float]:
    """``x`` with ``L L^T x = b``, ``L`` lower triangular as rows."""
    z: list[float] = []
    for i, row in enumerate(chol):
        z.append((b[i] - sum(map(mul, row, z))) / row[i])
    n = len(chol)
    x = [0.0] * n
    for i in range(n - 1, -1, -1):
        x[i] = (z[i] - sum(chol[j][i] * x[j] for j in range(i + 1, n))) / chol[i][i]
    return x


def exchange(
    m: list[list[float]], a: list[float], rho: float, w: list[float], slope_w: list[float],
    grad: list[float], k: int,
) -> list[float]:
    """``w`` after weight moves from the task ``j`` of the support of largest slope
    ``grad_j`` to ``k``, by the exact line search of ``F`` along ``e_k - e_j``, capped at
    ``w_j``."""
    j = max((i for i in range(len(w)) if w[i] > 0 and i != k), key=grad.__getitem__)
    q0 = sum(wi * x for wi, x in zip(w, slope_w, strict=True))
    q1 = slope_w[k] - slope_w[j]
    q2 = m[k][k] - 2 * m[k][j] + m[j][j]
    # F(w + g (e_k - e_j)) = const + g delta + rho sqrt(q0 + 2 g q1 + g^2 q2)
    delta = a[k] - a[j]
    kappa = -delta / rho
    if delta + rho * math.sqrt(max(q2, 0.0)) <= 0:
        gamma = math.inf  # F falls all along
    elif q2 <= kappa**2:
        gamma = 0.0  # F rises all along
    else:  # where the derivative, delta + rho (q1 + g q2) / sqrt(...), is 0
        gamma = (-q1 + kappa * math.sqrt(max(q0 * q2 - q1 * q1, 0.0) / (q2 - kappa**2))) / q2
    gamma = min(max(gamma, 0.0), w[j])
    v = list(w)
    v[k] += gamma
    v[j] = 0.0 if gamma == w[j] else w[j] - gamma
    return v


def nonnegative_least_squares(m: list[list[float]], a: list[float]) -> list[float]:
    """``y >= 0`` minimising ``||g0 + G^T y||^2 = y^T M y + 2 a . y + ||g0||^2``: then
    ``d = g0 + G^T y`` is the projection of ``g0`` onto ``{d : G d >= 0}``.

    Lawson and Hanson's active-set method (Solving Least Squares Problems, 1974, ch. 23) on
    the Gram matrix: the slopes ``G d = a + M y`` are >= 0, and 0 where ``y > 0``, at the
    optimum. Each step frees the task of most negative slope and solves
    ``M_PP y_P = -a_P`` on the free set ``P`` (Cholesky), going back to the last point with
    ``y >= 0`` and fixing a task at 0 where that solution has one <= 0. Stops at the
    optimum to ``16 t eps``, where a solve fails, or after ``10 t`` steps.
    """
    t = len(m)
    y = [0.0] * t
    free: list[int] = []
    for _ in range(10 * t):
        slope = [ai + sum(mij * yj for mij, yj in zip(row, y, strict=True))
                 for ai, row in zip(a, m, strict=True)]
        outside = [i for i in range(t) if i not in free]
        if not outside:
            break
        k = min(outside, key=slope.__getitem__)
        if slope[k] >= -16 * t * EPS:
            break
        free.append(k)
        while True:
            z = solve_spd(m, a, free)
            if z is None:
                return y
            y, kept = toward(y, z, free)
            if kept == free:
                break
            free = kept
    return y


def solve_spd(m: list[list[float]], a: list[float], free: list[int]) -> list[float] | None:
    """``z`` (t,) with ``M_PP z_P = -a_P`` and 0 off ``P`` = ``free``, by Cholesky; None
    where ``M_PP`` is singular to working precision."""
    chol: list[list[float]] = []
    for task in free:
        row: list[float] = []
        for j, lower in enumerate(chol):
            dot = sum(x * y for x, y in zip(row, lower, strict=False))
            row.append((m[task][free[j]] - dot) / lower[j])
        square = m[task][task] - sum(x * x for x in row)
        if not square > 16 * len(m) * EPS * m[task][task] or not square > 0:
            return None
        chol.append([*row, math.sqrt(square)])
    x = solve_cholesky(chol, [-a[i] for i in free])
    z = [0.0] * len(m)
    for i, xi in zip(free, x, strict=True):
        z[i] = xi
    return z
