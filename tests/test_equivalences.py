"""The identities between architectures (DESIGN.md), and PLE against a plain reading of its
contract, all in float64."""

from __future__ import annotations

import pytest
import torch

import mtlzoo
from tests.conftest import IN_FEATURES, mixed_tasks

ATOL = 1e-10


pytestmark = pytest.mark.usefixtures("float64")


def create(name: str, **options) -> mtlzoo.MultiTaskModel:
    return mtlzoo.create_model(name, in_features=IN_FEATURES, tasks=mixed_tasks(), **options).eval()


def renamed(state: dict, old: str, new: str) -> dict:
    return {(new + key[len(old):] if key.startswith(old) else key): v for key, v in state.items()}


def assert_same_outputs(a, b, x) -> None:
    out_a, out_b = a(x), b(x)
    for name in out_a.logits:
        torch.testing.assert_close(out_a.logits[name], out_b.logits[name], rtol=0, atol=ATOL)


def test_cgc_without_task_experts_equals_mmoe():
    options = {"expert_dims": (9, 7), "tower_dims": (5,)}
    mmoe = create("mmoe", num_experts=4, **options)
    cgc = create("cgc", num_shared_experts=4, num_task_experts=0, **options)
    state = renamed(mmoe.state_dict(), "experts.", "levels.0.shared_experts.")
    cgc.load_state_dict(renamed(state, "gates.", "levels.0.task_gates."))
    x = torch.randn(8, IN_FEATURES)
    assert_same_outputs(mmoe, cgc, x)
    torch.testing.assert_close(
        mmoe(x).gate_weights["gates"], cgc(x).gate_weights["level1"], rtol=0, atol=ATOL
    )


def test_ple_with_one_level_equals_cgc():
    options = {"num_shared_experts": 3, "num_task_experts": 2, "expert_dims": (6,)}
    cgc = create("cgc", **options)
    ple = create("ple", num_levels=1, **options)
    ple.load_state_dict(cgc.state_dict())
    assert_same_outputs(cgc, ple, torch.randn(8, IN_FEATURES))


def test_mmoe_with_one_expert_equals_shared_bottom():
    mmoe = create("mmoe", num_experts=1, expert_dims=(9, 7))
    bottom = create("shared_bottom", bottom_dims=(9, 7))
    state = {k: v for k, v in mmoe.state_dict().items() if not k.startswith("gates.")}
    bottom.load_state_dict(renamed(state, "experts.", "bottom."))
    x = torch.randn(8, IN_FEATURES)
    assert_same_outputs(mmoe, bottom, x)
    assert torch.all(mmoe(x).gate_weights["gates"] == 1)


def test_omoe_equals_mmoe_whose_gates_are_all_the_same():
    omoe = create("omoe", num_experts=5)
    mmoe = create("mmoe", num_experts=5)
    state = omoe.state_dict()
    for key in [key for key in state if key.startswith("gates.")]:
        state[key] = state[key].expand(len(mixed_tasks()), *state[key].shape[1:]).clone()
    mmoe.load_state_dict(state)
    assert_same_outputs(omoe, mmoe, torch.randn(8, IN_FEATURES))


def test_cross_stitch_with_identity_units_equals_independent_columns():
    model = create("cross_stitch", column_dims=(9, 7))
    with torch.no_grad():
        for stitch in model.stitches:
            stitch.alpha.copy_(torch.eye(len(mixed_tasks())))
    x = torch.randn(8, IN_FEATURES)
    columns = []
    for t in range(len(mixed_tasks())):  # each task's column on its own: an ordinary MLP
        h = x
        for layer in model.layers:
            linear = layer.layers[0]
            h = torch.relu(h @ linear.weight[t] + linear.bias[t])
        columns.append(h)
    expected = model.heads(torch.stack(columns, dim=1))
    for name, logits in model(x).logits.items():
        torch.testing.assert_close(logits, expected[name], rtol=0, atol=ATOL)


def test_cross_stitch_with_identity_units_keeps_tasks_apart():
    model = create("cross_stitch", column_dims=(9, 7))
    with torch.no_grad():
        for stitch in model.stitches:
            stitch.alpha.copy_(torch.eye(len(mixed_tasks())))
    model(torch.randn(8, IN_FEATURES)).logits["topic"].sum().backward()
    for layer in model.layers:
        grad = layer.layers[0].weight.grad
        assert grad[1].abs().sum() > 0
        assert torch.all(grad[0] == 0) and torch.all(grad[2] == 0)


def naive_ple(model: mtlzoo.MultiTaskModel, x: torch.Tensor, n_shared: int, n_own: int):
    """PLE written from DESIGN.md's contract, one expert and one gate at a time."""
    num_tasks = len(model.tasks)

    def expert(mlp, j, inp):
        for layer in mlp.layers:
            inp = torch.relu(inp @ layer.weight[j] + layer.bias[j])
        return inp

    def gate(gates, g, inp):
        return torch.softmax(inp @ gates.logits.weight[g], dim=-1)  # gates: softmax(x W_g)

    task_in, shared_in = [x] * num_tasks, x  # level 1: everything reads x
    last = len(model.levels) - 1
    for k, level in enumerate(model.levels):
        own = [[expert(level.task_experts, t * n_own + j, task_in[t]) for j in range(n_own)]
               for t in range(num_tasks)]
        shared = [expert(level.shared_experts, j, shared_in) for j in range(n_shared)]
        task_out = []
        for t in range(num_tasks):  # task t's gate mixes its own experts and the shared ones
            candidates = own[t] + shared
            weights = gate(level.task_gates, t, task_in[t])
            task_out.append(sum(weights[:, i, None] * e for i, e in enumerate(candidates)))
        if k < last and n_shared:  # the shared gate mixes all experts of its level
            everything = [e for experts in own for e in experts] + shared
            weights = gate(level.shared_gate, 0, shared_in)
            shared_in = sum(weights[:, i, None] * e for i, e in enumerate(everything))
        else:  # none at the last level, nor where no shared expert would read its output
            assert level.shared_gate is None
        task_in = task_out
    return model.heads(torch.stack(task_in, dim=1))


@pytest.mark.parametrize("levels", [1, 2, 3])
@pytest.mark.parametrize(("n_shared", "n_own"), [(2, 1), (1, 3), (0, 2), (3, 0)])
def test_ple_follows_its_contract(levels, n_shared, n_own):
    model = create(
        "ple", num_levels=levels, num_shared_experts=n_shared, num_task_experts=n_own,
        expert_dims=(6,),
    )
    x = torch.randn(7, IN_FEATURES)
    expected = naive_ple(model, x, n_shared, n_own)
    out = model(x)
    for name, logits in out.logits.items():
        torch.testing.assert_close(logits, expected[name], rtol=0, atol=ATOL)
    num_experts = len(mixed_tasks()) * n_own + n_shared
    for k in range(1, levels + 1):
        gates = len(mixed_tasks()) + (k < levels and n_shared > 0)
        assert out.gate_weights[f"level{k}"].shape == (7, gates, num_experts)


@pytest.mark.parametrize(("n_shared", "n_own"), [(0, 2), (3, 0)])
def test_ple_without_shared_or_task_experts_trains_every_parameter(n_shared, n_own):
    model = create("ple", num_levels=3, num_shared_experts=n_shared, num_task_experts=n_own)
    out = model(torch.randn(16, IN_FEATURES))
    sum(logits.pow(2).sum() for logits in out.logits.values()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name


def test_single_task_columns_are_independent_networks():
    model = create("single_task", hidden_dims=(9, 7))
    x = torch.randn(8, IN_FEATURES)
    columns = []
    for t in range(len(mixed_tasks())):
        h = x
        for layer in model.networks.layers:
            h = torch.relu(h @ layer.weight[t] + layer.bias[t])
        columns.append(h)
    expected = model.heads(torch.stack(columns, dim=1))
    for name, logits in model(x).logits.items():
        torch.testing.assert_close(logits, expected[name], rtol=0, atol=ATOL)
    model(x).logits["topic"].sum().backward()
    grad = model.networks.layers[0].weight.grad
    assert grad[1].abs().sum() > 0 and torch.all(grad[0] == 0) and torch.all(grad[2] == 0)


def test_single_task_equals_cross_stitch_with_identity_units():
    cross = create("cross_stitch", column_dims=(9, 7))
    with torch.no_grad():
        for stitch in cross.stitches:
            stitch.alpha.copy_(torch.eye(len(mixed_tasks())))
    single = create("single_task", hidden_dims=(9, 7))
    state = {k: v for k, v in cross.state_dict().items() if "stitches" not in k}
    state = {k.replace("layers.0.layers.0.", "networks.layers.0.")
              .replace("layers.1.layers.0.", "networks.layers.1."): v for k, v in state.items()}
    single.load_state_dict(state)
    assert_same_outputs(cross, single, torch.randn(8, IN_FEATURES))
