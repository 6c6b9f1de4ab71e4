"""AITM against its definition (the paper's equations, one transfer at a time) and the
single-task model, its calibrator on hand-computed logits, task subsets, option checks."""

from __future__ import annotations

import math

import pytest
import torch

import mtlzoo
from mtlzoo import Task
from tests.conftest import IN_FEATURES, mixed_tasks

ATOL = 1e-10
FUNNEL = [Task("view"), Task("click"), Task("buy")]


def create(name: str, tasks=None, **options) -> mtlzoo.MultiTaskModel:
    return mtlzoo.create_model(
        name, in_features=IN_FEATURES, tasks=tasks or mixed_tasks(), **options
    ).eval()


def naive_aitm(model: mtlzoo.MultiTaskModel, x: torch.Tensor):
    """z_1 = q_1; p_{t-1} = info_{t-1}(z_{t-1}); w = softmax_u(<h1(u), h2(u)> / sqrt(k)) over
    u in (p_{t-1}, q_t); z_t = sum_u w_u h3(u). One task and one transfer at a time."""

    def layers(mlp, group, inp):
        for layer in mlp.layers:
            inp = torch.relu(inp @ layer.weight[group] + layer.bias[group])
        return inp

    towers = [layers(model.towers, t, x) for t in range(len(model.tasks))]
    h1, h2, h3 = model.projections.weight[0].split(towers[0].shape[1], dim=1)
    chain, weights = [towers[0]], []
    for t in range(1, len(model.tasks)):
        candidates = [layers(model.info, t - 1, chain[-1]), towers[t]]
        scores = [(u @ h1 * (u @ h2)).sum(1) / math.sqrt(h1.shape[0]) for u in candidates]
        w = torch.softmax(torch.stack(scores, dim=1), dim=1)
        chain.append(sum(w[:, i, None] * (u @ h3) for i, u in enumerate(candidates)))
        weights.append(w)
    return model.heads(torch.stack(chain, dim=1)), torch.stack(weights, dim=1)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("tasks", [mixed_tasks(), [*FUNNEL, Task("stay", kind="regression")]])
def test_aitm_follows_the_papers_equations(tasks):
    model = create("aitm", tasks, task_tower_dims=(9, 7), tower_dims=(5,))
    x = torch.randn(8, IN_FEATURES)
    expected, weights = naive_aitm(model, x)
    out = model(x)
    for name, logits in out.logits.items():
        torch.testing.assert_close(logits, expected[name], rtol=0, atol=ATOL)
    torch.testing.assert_close(out.gate_weights["transfer"], weights, rtol=0, atol=ATOL)


@pytest.mark.usefixtures("float64")
def test_aitm_with_one_task_equals_the_single_task_model():
    task = [Task("click")]
    aitm = create("aitm", task, task_tower_dims=(9, 7), tower_dims=(5,))
    single = create("single_task", task, hidden_dims=(9, 7), tower_dims=(5,))
    single.load_state_dict({("networks." + key[7:] if key.startswith("towers.") else key): value
                            for key, value in aitm.state_dict().items()})
    x = torch.randn(8, IN_FEATURES)
    ours, theirs = aitm(x), single(x)
    torch.testing.assert_close(ours.logits["click"], theirs.logits["click"], rtol=0, atol=ATOL)
    assert ours.gate_weights == {} and ours.aux_loss == 0
    assert aitm.info is None and aitm.projections is None


def logits_of(probabilities: dict[str, list[float]]) -> dict[str, torch.Tensor]:
    return {name: torch.logit(torch.tensor(p, dtype=torch.float64))[:, None]
            for name, p in probabilities.items()}


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        # rows: max(0.75 - 0.5, 0) = 0.25 and max(0.5 - 0.75, 0) = 0; their mean 0.125
        ({}, 0.6 * 0.125),
        ({"calibration": 2.0}, 2.0 * 0.125),
        ({"calibration": 0.0}, 0.0),
    ],
)
def test_the_calibrator_on_hand_computed_logits(options, expected):
    model = create("aitm", FUNNEL[1:], **options)
    logits = {name: value.requires_grad_() for name, value in
              logits_of({"click": [0.5, 0.75], "buy": [0.75, 0.5]}).items()}
    kept, aux_loss = model.relate_logits(logits, torch.zeros((), dtype=torch.float64), None)
    assert kept is logits
    torch.testing.assert_close(aux_loss, torch.tensor(expected, dtype=torch.float64))
    assert aux_loss.requires_grad == (expected > 0)  # calibration=0 adds no graph (DDP's case)


def test_the_calibrator_sums_consecutive_binary_pairs_present():
    model = create("aitm", [*FUNNEL, Task("stay", kind="regression"), Task("return")])
    zero = torch.zeros((), dtype=torch.float64)
    # view -> click: max(0.3 - 0.2, 0) = 0.1; click -> buy: max(0.5 - 0.3, 0) = 0.2
    # stay -> return: after the regression task, no pair
    logits = logits_of({"view": [0.2], "click": [0.3], "buy": [0.5], "stay": [0.9],
                        "return": [0.9]})
    _, aux_loss = model.relate_logits(logits, zero, None)
    torch.testing.assert_close(aux_loss, torch.tensor(0.6 * 0.3, dtype=torch.float64))
    without_click = {name: logits[name] for name in ("buy", "view")}  # no consecutive pair
    assert model.relate_logits(without_click, zero, [2, 0])[1] == 0


@pytest.mark.usefixtures("float64")
def test_the_aux_loss_is_the_calibrator_of_the_logits():
    model = create("aitm", FUNNEL, calibration=1.5)
    out = model(torch.randn(16, IN_FEATURES))
    p = {name: torch.sigmoid(logits[:, 0]) for name, logits in out.logits.items()}
    expected = ((p["click"] - p["view"]).clamp(min=0) + (p["buy"] - p["click"]).clamp(min=0))
    torch.testing.assert_close(out.aux_loss, 1.5 * expected.mean(), rtol=0, atol=ATOL)
    assert out.aux_loss > 0
    part = model(torch.randn(16, IN_FEATURES), tasks=["buy", "view"])
    assert part.aux_loss == 0  # view and buy are not consecutive


@pytest.mark.usefixtures("float64")
def test_a_subset_returns_its_transfer_weights_and_runs_only_the_towers_it_needs():
    model = create("aitm", FUNNEL)
    x = torch.randn(6, IN_FEATURES)
    full = model(x).gate_weights["transfer"]
    assert full.shape == (6, 2, 2)
    part = model(x, tasks=["buy", "view", "click"]).gate_weights["transfer"]
    torch.testing.assert_close(part, full.flip(1), rtol=0, atol=0)
    assert model(x, tasks=["view"]).gate_weights == {}
    model(x, tasks=["click"]).logits["click"].sum().backward()
    for layer in model.towers.layers:
        assert layer.weight.grad[:2].abs().sum(dim=(1, 2)).min() > 0  # view's tower feeds click
        assert torch.all(layer.weight.grad[2] == 0)  # buy's tower never ran
    assert torch.all(model.info.layers[0].weight.grad[1] == 0)  # nor the transfer into buy


@pytest.mark.parametrize(
    ("options", "fragments"),
    [
        ({"calibration": -0.5}, ["calibration", "-0.5"]),
        ({"calibration": float("nan")}, ["calibration", "nan"]),
        ({"calibration": "0.6"}, ["calibration", "'0.6'"]),
        ({"calibration": True}, ["calibration", "True"]),
        ({"task_tower_dims": ()}, ["task_tower_dims", "()"]),
        ({"task_tower_dims": (8, -1)}, ["task_tower_dims", "(8, -1)"]),
    ],
)
def test_bad_options_are_refused(options, fragments):
    with pytest.raises(mtlzoo.MtlzooError) as error:
        create("aitm", **options)
    for fragment in fragments:
        assert fragment in str(error.value)
