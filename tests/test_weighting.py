"""Weighting methods: the registry, every method against a known answer, and the contracts
every method keeps (gradients it leaves, one-task steps, real models, checkpoints).

Axes: t tasks, p flattened parameters. Everything runs in float64.
"""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import mtlzoo
from mtlzoo import MtlzooError
from mtlzoo.weighting import (
    DWA,
    RLW,
    GradientWeighting,
    GradNorm,
    LossWeighting,
    Weighting,
    create_weighting,
    get_weighting_class,
    list_weightings,
    register_weighting,
)
from mtlzoo.weighting import registry as weighting_registry
from mtlzoo.weighting.gradients import gram_matrix, min_norm_weights

pytestmark = pytest.mark.usefixtures("float64")

BUILTIN = ("cagrad", "dwa", "equal", "fixed", "gradnorm", "imtl", "mgda", "pcgrad", "rlw",
           "uncertainty")
TASKS = ("a", "b")
GRADIENT_METHODS = [n for n in BUILTIN if issubclass(get_weighting_class(n), GradientWeighting)]
LOSS_METHODS = [n for n in BUILTIN if issubclass(get_weighting_class(n), LossWeighting)]


def make(name: str, tasks=TASKS, *, seed: int = 0, **options) -> Weighting:
    """A weighting with the options it needs (fixed weights, seeds) filled in."""
    if name == "fixed":
        options.setdefault("weights", {task: 0.5 + i for i, task in enumerate(tasks)})
    if name in ("rlw", "pcgrad"):
        options.setdefault("seed", seed)
    return create_weighting(name, tasks, **options)


# ---------------------------------------------------------------- a toy model and references

def toy(tasks=TASKS, seed: int = 0):
    """Shared (a tanh layer) and task-specific (one vector a task) parameters, and a closure
    returning the per-task losses."""
    gen = torch.Generator().manual_seed(seed)
    shared = [torch.randn(4, 3, generator=gen).requires_grad_(),
              torch.randn(4, generator=gen).requires_grad_()]
    heads = {task: torch.randn(4, generator=gen).requires_grad_() for task in tasks}
    x = torch.randn(8, 3, generator=gen)

    def losses(present=tasks) -> dict[str, torch.Tensor]:
        hidden = torch.tanh(x @ shared[0].T + shared[1])
        return {task: (hidden @ heads[task] - tasks.index(task)).pow(2).mean() for task in present}

    return shared, list(heads.values()), losses


def jacobian(losses: dict[str, torch.Tensor], params) -> torch.Tensor:
    """The (t, p) per-task gradients, one autograd.grad per task (the loop reference)."""
    rows = []
    for loss in losses.values():
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        pieces = [torch.zeros(p.numel()) if g is None else g.reshape(-1)
                  for g, p in zip(grads, params, strict=True)]
        rows.append(torch.cat(pieces))
    return torch.stack(rows)


def flat_grad(params) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in params])


def simplex_grid(t: int, n: int) -> torch.Tensor:
    """Every point of the simplex with coordinates in multiples of 1/n, (points, t)."""
    points = [(*c, n - sum(c)) for c in itertools.product(range(n + 1), repeat=t - 1)
              if sum(c) <= n]
    return torch.tensor(points, dtype=torch.float64) / n


# ------------------------------------------------------------------------------ the registry

@pytest.fixture
def clean_registry():
    saved = dict(weighting_registry._WEIGHTINGS)
    yield
    weighting_registry._WEIGHTINGS.clear()
    weighting_registry._WEIGHTINGS.update(saved)


def test_list_weightings_is_sorted_and_exactly_the_builtins():
    assert list_weightings() == sorted(BUILTIN)


@pytest.mark.parametrize("name", BUILTIN)
def test_create_weighting_round_trip(name):
    weighting = make(name)
    assert type(weighting) is get_weighting_class(name)
    assert weighting.task_names == TASKS


@pytest.mark.usefixtures("clean_registry")
def test_register_a_new_weighting_and_a_taken_name():
    @register_weighting("scratch_half")
    class Half(LossWeighting):
        def __init__(self, task_names, *, factor: float = 0.5):
            super().__init__(task_names)
            self.factor = factor

        def weights(self, losses):
            return torch.full((len(losses),), self.factor)

    assert "scratch_half" in list_weightings()
    assert create_weighting("scratch_half", TASKS, factor=0.25).factor == 0.25
    with pytest.raises(MtlzooError, match="'scratch_half'"):
        register_weighting("scratch_half")(Half)
    with pytest.raises(MtlzooError, match="'mgda'"):
        register_weighting("mgda")(Half)
    with pytest.raises(MtlzooError, match="Weighting subclass"):
        register_weighting("scratch_function")(lambda task_names: None)


def test_unknown_name_suggests_the_close_one():
    with pytest.raises(MtlzooError, match=r"'pcgard'.*Did you mean 'pcgrad'"):
        create_weighting("pcgard", TASKS)


def test_unknown_option_is_named():
    with pytest.raises(MtlzooError, match=r"'temprature'.*Did you mean 'temperature'"):
        create_weighting("dwa", TASKS, temprature=1.0)
    with pytest.raises(MtlzooError, match="'seed'"):
        create_weighting("mgda", TASKS, seed=0)


def test_missing_required_option_is_named():
    with pytest.raises(MtlzooError, match="weights"):
        create_weighting("fixed", TASKS)


@pytest.mark.parametrize(
    ("name", "options", "named"),
    [
        ("dwa", {"temperature": 0}, "0"),
        ("dwa", {"temperature": -1.5}, "-1.5"),
        ("dwa", {"temperature": "hot"}, "'hot'"),
        ("cagrad", {"c": -0.5}, "-0.5"),
        ("cagrad", {"c": float("nan")}, "nan"),
        ("gradnorm", {"alpha": True}, "True"),
        ("gradnorm", {"alpha": -1}, "-1"),
        ("mgda", {"normalisation": "L2"}, "'L2'"),
        ("rlw", {"seed": -1}, "-1"),
        ("pcgrad", {"seed": 1.5}, "1.5"),
        ("fixed", {"weights": {"a": -1.0, "b": 1.0}}, "-1.0"),
        ("fixed", {"weights": {"a": float("inf"), "b": 1.0}}, "inf"),
        ("fixed", {"weights": [1.0, 2.0]}, r"\[1.0, 2.0\]"),
        ("fixed", {"weights": {"a": 1.0}}, "'b'"),
        ("fixed", {"weights": {"a": 1.0, "b": 1.0, "c": 1.0}}, "'c'"),
    ],
)
def test_bad_option_values_are_named(name, options, named):
    with pytest.raises(MtlzooError, match=named):
        create_weighting(name, TASKS, **options)


@pytest.mark.parametrize("task_names", ["ab", [], ["a", "a"], ["a", 3], None])
def test_bad_task_names(task_names):
    with pytest.raises(MtlzooError):
        create_weighting("equal", task_names)


@pytest.mark.parametrize("name", [*LOSS_METHODS, "gradnorm"])
def test_unknown_task_in_the_losses_is_named(name):
    shared, specific, losses = toy(("a", "c"))
    with pytest.raises(MtlzooError, match=r"'c'"):
        make(name).backward(losses(), shared, specific)


# ------------------------------------------------------------------- loss weightings: answers

@pytest.mark.parametrize("name", ["equal", "fixed"])
def test_equal_and_fixed_leave_the_gradient_of_the_weighted_sum(name):
    shared, specific, losses = toy()
    weighting = make(name)
    weights = weighting.backward(losses(), shared, specific)
    expected = torch.tensor([1.0, 1.0]) if name == "equal" else torch.tensor([0.5, 1.5])
    assert torch.equal(weights, expected)
    params = [*shared, *specific]
    reference = torch.autograd.grad((expected * torch.stack(list(losses().values()))).sum(),
                                    params)
    for param, grad in zip(params, reference, strict=True):
        assert torch.equal(param.grad, grad)


def test_fixed_weights_follow_the_task_names_not_the_step_order():
    weighting = make("fixed", weights={"a": 2.0, "b": 3.0})
    losses = {"b": torch.tensor(1.0), "a": torch.tensor(1.0)}
    assert weighting.weights(losses).tolist() == [3.0, 2.0]


def test_uncertainty_drives_weighted_losses_to_one_half():
    """The optimum: s = log L for regression (a bare name), s = log 2L for classification."""
    tasks = (mtlzoo.Task("a", kind="regression"), mtlzoo.Task("b"), "c")
    weighting = make("uncertainty", tasks=tasks)
    loss = torch.tensor([100.0, 0.01, 3.0])
    losses = dict(zip(("a", "b", "c"), loss, strict=True))
    optimizer = torch.optim.Adam(weighting.parameters(), lr=0.05)
    for _ in range(1500):
        optimizer.zero_grad()
        weighting.backward(losses, [], [])
        optimizer.step()
    torch.testing.assert_close(weighting.log_vars.detach(),
                               (loss * torch.tensor([1.0, 2.0, 1.0])).log(), atol=2e-3, rtol=0)
    weights = weighting.weights(losses)
    torch.testing.assert_close(weights * loss, torch.full((3,), 0.5), atol=2e-3, rtol=0)


def test_uncertainty_total_is_the_documented_formula():
    weighting = make("uncertainty", tasks=(mtlzoo.Task("a", kind="regression"),
                                           mtlzoo.Task("b", kind="multiclass", num_classes=3)))
    with torch.no_grad():
        weighting.log_vars.copy_(torch.tensor([0.5, -1.0]))
    losses = {"a": torch.tensor(2.0), "b": torch.tensor(3.0)}
    expected = 0.5 * math.exp(-0.5) * 2.0 + 0.25 + math.exp(1.0) * 3.0 - 0.5
    total = weighting.total(losses, weighting.weights(losses))
    assert total.item() == pytest.approx(expected, rel=1e-14)


def test_dwa_weights_from_the_loss_history():
    weighting = make("dwa", temperature=2.0)
    losses = {"a": torch.tensor(1.0), "b": torch.tensor(1.0)}
    assert weighting.weights(losses).tolist() == [1.0, 1.0]  # epoch 1
    weighting.epoch_end({"a": 1.0, "b": 2.0})
    assert weighting.weights(losses).tolist() == [1.0, 1.0]  # epoch 2
    weighting.epoch_end({"a": 0.5, "b": 1.8})
    r = [0.5 / 1.0, 1.8 / 2.0]
    expected = [2 * math.exp(ri / 2) / sum(math.exp(rk / 2) for rk in r) for ri in r]
    torch.testing.assert_close(weighting.weights(losses), torch.tensor(expected))
    weighting.epoch_end({"a": 0.4, "b": torch.tensor(0.9)})
    r = [0.4 / 0.5, 0.9 / 1.8]
    expected = [2 * math.exp(ri / 2) / sum(math.exp(rk / 2) for rk in r) for ri in r]
    torch.testing.assert_close(weighting.weights(losses), torch.tensor(expected))
    assert weighting.weights({"b": torch.tensor(1.0)}).tolist() == [1.0]  # one task: T = 1


def test_dwa_rejects_bad_mean_losses():
    weighting = make("dwa")
    with pytest.raises(MtlzooError, match="'c'"):
        weighting.epoch_end({"c": 1.0})
    with pytest.raises(MtlzooError, match="nan"):
        weighting.epoch_end({"a": float("nan")})


def test_rlw_weights_are_a_seeded_softmax_and_the_generator_checkpoints():
    first, second, other = make("rlw", seed=3), make("rlw", seed=3), make("rlw", seed=4)
    losses = {"a": torch.tensor(1.0), "b": torch.tensor(2.0)}
    draws = [first.weights(losses) for _ in range(5)]
    for weights in draws:
        assert (weights > 0).all()
        assert weights.sum().item() == pytest.approx(1.0, abs=1e-15)
    assert all(torch.equal(w, second.weights(losses)) for w in draws)
    assert not torch.equal(draws[0], other.weights(losses))
    state = first.state_dict()
    expected = first.weights(losses)
    restored = make("rlw", seed=99)
    restored.load_state_dict(state)
    assert torch.equal(restored.weights(losses), expected)


def test_rlw_backward_applies_the_weights_it_returns():
    shared, specific, losses = toy()
    weights = make("rlw").backward(losses(), shared, specific)
    params = [*shared, *specific]
    reference = torch.autograd.grad((weights * torch.stack(list(losses().values()))).sum(), params)
    for param, grad in zip(params, reference, strict=True):
        assert torch.equal(param.grad, grad)


# ---------------------------------------------------------------------- GradNorm: answers

def linear_tasks(norms=(1.0, 4.0)):
    """One shared vector theta (2,); L_t = 10 + n_t theta_t, so ||grad L_t|| = n_t always."""
    theta = torch.zeros(2, requires_grad=True)

    def losses():
        return {"a": 10 + norms[0] * theta[0], "b": 10 + norms[1] * theta[1]}

    return theta, losses


def test_gradnorm_equalises_weighted_gradient_norms():
    theta, losses = linear_tasks()
    weighting = make("gradnorm", alpha=0.0)
    optimizer = torch.optim.Adam(weighting.parameters(), lr=2e-3)
    for _ in range(1500):
        optimizer.zero_grad()
        theta.grad = None
        weighting.backward(losses(), [theta], [])
        optimizer.step()
        weighting.after_step()
        assert weighting.task_weights.sum().item() == pytest.approx(2.0, abs=1e-12)
    w = weighting.task_weights.detach()
    torch.testing.assert_close(w * torch.tensor([1.0, 4.0]), torch.full((2,), 1.6), rtol=1e-2,
                               atol=0)
    assert (w > 0).all()


def test_gradnorm_weight_gradient_is_the_hand_formula():
    theta, _ = linear_tasks()
    weighting = make("gradnorm", alpha=1.5)
    with torch.no_grad():
        weighting.task_weights.copy_(torch.tensor([1.5, 0.5]))
    first = {"a": 2.0 + 0 * theta[0], "b": 1.0 + 4 * theta[1]}
    weighting.backward(first, [theta], [])  # records L(0) = (2, 1)
    weighting.task_weights.grad = None
    now = {"a": 1.0 + theta[0], "b": 1.0 + 4 * theta[1]}
    returned = weighting.backward(now, [theta], [])
    g = torch.tensor([1.0, 4.0])
    w = torch.tensor([1.5, 0.5])
    ratio = torch.tensor([1.0 / 2.0, 1.0 / 1.0])
    target = (w * g).mean() * (ratio / ratio.mean()) ** 1.5
    torch.testing.assert_close(weighting.task_weights.grad, torch.sign(w * g - target) * g)
    assert torch.equal(returned, w)


def test_gradnorm_gives_the_model_the_gradient_of_the_weighted_sum():
    shared, specific, losses = toy()
    weighting = make("gradnorm")
    with torch.no_grad():
        weighting.task_weights.copy_(torch.tensor([0.25, 1.75]))
    weighting.backward(losses(), shared, specific)
    params = [*shared, *specific]
    w = torch.tensor([0.25, 1.75])
    reference = torch.autograd.grad((w * torch.stack(list(losses().values()))).sum(), params)
    for param, grad in zip(params, reference, strict=True):
        torch.testing.assert_close(param.grad, grad)


def test_gradnorm_after_step_keeps_weights_positive_and_summing_to_t():
    weighting = make("gradnorm", tasks=("a", "b", "c"))
    with torch.no_grad():
        weighting.task_weights.copy_(torch.tensor([-1.0, 2.0, 4.0]))
    weighting.after_step()
    w = weighting.task_weights.detach()
    assert (w > 0).all()
    assert w.sum().item() == pytest.approx(3.0)
    torch.testing.assert_close(w[1:] / w[1:].sum(), torch.tensor([1 / 3, 2 / 3]))


# ---------------------------------------------------------------------- PCGrad: answers

def test_pcgrad_projects_two_conflicting_gradients():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2  # (0.5, 0.5)
    p2 = g2 - (g2 @ g1) / (g1 @ g1) * g1  # (0, 1)
    weighting = make("pcgrad")
    for grads, expected in (((g1, g2), p1 + p2), ((g2, g1), p2 + p1)):
        update, weights = weighting.combine(torch.stack(grads), torch.ones(2))
        torch.testing.assert_close(update, expected)
        torch.testing.assert_close(update, weights @ torch.stack(grads))
    torch.testing.assert_close(p1 + p2, torch.tensor([0.5, 1.5]))


def test_pcgrad_leaves_agreeing_gradients_alone():
    grads = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    update, _ = make("pcgrad").combine(grads, torch.ones(3))
    assert torch.equal(update, grads.sum(dim=0))


def pcgrad_outcomes(grads: torch.Tensor) -> list[torch.Tensor]:
    """The update for every choice of one order per task (the loop algorithm of the paper)."""
    t = len(grads)
    choices = []
    for i in range(t):
        others = [j for j in range(t) if j != i]
        outcomes = []
        for order in itertools.permutations(others):
            g = grads[i].clone()
            for j in order:
                if g @ grads[j] < 0:
                    g = g - (g @ grads[j]) / (grads[j] @ grads[j]) * grads[j]
            outcomes.append(g)
        choices.append(outcomes)
    return [torch.stack(combo).sum(dim=0) for combo in itertools.product(*choices)]


def test_pcgrad_with_three_tasks_is_the_loop_algorithm_for_some_order():
    grads = torch.tensor([[1.0, 0.2, 0.0], [-1.0, 1.0, 0.3], [0.1, -1.0, 1.0]])
    outcomes = pcgrad_outcomes(grads)
    seen = set()
    for seed in range(12):
        update, _ = make("pcgrad", seed=seed).combine(grads, torch.ones(3))
        matches = [k for k, o in enumerate(outcomes) if torch.allclose(update, o)]
        assert matches, f"seed {seed}: {update} is no ordering's result"
        seen.add(matches[0])
    assert len(seen) > 1  # the order is random, and it matters here


# ------------------------------------------------------------------------ MGDA: answers

@pytest.mark.parametrize("seed", range(5))
def test_mgda_two_tasks_is_the_closed_form(seed):
    gen = torch.Generator().manual_seed(seed)
    g1, g2 = torch.randn(6, generator=gen), torch.randn(6, generator=gen)
    alpha = ((g2 - g1) @ g2 / (g1 - g2).pow(2).sum()).clamp(0, 1)
    update, weights = make("mgda").combine(torch.stack([g1, g2]), torch.ones(2))
    torch.testing.assert_close(weights, torch.stack([alpha, 1 - alpha]))
    torch.testing.assert_close(update, alpha * g1 + (1 - alpha) * g2)


def test_mgda_two_tasks_at_a_vertex():
    grads = torch.tensor([[1.0, 0.0], [2.0, 0.0]])  # the shorter one is the min-norm point
    update, weights = make("mgda").combine(grads, torch.ones(2))
    assert weights.tolist() == [1.0, 0.0]
    assert update.tolist() == [1.0, 0.0]


@pytest.mark.parametrize("seed", range(4))
def test_mgda_three_tasks_matches_a_brute_force_search(seed):
    gen = torch.Generator().manual_seed(seed)
    grads = torch.randn(3, 4, generator=gen) + 0.5 * torch.randn(4, generator=gen)
    update, weights = make("mgda").combine(grads, torch.ones(3))
    grid = simplex_grid(3, 300)
    norms = (grid @ grads).pow(2).sum(dim=1)
    best = grid[norms.argmin()]
    assert update.pow(2).sum() <= norms.min() + 1e-12
    torch.testing.assert_close(weights, best, atol=5e-3, rtol=0)
    assert weights.min() >= 0
    assert weights.sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("t", [3, 6, 10])
def test_min_norm_weights_meet_the_optimality_conditions(t):
    gen = torch.Generator().manual_seed(t)
    grads = torch.randn(t, 8, generator=gen) + 0.3 * torch.randn(8, generator=gen)
    gram = gram_matrix(grads)
    w = min_norm_weights(gram)
    slope = gram @ w  # the gradient of w^T M w / 2: equal on the support, larger off it
    support = w > 0
    scale = gram.diagonal().max()
    assert (slope[support].max() - slope[support].min()) <= 1e-8 * scale
    assert (slope >= slope[support].max() - 1e-8 * scale).all()


@pytest.mark.parametrize("t", [2, 3, 4])
def test_mgda_orthogonal_equal_gradients_get_equal_weights(t):
    update, weights = make("mgda").combine(3 * torch.eye(t), torch.ones(t))
    torch.testing.assert_close(weights, torch.full((t,), 1 / t))
    torch.testing.assert_close(update, torch.full((t,), 3 / t))


@pytest.mark.parametrize(
    ("normalisation", "losses"), [("l2", [1.0, 1.0]), ("loss", [10.0, 1.0]), ("loss+", [3.0, 3.0])]
)
def test_mgda_normalisations(normalisation, losses):
    grads = torch.tensor([[10.0, 0.0], [0.0, 1.0]])  # equal once normalised
    update, weights = make("mgda", normalisation=normalisation).combine(
        grads, torch.tensor(losses)
    )
    torch.testing.assert_close(weights, torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(update, torch.tensor([5.0, 0.5]))
    _, raw = make("mgda").combine(grads, torch.tensor(losses))
    assert raw[1] > 0.9  # unnormalised, the short gradient dominates


# ---------------------------------------------------------------------- CAGrad: answers

def cagrad_objective(w: torch.Tensor, grads: torch.Tensor, c: float) -> torch.Tensor:
    g0 = grads.mean(dim=0)
    return w @ grads @ g0 + c * g0.norm() * (w @ grads).norm(dim=-1)


def test_cagrad_with_c_zero_is_the_mean_gradient():
    grads = torch.randn(3, 5)
    update, weights = make("cagrad", c=0.0).combine(grads, torch.ones(3))
    assert torch.equal(update, grads.mean(dim=0))
    torch.testing.assert_close(weights, torch.full((3,), 1 / 3))


def test_cagrad_symmetric_gradients_give_a_symmetric_update():
    update, weights = make("cagrad").combine(torch.eye(2), torch.ones(2))
    torch.testing.assert_close(update[0], update[1])
    torch.testing.assert_close(weights[0], weights[1])


def test_cagrad_reduces_conflict():
    grads = torch.tensor([[1.0, 0.1], [-3.0, 0.5]])
    g0 = grads.mean(dim=0)
    update, weights = make("cagrad", c=0.5).combine(grads, torch.ones(2))
    assert (grads @ update).min() > (grads @ g0).min()
    torch.testing.assert_close(update, weights @ grads)


@pytest.mark.parametrize("seed", range(3))
def test_cagrad_matches_a_brute_force_search(seed):
    gen = torch.Generator().manual_seed(seed)
    grads = torch.randn(3, 4, generator=gen) + 0.3 * torch.randn(4, generator=gen)
    c = 0.5
    update, _ = make("cagrad", c=c).combine(grads, torch.ones(3))
    grid = simplex_grid(3, 300)
    values = cagrad_objective(grid, grads, c)
    w = grid[values.argmin()]
    g0 = grads.mean(dim=0)
    gw = w @ grads
    expected = (g0 + c * g0.norm() / gw.norm() * gw) / (1 + c**2)
    torch.testing.assert_close(update, expected, atol=1e-2, rtol=0)
    # the solver's own w: recover it from the update and check it is at least as good
    _, weights = make("cagrad", c=c).combine(grads, torch.ones(3))
    lam_w = weights * (1 + c**2) - 1 / 3
    solved = lam_w / lam_w.sum()
    assert cagrad_objective(solved, grads, c) <= values.min() + 1e-12


# ------------------------------------------------------------------------ IMTL: answers

@pytest.mark.parametrize("t", [2, 4])
def test_imtl_update_has_equal_projections_on_every_task(t):
    grads = torch.randn(t, 10) * torch.tensor([1.0, 5.0, 0.2, 2.0][:t])[:, None]
    update, weights = make("imtl", tasks=tuple("abcd"[:t])).combine(grads, torch.ones(t))
    units = grads / grads.norm(dim=1, keepdim=True)
    projections = units @ update
    torch.testing.assert_close(projections, projections.mean().expand(t))
    assert weights.sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(update, weights @ grads)


# ------------------------------------------------------- contracts every method keeps

@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_gradient_method_gradients(name):
    """Task-specific parameters get the gradient of sum_t L_t; shared ones the update that
    ``combine`` returns for the reference Jacobian (for a fresh GradNorm, w = 1)."""
    shared, specific, losses = toy()
    weighting = make(name)
    twin = make(name, seed=7)
    twin.load_state_dict(weighting.state_dict())
    reference_losses = losses()
    grads = jacobian(reference_losses, shared)
    values = torch.stack(list(reference_losses.values())).detach()
    expected_update, expected_weights = twin.combine(grads, values)
    weights = weighting.backward(losses(), shared, specific)
    torch.testing.assert_close(flat_grad(shared), expected_update)
    torch.testing.assert_close(weights, expected_weights)
    torch.testing.assert_close(flat_grad(specific), jacobian(losses(), specific).sum(dim=0))
    torch.testing.assert_close(expected_update, expected_weights @ grads)  # weights applied


@pytest.mark.parametrize("name", BUILTIN)
def test_one_task_in_a_step(name):
    shared, specific, losses = toy()
    weighting = make(name)
    one = losses(present=("b",))
    weights = weighting.backward(one, shared, specific)
    assert weights.shape == (1,)
    assert torch.isfinite(weights).all() and weights.item() > 0
    expected_shared = weights * jacobian(losses(present=("b",)), shared)[0]
    if name in ("mgda", "imtl", "pcgrad", "equal", "rlw"):
        assert weights.item() == pytest.approx(1.0)
    torch.testing.assert_close(flat_grad(shared), expected_shared)
    head_a, head_b = specific
    assert head_a.grad is None or not head_a.grad.any()  # None (one backward) or zeros
    scale = 1.0 if name in GRADIENT_METHODS and name != "gradnorm" else weights
    reference = scale * jacobian(losses(present=("b",)), [head_b])[0]
    torch.testing.assert_close(head_b.grad, reference)


def regression_model() -> mtlzoo.MultiTaskModel:
    tasks = [mtlzoo.Task("a"), mtlzoo.Task("b", kind="regression")]
    return mtlzoo.create_model("mmoe", in_features=6, tasks=tasks)


def model_step(model, weighting, x, y) -> torch.Tensor:
    logits = model(x).logits
    losses = {
        "a": F.binary_cross_entropy_with_logits(logits["a"], y["a"]),
        "b": F.mse_loss(logits["b"], y["b"]),
    }
    return weighting.backward(losses, model.shared_parameters(), model.task_parameters())


def batch(seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 6, generator=gen)
    y = {"a": torch.randint(0, 2, (16, 1), generator=gen).to(x.dtype),
         "b": torch.randn(16, 1, generator=gen)}
    return x, y


@pytest.mark.parametrize("name", BUILTIN)
def test_backward_on_a_real_model(name):
    model = regression_model()
    weighting = make(name)
    weights = model_step(model, weighting, *batch(0))
    assert weights.shape == (2,) and torch.isfinite(weights).all()
    for param in model.parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all()


@pytest.mark.parametrize("name", BUILTIN)
def test_backward_in_float32(name):
    torch.set_default_dtype(torch.float32)  # the float64 fixture restores the default after
    model = regression_model()
    weighting = make(name)
    weights = model_step(model, weighting, *batch(0))
    assert weights.dtype == torch.float32 and torch.isfinite(weights).all()
    for param in [*model.parameters(), *weighting.parameters()]:
        assert param.grad.dtype == torch.float32 and torch.isfinite(param.grad).all()


@pytest.mark.parametrize("name", BUILTIN)
def test_state_dict_reproduces_the_next_step(name):
    model = regression_model()
    weighting = make(name)
    optimizer = torch.optim.SGD([*model.parameters(), *weighting.parameters()], lr=0.05)
    for step in range(3):
        optimizer.zero_grad()
        model_step(model, weighting, *batch(step))
        optimizer.step()
        weighting.after_step()
        weighting.epoch_end({"a": 0.7 - 0.1 * step, "b": 1.0 + 0.2 * step})
    twin_model = copy.deepcopy(model)
    restored = make(name, seed=123)  # a different seed: the state must bring the right one
    restored.load_state_dict(weighting.state_dict())
    results = []
    for m, w in ((model, weighting), (twin_model, restored)):
        m.zero_grad()
        w.zero_grad()
        weights = model_step(m, w, *batch(9))
        results.append((weights, [p.grad for p in m.parameters()],
                        [p.grad for p in w.parameters()]))
    (w1, model1, own1), (w2, model2, own2) = results
    assert torch.equal(w1, w2)
    assert all(torch.equal(a, b) for a, b in zip(model1, model2, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(own1, own2, strict=True))


def test_stateful_methods_checkpoint_their_state():
    assert "log_vars" in make("uncertainty").state_dict()
    assert "loss_history" in make("dwa").state_dict()
    assert {"task_weights", "initial_losses"} <= set(make("gradnorm").state_dict())
    assert "_extra_state" in make("rlw").state_dict()
    assert "_extra_state" in make("pcgrad").state_dict()
    assert isinstance(make("dwa"), DWA) and isinstance(make("rlw"), RLW)
    assert isinstance(make("gradnorm"), GradNorm)


def test_mgda_upper_bound_weights_the_gradients_at_the_representation():
    """MGDA-UB: the min-norm point of the task gradients w.r.t. Z, then sum alpha_t L_t."""
    torch.manual_seed(0)
    weight = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(5, 3, dtype=torch.float64)
    z = x @ weight  # the shared representation (5, 4)
    a, b = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    losses = {"a": (z @ a).sum(), "b": (z @ b).square().sum()}
    g1 = a.expand(5, 4).reshape(-1)
    g2 = (2 * (z @ b)[:, None] * b).reshape(-1).detach()
    alpha1 = torch.clamp(((g2 - g1) @ g2) / (g1 - g2).square().sum(), 0, 1)
    mgda = mtlzoo.create_weighting("mgda", ["a", "b"])
    got = mgda.backward(losses, [weight], [], representation=z)
    torch.testing.assert_close(got, torch.stack([alpha1, 1 - alpha1]))
    expected = torch.autograd.grad(
        alpha1 * (x @ weight @ a).sum() + (1 - alpha1) * (x @ weight @ b).square().sum(), weight
    )[0]
    torch.testing.assert_close(weight.grad, expected)


def test_the_trainer_hands_mgda_the_encoder_output_in_the_joint_regime(monkeypatch):
    from mtlzoo.weighting import MGDA

    seen = []
    backward = MGDA.backward

    def spy(self, losses, shared, specific, representation=None):
        seen.append(None if representation is None else tuple(representation.shape))
        return backward(self, losses, shared, specific, representation)

    monkeypatch.setattr(MGDA, "backward", spy)
    tasks = [mtlzoo.Task("a"), mtlzoo.Task("b")]
    x = torch.randn(32, 6)
    labels = {"a": (x[:, 0] > 0).long(), "b": (x[:, 1] > 0).long()}
    for encoder, data in (
        (torch.nn.Linear(6, 6), {"x": x, **labels}),  # joint: one forward, Z handed over
        (None, {"x": x, **labels}),  # no encoder: no Z
        (torch.nn.Linear(6, 6), {name: {"x": x, "label": y} for name, y in labels.items()}),
    ):
        model = mtlzoo.create_model("mmoe", in_features=6, tasks=tasks, encoder=encoder)
        trainer = mtlzoo.Trainer(model, weighting="mgda", batch_size=32, progress=False)
        trainer.fit(data, eval=data, steps=1)
    assert seen == [(32, 6), None, None]  # per-task regime: two forwards, no single Z


@pytest.mark.parametrize("retain_graph", [False, True])
def test_task_gradients_one_pass_per_task_equal_the_batched_pass(retain_graph):
    """``batched=False`` (a compiled model's backward) gives the batched Jacobian, zeros
    where a task does not reach a parameter, and keeps the graph only when asked."""
    from mtlzoo.weighting.gradients import task_gradients

    torch.manual_seed(0)
    shared = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    heads = [torch.randn(3, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    x = torch.randn(7, 5, dtype=torch.float64)

    def losses():
        z = torch.tanh(x @ shared)
        return torch.stack([(z @ head).pow(2).mean() for head in heads])

    expected = task_gradients(losses(), [shared], heads)
    values = losses()
    got = task_gradients(values, [shared], heads, batched=False, retain_graph=retain_graph)
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-14)
    assert got[1][0, 3:].abs().sum() == 0  # task 0 does not reach head 1
    if retain_graph:
        values.sum().backward()
    else:
        with pytest.raises(RuntimeError, match="backward through the graph a second time"):
            values.sum().backward()
