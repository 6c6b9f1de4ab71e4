"""MGDA's solver, ``min_norm_weights``: the exact minimum of ``w^T M w`` over the simplex,
checked against a brute-force search over every support and against the optimality (KKT)
conditions, on ill-conditioned Gram matrices.

Axes: t tasks, p parameters.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from mtlzoo.errors import MtlzooError
from mtlzoo.weighting import gradients
from mtlzoo.weighting.cagrad import conflict_averse_weights
from mtlzoo.weighting.gradients import gram_matrix, min_norm_weights
from tests.gradient_families import hard_gradients

pytestmark = pytest.mark.usefixtures("float64")

TASK_COUNTS = range(2, 9)


def objective(w: torch.Tensor, grads: torch.Tensor) -> float:
    """``||sum_t w_t g_t||^2``, from the (t, p) gradients themselves."""
    return (w @ grads).pow(2).sum().item()


def brute_force(grads: torch.Tensor) -> float:
    """The minimum of ``||sum_t w_t g_t||^2`` over the simplex, support by support.

    On a support S with first task b, the minimum on the affine hull is
    ``w_S = e_b + (0, u)`` with ``u`` the least-squares solution of
    ``sum_j u_j (g_j - g_b) = -g_b`` (float64, SVD-based, so a rank-deficient S gets one of
    its minima). The feasible ones (``w >= 0``) are candidates; the least is the minimum,
    since the minimum lies inside the hull of some affinely independent support.
    """
    t = len(grads)
    best = float("inf")
    for size in range(1, t + 1):
        supports = torch.tensor(list(itertools.combinations(range(t), size)))  # (n, size)
        weights = torch.zeros(len(supports), t)
        weights[torch.arange(len(supports)), supports[:, 0]] = 1.0
        if size > 1:
            base = grads[supports[:, 0]]  # (n, p)
            diffs = grads[supports[:, 1:]] - base[:, None]  # (n, size - 1, p)
            u = torch.linalg.lstsq(diffs.mT, -base[..., None], driver="gelsd").solution[..., 0]
            weights.scatter_add_(1, supports[:, 1:], u)
            weights[torch.arange(len(supports)), supports[:, 0]] -= u.sum(dim=1)
        values = (weights @ grads).pow(2).sum(dim=1)
        values[(weights < 0).any(dim=1)] = float("inf")
        best = min(best, values.min().item())
    return best


def assert_optimal(grads: torch.Tensor, w: torch.Tensor, *, kkt_tol: float = 1e-11) -> None:
    """``w`` meets the optimality conditions and reaches the brute-force minimum."""
    gram = gram_matrix(grads)
    scale = gram.diagonal().max().item()
    assert (w >= 0).all()
    assert w.sum().item() == pytest.approx(1.0, abs=1e-15)
    slope = gram @ w  # half the gradient of w^T M w: >= w^T M w everywhere, = on the support
    value = (w @ slope).item()
    assert slope.min().item() >= value - kkt_tol * scale
    assert (slope[w > 0] - value).abs().max().item() <= kkt_tol * scale
    best = brute_force(grads)
    assert abs(objective(w, grads) - best) <= 1e-12 * best + 1e-14 * scale


FAMILIES = ("near_parallel", "near_opposite", "norms_100x_apart", "more_tasks_than_dims",
            "duplicated", "zero_gradient")


def test_reported_case_norms_138_6_182():
    """The reported failure: g_1 and g_3 nearly opposite (cosine -0.9998), g_2 short."""
    g3 = torch.tensor([-1.0, 0.02, 0.0])
    grads = torch.stack([
        torch.tensor([138.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 6.0]), 182 * g3 / g3.norm()
    ])
    w = min_norm_weights(gram_matrix(grads))
    update = w @ grads
    # the optimum uses all three: d* is orthogonal to the plane of g_2 - g_1, g_3 - g_1
    normal = torch.linalg.cross(grads[1] - grads[0], grads[2] - grads[0])
    expected = (grads[0] @ normal) / (normal @ normal) * normal
    assert ((update - expected).norm() / expected.norm()).item() <= 1e-9
    # MGDA's guarantee: every task's slope along d is at least ||d||^2
    assert (grads @ update).min().item() >= (update @ update).item() * (1 - 1e-9)
    assert_optimal(grads, w)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("t", TASK_COUNTS)
def test_hard_families_reach_the_brute_force_minimum(family, t):
    for seed in range(4):
        grads = hard_gradients(family, t, seed)
        assert_optimal(grads, min_norm_weights(gram_matrix(grads)))


@pytest.mark.parametrize("t", TASK_COUNTS)
def test_random_conflicting_jacobians_reach_the_brute_force_minimum(t):
    for seed in range(50):
        gen = torch.Generator().manual_seed(seed)
        # mean zero, so the tasks conflict; norms spread by e^(1.5 N(0, 1)); p = 3, 5 or 10
        grads = torch.randn(t, (3, 5, 10)[seed % 3], generator=gen)
        grads = grads * torch.randn(t, generator=gen).mul(1.5).exp()[:, None]
        assert_optimal(grads, min_norm_weights(gram_matrix(grads)))


def test_inconsistent_duplicates_are_exchanged(monkeypatch):
    """Two copies of a gradient whose cross terms differ by rounding (as in a float32 Gram
    matrix): the active set stalls on the pair and exchanges one copy for the other."""
    exchanges = []
    exchange = gradients.exchange
    monkeypatch.setattr(
        gradients, "exchange", lambda *args: exchanges.append(args) or exchange(*args)
    )
    for seed in range(6):
        gen = torch.Generator().manual_seed(seed)
        grads = torch.randn(4, 8, generator=gen)
        grads[1] = grads[0]
        gram = gram_matrix(grads)
        noise = 1e-8 * torch.randn(4, 4, generator=gen) * gram.diagonal().max()
        gram = gram + (noise + noise.T) / 2
        w = min_norm_weights(gram)
        scale = gram.diagonal().max().item()
        slope = gram @ w
        value = (w @ slope).item()
        assert slope.min().item() >= value - 1e-7 * scale  # optimal to the noise in M
        assert abs(objective(w, grads) - brute_force(grads)) <= 1e-7 * scale
    assert exchanges


def test_float32_gram_matrices_of_duplicated_tasks():
    for seed in range(10):
        gen = torch.Generator().manual_seed(seed)
        grads = torch.randn(8, 50, generator=gen)
        grads[1] = grads[0]
        grads[2] = grads[0]
        w = min_norm_weights(gram_matrix(grads.float()))
        scale = grads.pow(2).sum(dim=1).max().item()
        assert w.min() >= 0
        assert abs(objective(w, grads) - brute_force(grads)) <= 1e-6 * scale


@pytest.mark.parametrize("t", [1, 3])
def test_zero_gram_gives_a_vertex(t):
    assert min_norm_weights(torch.zeros(t, t)).tolist() == [1.0] + [0.0] * (t - 1)


@pytest.mark.parametrize(
    ("gram", "named"),
    [
        (torch.ones(2, 3), r"\(2, 3\)"),
        (torch.ones(3), r"\(3,\)"),
        (torch.zeros(0, 0), r"\(0, 0\)"),
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), r"nan at \(0, 1\)"),
        (torch.tensor([[1.0, 0.0, 0.0], [0.0, float("inf"), 0.0], [0.0, 0.0, 1.0]]),
         r"inf at \(1, 1\)"),
    ],
)
@pytest.mark.parametrize("solve", [min_norm_weights,
                                   lambda gram: conflict_averse_weights(gram, 0.5)],
                         ids=["mgda", "cagrad"])
def test_bad_gram_is_named(gram, named, solve):
    with pytest.raises(MtlzooError, match=named):
        solve(gram)


def test_a_point_off_the_optimality_conditions_raises(monkeypatch):
    """The answer is checked: a solver that stopped short is an error, not a weighting."""
    monkeypatch.setattr(gradients, "min_norm_active_set", lambda m: [1.0] + [0.0] * (len(m) - 1))
    grads = torch.eye(3)  # the minimum is (1/3, 1/3, 1/3), not the vertex
    with pytest.raises(MtlzooError, match="optimality conditions"):
        min_norm_weights(gram_matrix(grads))
