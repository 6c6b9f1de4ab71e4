"""L2-constrained columns and sluice networks: their identities with the other architectures,
their auxiliary losses computed by hand, and their option checks (float64)."""

from __future__ import annotations

import pytest
import torch

import mtlzoo
from mtlzoo import MtlzooError, Task
from mtlzoo.layers import SubspaceStitchUnit, TiedMLP
from mtlzoo.models.sluice import subspace_overlap
from tests.conftest import IN_FEATURES, mixed_tasks

ATOL = 1e-10

pytestmark = pytest.mark.usefixtures("float64")


def create(name: str, tasks=None, **options) -> mtlzoo.MultiTaskModel:
    tasks = mixed_tasks() if tasks is None else tasks
    return mtlzoo.create_model(name, in_features=IN_FEATURES, tasks=tasks, **options).eval()


def renamed(state: dict, old: str, new: str) -> dict:
    return {(new + key[len(old):] if key.startswith(old) else key): v for key, v in state.items()}


def assert_same_logits(a, b, x) -> None:
    out_a, out_b = a(x), b(x)
    for name in out_a.logits:
        torch.testing.assert_close(out_a.logits[name], out_b.logits[name], rtol=0, atol=ATOL)


# ---- l2_constrained ------------------------------------------------------------------------

def test_l2_constrained_without_penalty_is_single_task():
    single = create("single_task", hidden_dims=(9, 7), tower_dims=(5,))
    tied = create("l2_constrained", column_dims=(9, 7), tower_dims=(5,), penalty=0.0)
    tied.load_state_dict(renamed(single.state_dict(), "networks.", "columns."))
    x = torch.randn(6, IN_FEATURES)
    assert_same_logits(single, tied, x)
    aux = tied(x).aux_loss
    assert aux == 0 and not aux.requires_grad  # no graph: DDP trains it


def test_l2_constrained_with_identical_columns_is_shared_bottom_and_costs_nothing():
    bottom = create("shared_bottom", bottom_dims=(9, 7), tower_dims=(5,))
    tied = create("l2_constrained", column_dims=(9, 7), tower_dims=(5,), penalty=10.0)
    state = bottom.state_dict()
    for key, value in state.items():  # the one bottom (1, ...) copied into all 3 columns
        if key.startswith("bottom."):
            state[key] = value.expand(3, *value.shape[1:])
    tied.load_state_dict(renamed(state, "bottom.", "columns."))
    x = torch.randn(6, IN_FEATURES)
    assert_same_logits(bottom, tied, x)
    torch.testing.assert_close(tied(x).aux_loss, torch.tensor(0.0), rtol=0, atol=ATOL)


def test_l2_penalty_by_hand():
    tasks = [Task("a"), Task("b"), Task("c", kind="regression")]
    model = mtlzoo.create_model("l2_constrained", in_features=1, tasks=tasks, column_dims=(1,),
                                penalty=0.1)
    with torch.no_grad():
        model.columns.layers[0].weight.copy_(torch.tensor([0.0, 1.0, 3.0]).view(3, 1, 1))
        model.columns.layers[0].bias.copy_(torch.tensor([[2.0], [2.0], [0.0]]))
    # weights: (0-1)^2 + (0-3)^2 + (1-3)^2 = 14; biases: 0 + 4 + 4 = 8
    aux = model(torch.randn(4, 1)).aux_loss
    torch.testing.assert_close(aux, torch.tensor(0.1 * 22.0), rtol=0, atol=ATOL)
    aux.backward()  # d/dW_s = 2 * 0.1 * (T W_s - sum_t W_t) = 0.6 W_s - 0.8
    torch.testing.assert_close(model.columns.layers[0].weight.grad.flatten(),
                               torch.tensor([-0.8, -0.2, 1.0]), rtol=0, atol=ATOL)


def test_l2_penalty_covers_every_column_and_layer_whatever_tasks_run():
    model = create("l2_constrained", column_dims=(6, 5), penalty=0.5)
    pairs = sum(
        (param[s] - param[t]).pow(2).sum()
        for layer in model.columns.layers for param in (layer.weight, layer.bias)
        for s in range(3) for t in range(s + 1, 3)
    )
    x = torch.randn(4, IN_FEATURES)
    for tasks in (None, ["topic"]):
        torch.testing.assert_close(model(x, tasks=tasks).aux_loss, 0.5 * pairs, rtol=0, atol=ATOL)


def test_l2_penalty_of_one_task_is_zero():
    model = create("l2_constrained", tasks=[Task("only")], penalty=3.0)
    assert model(torch.randn(2, IN_FEATURES)).aux_loss == 0
    assert TiedMLP(1, 4, (3,)).pairwise_squared_distance() == 0


@pytest.mark.parametrize(
    ("options", "fragments"),
    [
        ({"penalty": -0.1}, ["penalty", "-0.1"]),
        ({"penalty": float("nan")}, ["penalty", "nan"]),
        ({"penalty": True}, ["penalty", "True"]),
        ({"penalty": "0.1"}, ["penalty", "'0.1'"]),
        ({"column_dims": ()}, ["column_dims", "()"]),
        ({"column_dims": (8, 0)}, ["column_dims", "(8, 0)"]),
    ],
)
def test_l2_constrained_bad_options(options, fragments):
    with pytest.raises(MtlzooError) as error:
        create("l2_constrained", **options)
    for fragment in fragments:
        assert fragment in str(error.value)


# ---- sluice --------------------------------------------------------------------------------

def last_layer_only_and_unstitched(model) -> None:
    with torch.no_grad():
        for stitch in model.stitches:
            stitch.alpha.copy_(torch.eye(len(stitch.alpha)))
        model.betas.zero_()
        model.betas[-1] = 1.0


def test_sluice_with_identity_alphas_and_the_last_layer_is_l2_constrained_columns():
    tied = create("l2_constrained", column_dims=(8, 8, 8), tower_dims=(5,), penalty=0.0)
    sluice = create("sluice", column_dims=(8, 8, 8), tower_dims=(5,), orthogonality=0.0)
    state = {key: value for key, value in tied.state_dict().items() if key.startswith("heads.")}
    for depth in range(3):
        for part in ("weight", "bias"):
            state[f"layers.{depth}.layers.0.{part}"] = tied.state_dict()[
                f"columns.layers.{depth}.{part}"]
    sluice.load_state_dict({**sluice.state_dict(), **state})
    last_layer_only_and_unstitched(sluice)
    x = torch.randn(6, IN_FEATURES)
    assert_same_logits(tied, sluice, x)
    aux = sluice(x).aux_loss
    assert aux == 0 and not aux.requires_grad  # orthogonality=0: no graph, DDP trains it


def test_sluice_with_one_subspace_and_the_last_layer_is_cross_stitch():
    stitch = create("cross_stitch", column_dims=(6, 6), tower_dims=(5,))
    sluice = create("sluice", column_dims=(6, 6), tower_dims=(5,), num_subspaces=1)
    with torch.no_grad():  # alphas that mix: not the initial near-identity
        for unit in stitch.stitches:
            unit.alpha.copy_(torch.rand_like(unit.alpha))
    sluice.load_state_dict({**sluice.state_dict(), **stitch.state_dict()})
    with torch.no_grad():
        sluice.betas.copy_(torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))
    x = torch.randn(6, IN_FEATURES)
    assert_same_logits(stitch, sluice, x)
    assert sluice(x).aux_loss == 0  # one subspace: no pair to keep orthogonal


def test_sluice_representation_mixes_every_stitched_layer_by_its_betas():
    model = create("sluice", column_dims=(6, 6, 6), num_subspaces=3)
    with torch.no_grad():  # not the initial 0.9 on the last layer
        model.betas.copy_(torch.randn_like(model.betas))
        for stitch in model.stitches:
            stitch.alpha.copy_(torch.randn_like(stitch.alpha))
    x = torch.randn(5, IN_FEATURES)
    h, expected = x, 0
    for depth in range(3):
        h = model.stitches[depth](model.layers[depth](h))
        expected = expected + model.betas[depth][None, :, None] * h
    reps, _, _ = model.represent(x, None)
    torch.testing.assert_close(reps, expected, rtol=0, atol=ATOL)
    torch.testing.assert_close(model.represent(x, [2, 0])[0], expected[:, [2, 0]],
                               rtol=0, atol=ATOL)


def test_subspace_overlap_by_hand():
    # one task, two subspaces of width 2: G1 = [[1, 0], [0, 1]], G2 = [[1, 2], [3, 0]]
    h = torch.tensor([[1.0, 0.0, 1.0, 2.0], [0.0, 1.0, 3.0, 0.0]]).view(2, 1, 4)
    # G1^T G2 / b = [[1, 2], [3, 0]] / 2: 0.25 + 1 + 2.25 + 0
    torch.testing.assert_close(subspace_overlap(h, 2), torch.tensor(3.5), rtol=0, atol=ATOL)


def test_sluice_orthogonality_term_by_hand():
    model = mtlzoo.create_model("sluice", in_features=4, tasks=[Task("a")], column_dims=(4,),
                                orthogonality=0.1)
    with torch.no_grad():  # the layer passes x through: ReLU of non-negative x
        model.layers[0].layers[0].weight.copy_(torch.eye(4)[None])
        model.layers[0].layers[0].bias.zero_()
    x = torch.tensor([[1.0, 0.0, 1.0, 2.0], [0.0, 1.0, 3.0, 0.0]])
    torch.testing.assert_close(model(x).aux_loss, torch.tensor(0.35), rtol=0, atol=ATOL)


def test_subspace_overlap_is_the_loop_over_tasks_and_pairs():
    h = torch.randn(5, 3, 12)
    m, width = 3, 4
    expected = 0
    for t in range(3):
        for i in range(m):
            for j in range(i + 1, m):
                g_i, g_j = h[:, t, i * width:(i + 1) * width], h[:, t, j * width:(j + 1) * width]
                expected = expected + (g_i.T @ g_j / 5).pow(2).sum()
    torch.testing.assert_close(subspace_overlap(h, m), expected, rtol=0, atol=ATOL)
    assert subspace_overlap(h, 1) == 0
    assert subspace_overlap(h[:0], m) == 0  # an empty batch


def test_sluice_sums_the_orthogonality_of_every_layer_before_its_stitch():
    model = create("sluice", column_dims=(6, 6), num_subspaces=3, orthogonality=0.5)
    x = torch.randn(7, IN_FEATURES)
    first = model.layers[0](x)
    second = model.layers[1](model.stitches[0](first))
    expected = 0.5 * (subspace_overlap(first, 3) + subspace_overlap(second, 3))
    torch.testing.assert_close(model(x).aux_loss, expected, rtol=0, atol=ATOL)
    assert expected > 0


def test_sluice_starts_near_identity_and_on_the_last_layer():
    model = create("sluice", column_dims=(4, 4, 4), num_subspaces=2)
    alpha = model.stitches[0].alpha
    assert alpha.shape == (6, 6)
    torch.testing.assert_close(alpha.diagonal(), torch.full((6,), 0.9))
    torch.testing.assert_close(alpha.sum(0), torch.ones(6))
    torch.testing.assert_close(model.betas, torch.tensor([[0.05] * 3, [0.05] * 3, [0.9] * 3]))


def test_a_subspace_stitch_mixes_subspaces_across_tasks():
    unit = SubspaceStitchUnit(2, 2)
    with torch.no_grad():
        unit.alpha.zero_()
        unit.alpha[3, 0] = 1.0  # column 1's second subspace into column 0's first
    x = torch.randn(4, 2, 6)
    out = unit(x)
    torch.testing.assert_close(out[:, 0, :3], x[:, 1, 3:], rtol=0, atol=0)
    assert torch.all(out[:, 0, 3:] == 0) and torch.all(out[:, 1] == 0)


@pytest.mark.parametrize(
    ("options", "fragments"),
    [
        ({"column_dims": (8, 6)}, ["column_dims", "(8, 6)"]),
        ({"column_dims": (9,), "num_subspaces": 2}, ["9", "num_subspaces=2"]),
        ({"num_subspaces": 0}, ["num_subspaces", "0"]),
        ({"num_subspaces": 2.0}, ["num_subspaces", "2.0"]),
        ({"orthogonality": -1.0}, ["orthogonality", "-1.0"]),
        ({"orthogonality": float("inf")}, ["orthogonality", "inf"]),
        ({"column_dims": ()}, ["column_dims", "()"]),
    ],
)
def test_sluice_bad_options(options, fragments):
    with pytest.raises(MtlzooError) as error:
        create("sluice", **options)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_subspace_stitch_unit_bad_arguments():
    with pytest.raises(MtlzooError, match="num_subspaces"):
        SubspaceStitchUnit(2, 0)
    with pytest.raises(MtlzooError, match="width 5"):
        SubspaceStitchUnit(2, 2)(torch.randn(3, 2, 5))
