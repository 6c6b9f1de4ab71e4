"""MTAN against its definition (the paper's equations, one task at a time) and shared-bottom,
in float64, and its option checks."""

from __future__ import annotations

import pytest
import torch

import mtlzoo
from tests.conftest import IN_FEATURES, mixed_tasks

ATOL = 1e-10


def create(name: str, **options) -> mtlzoo.MultiTaskModel:
    return mtlzoo.create_model(name, in_features=IN_FEATURES, tasks=mixed_tasks(), **options).eval()


def naive_mtan(model: mtlzoo.MultiTaskModel, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The paper's a_t^(j) = sigmoid(h_t(g_t([u^(j); f^(j)(a_t^(j-1))]))) * p^(j), one task and
    one block at a time, from the model's weights."""

    def layer(stacked, group, inp, activation=torch.relu):
        return activation(inp @ stacked.weight[group] + stacked.bias[group])

    def mlp(module, group, inp):  # a one-layer StackedMLP
        return layer(module.layers[0], group, inp)

    attended = []
    for t in range(len(model.tasks)):
        shared, own = x, None
        for j in range(len(model.intermediate)):
            u = mlp(model.intermediate[j], 0, shared)
            shared = mlp(model.block_outputs[j], 0, u)
            inp = u if j == 0 else torch.cat([u, mlp(model.extractors[j - 1], 0, own)], dim=1)
            mask = layer(model.masks[j], t, mlp(model.attention[j], t, inp), torch.sigmoid)
            own = mask * shared
        attended.append(own)
    return model.heads(torch.stack(attended, dim=1))


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("shared_dims", [(7,), (9, 7, 6)])
def test_mtan_follows_the_papers_equations(shared_dims):
    model = create("mtan", shared_dims=shared_dims, tower_dims=(5,))
    x = torch.randn(8, IN_FEATURES)
    expected = naive_mtan(model, x)
    for name, logits in model(x).logits.items():
        torch.testing.assert_close(logits, expected[name], rtol=0, atol=ATOL)


@pytest.mark.usefixtures("float64")
def test_mtan_with_masks_of_one_equals_shared_bottom():
    mtan = create("mtan", shared_dims=(9, 7), tower_dims=(5,))
    bottom = create("shared_bottom", bottom_dims=(9, 9, 7, 7), tower_dims=(5,))
    with torch.no_grad():
        for mask in mtan.masks:  # sigmoid(0 x + 100) is 1 in float64
            mask.weight.zero_()
            mask.bias.fill_(100.0)
    state = {key: value for key, value in mtan.state_dict().items() if key.startswith("heads.")}
    for j in range(2):  # block j's two layers are the bottom's layers 2j and 2j + 1
        for layer, source in ((2 * j, mtan.intermediate[j]), (2 * j + 1, mtan.block_outputs[j])):
            state[f"bottom.layers.{layer}.weight"] = source.layers[0].weight
            state[f"bottom.layers.{layer}.bias"] = source.layers[0].bias
    bottom.load_state_dict(state)
    x = torch.randn(8, IN_FEATURES)
    ours, theirs = mtan(x), bottom(x)
    for name, logits in ours.logits.items():
        torch.testing.assert_close(logits, theirs.logits[name], rtol=0, atol=ATOL)
    assert ours.gate_weights == {} and ours.aux_loss == 0


def test_a_tasks_loss_reaches_only_its_own_attention_modules():
    torch.manual_seed(0)
    model = create("mtan", shared_dims=(9, 7), tower_dims=(5,))
    model(torch.randn(16, IN_FEATURES)).logits["topic"].sum().backward()
    for module in [*model.attention, *model.masks]:
        weight = module.layers[0].weight if hasattr(module, "layers") else module.weight
        assert weight.grad[1].abs().sum() > 0
        assert torch.all(weight.grad[0] == 0) and torch.all(weight.grad[2] == 0)
    for module in [*model.intermediate, *model.block_outputs, *model.extractors]:
        assert module.layers[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("value", "fragment"),
    [(0, "0"), ((), "()"), ((8, 0), "(8, 0)"), ("wide", "'wide'"), ((8, 2.5), "(8, 2.5)")],
)
def test_bad_shared_dims_are_refused(value, fragment):
    with pytest.raises(mtlzoo.MtlzooError, match="shared_dims") as error:
        create("mtan", shared_dims=value)
    assert fragment in str(error.value)
