"""CAGrad's solver: the update ``d`` maximising ``min_t g_t . d`` over the ball
``||d - g0|| <= c ||g0||``, checked against a brute-force search over every support (on the
gradients themselves, not their Gram matrix) and against the primal guarantee, on
ill-conditioned gradients.

Axes: t tasks, p parameters.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mtlzoo.errors import MtlzooError
from mtlzoo.weighting import cagrad, create_weighting
from mtlzoo.weighting.cagrad import conflict_averse_weights
from mtlzoo.weighting.gradients import gram_matrix
from tests.gradient_families import hard_gradients

pytestmark = pytest.mark.usefixtures("float64")

TASK_COUNTS = range(2, 9)
CS = (0.2, 0.5, 0.9)


def update(grads: torch.Tensor, c: float) -> torch.Tensor:
    """CAGrad's ``d = g0 + G^T y``, through the public ``combine`` (undoing the rescale)."""
    names = [f"task{i}" for i in range(len(grads))]
    direction, _ = create_weighting("cagrad", names, c=c).combine(grads, torch.ones(len(grads)))
    return direction * (1 + c**2)


def supports(t: int, size: int) -> torch.Tensor:
    return torch.tensor(list(itertools.combinations(range(t), size)), dtype=torch.long)


def faces(grads: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """For the affine hull of every support S (first task b): ``x0`` its point nearest 0,
    ``e`` the projection of ``-g0`` onto its directions, both by SVD-based least squares on
    the gradients (float64), the weights ``w0``, ``w1`` (t,) giving them, and whether S is
    affinely independent; batched by the size of S."""
    t, p = grads.shape
    g0 = grads.mean(dim=0)
    out = []
    for size in range(1, t + 1):
        s = supports(t, size)  # (n, size)
        n = len(s)
        base = grads[s[:, 0]]  # (n, p)
        w0 = torch.zeros(n, t)
        w0[torch.arange(n), s[:, 0]] = 1.0
        w1 = torch.zeros(n, t)
        x0, e = base.clone(), torch.zeros(n, p)
        independent = torch.ones(n, dtype=torch.bool)
        if size > 1:
            diffs = grads[s[:, 1:]] - base[:, None]  # (n, size - 1, p)
            sv = torch.linalg.svdvals(diffs)
            independent = sv[:, -1] > 1e-10 * sv[:, 0]
            u = torch.linalg.lstsq(diffs.mT, -base[..., None], driver="gelsd").solution[..., 0]
            v = torch.linalg.lstsq(
                diffs.mT, g0.expand(n, p)[..., None], driver="gelsd"
            ).solution[..., 0]
            x0 = base + (u[:, None, :] @ diffs)[:, 0]
            e = -(v[:, None, :] @ diffs)[:, 0]
            w0.scatter_add_(1, s[:, 1:], u)
            w0[torch.arange(n), s[:, 0]] -= u.sum(dim=1)
            w1.scatter_add_(1, s[:, 1:], -v)
            w1[torch.arange(n), s[:, 0]] += v.sum(dim=1)
        out.append((x0, e, w0, w1, independent))
    return out


def dual_minimum(grads: torch.Tensor, c: float, hulls) -> tuple[float, torch.Tensor]:
    """``(F*, x*)``: the minimum of ``f(x) = g0 . x + rho ||x||`` over the convex hull of the
    gradients (CAGrad's dual, ``x = g_w``), support by support (``faces``).

    On an affine hull, ``x = x0 + nu e`` and ``f`` is least at
    ``nu = ||x0|| / sqrt(rho^2 - ||e||^2)`` (unbounded below where ``rho <= ||e||``). The
    feasible ones (weights >= 0) of the affinely independent supports are candidates; the
    least is the minimum, since the minimum lies inside the hull of some affinely
    independent support.
    """
    g0 = grads.mean(dim=0)
    rho = c * g0.norm()
    best, best_x = math.inf, None
    for x0, e, w0, w1, independent in hulls:
        room = rho**2 - (e * e).sum(dim=1)
        nu = x0.norm(dim=1) / room.clamp_min(1e-300).sqrt()
        x = x0 + nu[:, None] * e
        keep = independent & (room > 0) & (w0 + nu[:, None] * w1 >= -1e-12).all(dim=1)
        values = x @ g0 + rho * x.norm(dim=1)
        values[~keep] = math.inf
        i = int(values.argmin())
        if values[i] < best:
            best, best_x = values[i].item(), x[i]
    return best, best_x


def projection_onto_cone(grads: torch.Tensor) -> torch.Tensor:
    """The projection of ``g0`` onto ``{d : G d >= 0}``: the closest to ``g0`` of the
    candidates ``g0 - proj_{span(g_A)} g0`` (over every set A) that lie in it."""
    t, p = grads.shape
    g0 = grads.mean(dim=0)
    scale = grads.norm(dim=1).max() * g0.norm()
    candidates = [g0[None]]
    for size in range(1, t + 1):
        s = supports(t, size)
        rows = grads[s]  # (n, size, p)
        y = torch.linalg.lstsq(rows.mT, -g0.expand(len(s), p)[..., None], driver="gelsd")
        candidates.append(g0 + (y.solution.mT @ rows)[:, 0])
    d = torch.cat(candidates)
    feasible = (d @ grads.T).min(dim=1).values >= -1e-12 * scale
    distance = (d - g0).norm(dim=1)
    distance[~feasible] = math.inf
    return d[distance.argmin()]


def reference(grads: torch.Tensor, cs=CS) -> list[tuple[torch.Tensor, float]]:
    """For each c: ``(d*, F*)``, the update and the optimum ``max_d min_t g_t . d``,
    certified: ``d*`` in the ball reaches the dual minimum ``F*`` (zero duality gap)."""
    g0 = grads.mean(dim=0)
    scale = grads.norm(dim=1).max()
    hulls = faces(grads)
    cone = None
    answers = []
    for c in cs:
        rho = c * g0.norm()
        value, x = dual_minimum(grads, c, hulls)
        if x.norm() > 1e-13 * scale:
            d = g0 + rho * x / x.norm()
        else:  # g_w = 0: every d of the ball in {G d >= 0} is a maximum; mtlzoo's: the closest
            cone = projection_onto_cone(grads) if cone is None else cone
            d = cone
        assert (d - g0).norm() <= rho * (1 + 1e-12)
        assert abs((grads @ d).min().item() - value) <= 1e-11 * scale * g0.norm()
        answers.append((d, value))
    return answers


def assert_optimal(grads: torch.Tensor, cs=CS, *, tol: float = 1e-9) -> None:
    """CAGrad's update is the reference's (to ``tol ||g0||``) and keeps the guarantee: in
    the ball (to rounding), and the worst task's slope the optimum."""
    g0 = grads.mean(dim=0)
    scale = grads.norm(dim=1).max().item() * g0.norm().item()
    for c, (d_ref, value) in zip(cs, reference(grads, cs), strict=True):
        d = update(grads, c)
        assert (d - g0).norm().item() <= c * g0.norm().item() * (1 + 1e-10)
        assert (grads @ d).min().item() >= value - 1e-12 * scale
        assert (d - d_ref).norm().item() <= tol * g0.norm().item()


FAMILIES = ("near_parallel", "near_opposite", "norms_100x_apart", "more_tasks_than_dims",
            "duplicated", "zero_gradient", "zero_gradient_conflicting", "opposite_pair")


# ------------------------------------------------------- the reference, on known answers

@pytest.mark.parametrize("t", [1, *TASK_COUNTS])
def test_orthonormal_gradients_give_the_scaled_mean(t):
    """By symmetry ``w = 1/t``, ``g_w = g0``: ``d = (1 + c) g0``."""
    grads = torch.eye(t)
    for c, (d_ref, _) in zip(CS, reference(grads), strict=True):
        expected = (1 + c) * grads.mean(dim=0)
        torch.testing.assert_close(d_ref, expected, rtol=1e-14, atol=1e-15)
        torch.testing.assert_close(update(grads, c), expected, rtol=1e-14, atol=1e-15)


def two_task_update(g1: torch.Tensor, g2: torch.Tensor, c: float) -> torch.Tensor:
    """Two tasks in closed form: on ``x = g2 + s (g1 - g2)``, ``s`` in [0, 1],
    ``f(s) = g0 . x + rho ||x||`` has ``f'(s) = delta + rho (q1 + s q2) / ||x||`` with
    ``delta = g0 . (g1 - g2)``, ``q1 = g2 . (g1 - g2)``, ``q2 = ||g1 - g2||^2``: 0 at
    ``s = (-q1 + k sqrt((||g2||^2 q2 - q1^2) / (q2 - k^2))) / q2``, ``k = -delta / rho``,
    where ``|k| < sqrt(q2)``; else ``f`` is monotone. Then clipped to [0, 1]."""
    g0 = (g1 + g2) / 2
    rho = c * g0.norm()
    diff = g1 - g2
    delta, q0, q1, q2 = g0 @ diff, g2 @ g2, g2 @ diff, diff @ diff
    k = -delta / rho
    if k**2 < q2:
        s = (-q1 + k * torch.sqrt((q0 * q2 - q1**2) / (q2 - k**2))) / q2
    else:
        s = torch.tensor(1.0 if k > 0 else 0.0)  # f falls (k > 0) or rises all along
    x = g2 + s.clamp(0, 1) * diff
    return g0 + rho * x / x.norm()


def test_two_tasks_closed_form():
    for seed in range(12):
        gen = torch.Generator().manual_seed(seed)
        grads = torch.randn(2, 5, generator=gen) * torch.randn(2, 1, generator=gen).exp()
        g0 = grads.mean(dim=0)
        s = torch.linspace(0, 1, 10001)[:, None]
        x = grads[1] + s * (grads[0] - grads[1])
        for c, (d_ref, _) in zip(CS, reference(grads), strict=True):
            expected = two_task_update(grads[0], grads[1], c)
            # the closed form is the minimum of f on a fine grid of s
            best = x[(x @ g0 + c * g0.norm() * x.norm(dim=1)).argmin()]
            grid = g0 + c * g0.norm() * best / best.norm()
            assert (expected - grid).norm() <= 1e-3 * expected.norm()
            torch.testing.assert_close(d_ref, expected, rtol=1e-12, atol=0)
            torch.testing.assert_close(update(grads, c), expected, rtol=1e-12, atol=0)


def test_c_zero_gives_the_mean_and_a_single_task_its_scaled_gradient():
    grads = torch.randn(4, 7)
    assert torch.equal(update(grads, 0.0), grads.mean(dim=0))
    assert conflict_averse_weights(gram_matrix(grads), 0.0).tolist() == [0.0] * 4
    one = torch.randn(1, 7)
    for c in (*CS, 3.0):
        torch.testing.assert_close(update(one, c), (1 + c) * one[0], rtol=1e-14, atol=0)


# ------------------------------------------------------------------ the solver, hard cases

def test_reported_mgda_case_norms_138_6_182():
    """The gradients that stalled MGDA's Frank-Wolfe: g_1, g_3 nearly opposite, g_2 short."""
    g3 = torch.tensor([-1.0, 0.02, 0.0])
    grads = torch.stack([
        torch.tensor([138.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 6.0]), 182 * g3 / g3.norm()
    ])
    assert_optimal(grads)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("t", TASK_COUNTS)
def test_hard_families_match_the_reference(family, t):
    for seed in range(2):
        grads = hard_gradients(family, t, seed)
        if grads.mean(dim=0).norm() > 0:
            assert_optimal(grads)


@pytest.mark.parametrize("t", TASK_COUNTS)
def test_random_conflicting_jacobians_match_the_reference(t):
    for seed in range(12):
        gen = torch.Generator().manual_seed(seed)
        # mean zero, so the tasks conflict; norms spread by e^(1.5 N(0, 1)); p = 3, 5 or 10
        grads = torch.randn(t, (3, 5, 10)[seed % 3], generator=gen)
        grads = grads * torch.randn(t, generator=gen).mul(1.5).exp()[:, None]
        assert_optimal(grads, [CS[seed % 3]])


def test_zero_gradient_where_the_mean_is_not_a_maximum():
    """``g_w = 0`` at the dual minimum: the paper's formula is 0/0 (its code, ``d = g0``),
    but ``g0`` lowers task 1 while every d of the ball in ``{G d >= 0}`` is a maximum (of
    value 0, as ``g_2 . d = 0``); the update is the closest of those to ``g0``."""
    grads = torch.tensor([[1.0, 0.0], [-1.0, 0.05], [0.0, 0.0], [0.5, 1.0]])
    g0 = grads.mean(dim=0)
    assert (grads @ g0).min() < 0
    d = update(grads, 0.5)
    assert (d - g0).norm().item() <= 0.5 * g0.norm().item() * (1 + 1e-12)
    assert (grads @ d).min().item() >= -1e-15
    torch.testing.assert_close(d, projection_onto_cone(grads), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("c", [1.5, 3.0])
def test_c_above_one(c):
    """The ball holds 0: where 0 is in the hull the maximum is 0 (the cone projection)."""
    for t, seed in itertools.product(TASK_COUNTS, range(3)):
        gen = torch.Generator().manual_seed(seed)
        grads = torch.randn(t, 4, generator=gen) * torch.randn(t, 1, generator=gen).exp()
        assert_optimal(grads, [c])


@pytest.mark.parametrize("family", ["duplicated", "more_tasks_than_dims", "near_parallel",
                                    "zero_gradient", "opposite_pair"])
def test_float32_gradients(family):
    """A float32 Gram matrix of (nearly) dependent gradients: no error, and the update of
    the float64 problem to the precision float32 allows."""
    for t in (3, 5, 8):
        grads = hard_gradients(family, t, 1)
        g0 = grads.mean(dim=0)
        scale = grads.norm(dim=1).max().item() * g0.norm().item()
        for c, (_, value) in zip(CS, reference(grads), strict=True):
            d = update(grads.float(), c).double()
            assert (d - g0).norm().item() <= c * g0.norm().item() * (1 + 1e-5)
            assert (grads @ d).min().item() >= value - 1e-5 * scale


def test_an_indefinite_gram_matrix_is_clipped_and_solved_again(monkeypatch):
    """A float32 Gram matrix of duplicated tasks, checked to float64's precision: its
    rounding (an eigenvalue of -6e-16) stalls the first solve; the clipped one passes."""
    clips = []
    eigh = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda m: clips.append(m) or eigh(m))
    grads = hard_gradients("duplicated", 5, 2)
    y = conflict_averse_weights(gram_matrix(grads.float()), 0.5)
    assert clips
    d = grads.mean(dim=0) + y @ grads
    d_ref = reference(grads, [0.5])[0][0]
    assert (d - d_ref).norm() <= 1e-5 * d_ref.norm()


def test_gram_precision():
    assert cagrad.gram_precision(torch.ones(2, 3)) == torch.finfo(torch.float64).eps
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert cagrad.gram_precision(torch.ones(2, 3, dtype=dtype)) == 2.0**-23


# ------------------------------------------------------------------ the check, bad input

def test_a_point_off_the_optimality_conditions_raises(monkeypatch):
    """The answer is checked: a solver that stopped short is an error, not a weighting."""
    grads = torch.eye(3)  # the answer is y = c (1/3, 1/3, 1/3) / ||g0||
    monkeypatch.setattr(cagrad, "conflict_averse_active_set",
                        lambda m, a, rho: ([rho, 0.0, 0.0], None))
    with pytest.raises(MtlzooError, match="optimality condition"):
        conflict_averse_weights(gram_matrix(grads), 0.5)


def test_zero_gradients_give_zero():
    assert conflict_averse_weights(torch.zeros(3, 3), 0.5).tolist() == [0.0] * 3
    assert torch.equal(update(torch.zeros(3, 4), 0.5), torch.zeros(4))
