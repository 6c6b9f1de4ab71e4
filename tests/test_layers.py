"""Every batched kernel against its naive loop reference, in float64, to 1e-10."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mtlzoo
from mtlzoo.layers import (
    ACTIVATIONS,
    CrossStitchUnit,
    SoftmaxGates,
    StackedLinear,
    StackedMLP,
    TaskHeads,
    mix_experts,
)
from mtlzoo.reference import LoopCrossStitch, LoopGates, LoopLinear, LoopMLP, loop_version

TOL = 1e-10


pytestmark = pytest.mark.usefixtures("float64")


def assert_same_values_and_grads(batched, loop, inputs, call=lambda module, *xs: module(*xs)):
    """Outputs match, and so do the gradients of a random projection of them."""
    inputs_a = [x.clone().requires_grad_() for x in inputs]
    inputs_b = [x.clone().requires_grad_() for x in inputs]
    out_a, out_b = call(batched, *inputs_a), call(loop, *inputs_b)
    outs_a = out_a if isinstance(out_a, tuple) else (out_a,)
    outs_b = out_b if isinstance(out_b, tuple) else (out_b,)
    loss_a = loss_b = 0
    for a, b in zip(outs_a, outs_b, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)
        probe = torch.randn_like(a)
        loss_a, loss_b = loss_a + (a * probe).sum(), loss_b + (b * probe).sum()
    loss_a.backward()
    loss_b.backward()
    for x_a, x_b in zip(inputs_a, inputs_b, strict=True):
        torch.testing.assert_close(x_a.grad, x_b.grad, atol=TOL, rtol=0)
    for g_a, g_b in zip(stacked_grads(batched), stacked_grads(loop), strict=True):
        torch.testing.assert_close(g_a, g_b, atol=TOL, rtol=0)


def stacked_grads(module) -> list[torch.Tensor]:
    """Parameter gradients in the batched layout, for a batched kernel or its loop version."""

    def grad(param):  # a group left out by ``index`` gets no gradient in the loop version
        return torch.zeros_like(param) if param.grad is None else param.grad

    def from_linears(linears):
        grads = [torch.stack([grad(lin.weight).T for lin in linears])]
        if linears[0].bias is not None:
            grads.append(torch.stack([grad(lin.bias) for lin in linears]))
        return grads

    if isinstance(module, StackedLinear):
        return [grad(p) for p in (module.weight, module.bias) if p is not None]
    if isinstance(module, LoopLinear):
        return from_linears(module.per_group)
    if isinstance(module, StackedMLP):
        return [g for layer in module.layers for g in stacked_grads(layer)]
    if isinstance(module, LoopMLP):
        mlps = module.per_group
        depth = sum(isinstance(m, torch.nn.Linear) for m in mlps[0])
        return [g for i in range(depth) for g in from_linears([mlp[3 * i] for mlp in mlps])]
    if isinstance(module, SoftmaxGates):
        return stacked_grads(module.logits)
    if isinstance(module, LoopGates):
        return from_linears(module.linears)
    if isinstance(module, (CrossStitchUnit, LoopCrossStitch)):
        return [module.alpha.grad]
    return stacked_grads(module.towers) + stacked_grads(module.output)  # TaskHeads


# --- StackedLinear -------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 5),
    groups=st.integers(1, 6),
    d=st.integers(1, 7),
    o=st.integers(1, 7),
    per_group=st.booleans(),
    bias=st.booleans(),
)
def test_stacked_linear_matches_loop(batch, groups, d, o, per_group, bias):
    torch.set_default_dtype(torch.float64)
    layer = StackedLinear(groups, d, o, bias=bias)
    x = torch.randn(batch, groups, d) if per_group else torch.randn(batch, d)
    assert_same_values_and_grads(layer, LoopLinear(layer), [x])


@pytest.mark.parametrize("index", [[0], [2, 0], [1, 2, 3, 0]])
@pytest.mark.parametrize("per_group", [False, True])
def test_stacked_linear_group_subset_matches_loop(index, per_group):
    layer = StackedLinear(4, 3, 2)
    x = torch.randn(5, len(index), 3) if per_group else torch.randn(5, 3)
    call = lambda module, x: module(x, index)  # noqa: E731
    assert_same_values_and_grads(layer, LoopLinear(layer), [x], call)
    full = layer(torch.randn(5, 3))
    assert layer(torch.randn(5, 3), index).shape == (5, len(index), full.shape[2])


def test_stacked_linear_slices_are_initialised_like_nn_linear():
    d, o, groups = 50, 40, 30
    layer = StackedLinear(groups, d, o)
    bound = 1 / math.sqrt(d)  # nn.Linear(d, o): weight and bias ~ U(-1/sqrt(d), 1/sqrt(d))
    for tensor in (layer.weight, layer.bias):
        assert tensor.abs().max() <= bound
        assert tensor.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    reference = torch.nn.Linear(d, o)
    assert reference.weight.abs().max() <= bound
    assert not torch.equal(layer.weight[0], layer.weight[1])  # slices drawn independently


# --- StackedMLP ----------------------------------------------------------------------------


@pytest.mark.parametrize("dims", [(4,), (5, 3), (6, 2, 3)])
@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh"])
@pytest.mark.parametrize("per_group", [False, True])
def test_stacked_mlp_matches_loop(dims, activation, per_group):
    mlp = StackedMLP(3, 4, dims, activation)
    x = torch.randn(6, 3, 4) if per_group else torch.randn(6, 4)
    assert_same_values_and_grads(mlp, LoopMLP(mlp), [x])


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("per_group", [False, True])
def test_in_place_activations_keep_gradients_exact(activation, per_group):
    """Activations run in place on fresh matmul results: gradcheck against finite differences."""
    mlp = StackedMLP(2, 3, (4, 3), activation)
    x = torch.randn(5, 2, 3) if per_group else torch.randn(5, 3)
    names = [name for name, _ in mlp.named_parameters()]

    def output(*params):
        return torch.func.functional_call(mlp, dict(zip(names, params, strict=True)), (x,))

    params = tuple(p.detach().clone().requires_grad_() for p in mlp.parameters())
    assert torch.autograd.gradcheck(output, params)


def test_stacked_mlp_with_no_layers_is_identity():
    mlp = StackedMLP(3, 4, ())
    x = torch.randn(2, 3, 4)
    assert mlp(x) is x
    assert mlp.out_features == 4


def test_stacked_mlp_dropout_acts_in_training_only():
    mlp = StackedMLP(2, 4, (64,), dropout=0.5)
    x = torch.randn(8, 4)
    mlp.eval()
    torch.testing.assert_close(mlp(x), mlp(x))
    mlp.train()
    assert (mlp(x) == 0).float().mean() > 0.3


# --- SoftmaxGates and the mixing ------------------------------------------------------------


def test_mix_experts_matches_loop():
    weights, experts = torch.rand(4, 3, 5), torch.randn(4, 5, 6)
    expected = torch.stack(
        [sum(weights[:, g, e, None] * experts[:, e] for e in range(5)) for g in range(3)], dim=1
    )
    torch.testing.assert_close(mix_experts(weights, experts), expected, atol=TOL, rtol=0)


MASK = torch.tensor(
    [[1, 1, 0, 0, 1], [0, 0, 1, 1, 1], [1, 0, 1, 0, 1]], dtype=torch.bool
)


@pytest.mark.parametrize("mask", [None, MASK], ids=["all", "masked"])
@pytest.mark.parametrize("per_gate", [False, True])
@pytest.mark.parametrize("index", [None, [2, 0]])
@pytest.mark.parametrize("bias", [False, True])
def test_gates_match_loop(mask, per_gate, index, bias):
    gates = SoftmaxGates(3, 4, 5, mask, bias=bias)
    gate_count = 3 if index is None else len(index)
    x = torch.randn(6, gate_count, 4) if per_gate else torch.randn(6, 4)
    experts = torch.randn(6, 5, 7)
    call = lambda module, x, experts: module(x, experts, index)  # noqa: E731
    assert_same_values_and_grads(gates, LoopGates(gates), [x, experts], call)


def test_masked_gates_equal_a_softmax_over_masked_logits():
    """Independent of the compact storage: logits of masked experts at -inf, then softmax."""
    gates = SoftmaxGates(3, 4, 5, MASK)
    x, experts = torch.randn(6, 4), torch.randn(6, 5, 2)
    mixed, weights = gates(x, experts)
    full_logits = torch.full((6, 3, 5), -math.inf)
    for g in range(3):
        allowed = MASK[g].nonzero()[:, 0]
        full_logits[:, g, allowed] = x @ gates.logits.weight[g]  # softmax(x W_g): no bias
    expected = torch.softmax(full_logits, dim=-1)
    torch.testing.assert_close(weights, expected, atol=TOL, rtol=0)
    assert torch.all(weights[:, ~MASK] == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(6, 3), atol=TOL, rtol=0)
    torch.testing.assert_close(mixed, torch.einsum("bge,beh->bgh", expected, experts))
    assert gates.logits.weight.shape == (3, 4, 3)  # no parameter for a masked expert
    assert gates.logits.bias is None


# --- CrossStitchUnit -----------------------------------------------------------------------


@pytest.mark.parametrize("columns", [1, 2, 5])
def test_cross_stitch_matches_loop(columns):
    unit = CrossStitchUnit(columns)
    with torch.no_grad():
        unit.alpha.add_(0.1 * torch.randn(columns, columns))
    assert_same_values_and_grads(unit, LoopCrossStitch(unit), [torch.randn(4, columns, 3)])


@pytest.mark.parametrize("columns", [2, 3, 8])
def test_cross_stitch_starts_near_identity_with_convex_columns(columns):
    alpha = CrossStitchUnit(columns).alpha.detach()
    assert torch.all(alpha.diagonal() == 0.9)
    torch.testing.assert_close(alpha.sum(dim=0), torch.ones(columns))
    assert (alpha - torch.eye(columns)).abs().max() <= 0.1 + 1e-12


# --- TaskHeads -----------------------------------------------------------------------------


@pytest.mark.parametrize("tower_dims", [(), (5,), (6, 4)])
@pytest.mark.parametrize("task_ids", [None, [2], [1, 0]])
def test_task_heads_match_per_task_loop(tower_dims, task_ids):
    tasks = [
        mtlzoo.Task("a", kind="binary"),
        mtlzoo.Task("b", kind="multiclass", num_classes=4),
        mtlzoo.Task("c", kind="regression"),
    ]
    heads = TaskHeads(tasks, 7, tower_dims)
    loop = loop_version(heads)
    selected = [0, 1, 2] if task_ids is None else task_ids
    reps = torch.randn(3, len(selected), 7)

    def call(module, reps):
        return tuple(module(reps, task_ids).values())

    assert_same_values_and_grads(heads, loop, [reps], call)
    out = heads(reps, task_ids)
    assert list(out) == [tasks[t].name for t in selected]
    for t in selected:
        assert out[tasks[t].name].shape == (3, tasks[t].out_features)


def test_task_heads_use_no_loop_in_forward():
    """One einsum per tower layer: the forward runs a fixed number of matmuls for any T."""
    counts = []
    for num_tasks in (2, 16):
        heads = TaskHeads([mtlzoo.Task(f"t{i}") for i in range(num_tasks)], 4, (3,))
        with torch.profiler.profile() as prof:
            heads(torch.randn(2, num_tasks, 4))
        counts.append(sum(e.count for e in prof.key_averages() if e.key == "aten::baddbmm"))
    assert counts[0] == counts[1] == 2
