"""ESMM: the funnel's probability products, their stability, the tasks= subsets, the options."""

from __future__ import annotations

import math
from decimal import Decimal, localcontext

import pytest
import torch
import torch.nn.functional as F

import mtlzoo
from mtlzoo import Task
from mtlzoo.models.esmm import funnel_logits
from mtlzoo.reference import loop_version
from tests.conftest import IN_FEATURES, mixed_tasks

FUNNEL_TASKS = [
    Task("ctr"),
    Task("topic", kind="multiclass", num_classes=3),
    Task("cvr_after_view"),
    Task("ctcvr"),
    Task("dwell", kind="regression"),
]


def esmm(tasks=FUNNEL_TASKS, seed: int = 0, **options) -> mtlzoo.MultiTaskModel:
    torch.manual_seed(seed)
    options = {"funnel": ("ctr", "ctcvr"), "tower_dims": (16, 8), **options}
    return mtlzoo.create_model("esmm", in_features=IN_FEATURES, tasks=tasks, **options)


def exact_funnel_logit(*head_logits: float) -> float:
    """logit(prod sigmoid(l)) in 200-digit decimal arithmetic."""
    with localcontext() as context:
        context.prec = 200
        passed = Decimal(1)
        for value in head_logits:
            passed *= 1 / (1 + (-Decimal(value)).exp())
        return float(passed.ln() - (1 - passed).ln())


def test_hand_computed_products():
    # sigmoids 1/2, 3/4, 1/4: P = 1/2, 3/8, 3/32
    heads = torch.tensor([[0.0, math.log(3), -math.log(3)]], dtype=torch.float64)
    expected = [0.0, math.log(3 / 5), math.log(3 / 29)]
    assert funnel_logits(heads)[0].tolist() == pytest.approx(expected, rel=1e-14, abs=1e-15)
    assert torch.sigmoid(funnel_logits(heads))[0].tolist() == pytest.approx([1 / 2, 3 / 8, 3 / 32])


@pytest.mark.parametrize(
    "heads",
    [(200.0, 200.0), (90.0, 90.0, 90.0), (30.0, 30.0), (-200.0, 5.0), (5.0, -200.0),
     (-90.0, -90.0), (0.0, 1e-6), (1e-7, -1e-7), (17.0, -3.0, 40.0), (-40.0, 40.0, 40.0)],
)
def test_stable_in_float32_for_extreme_logits(heads):
    x = torch.tensor([heads], requires_grad=True)
    joint = funnel_logits(x)
    assert joint.dtype == torch.float32
    for t in range(len(heads)):
        want = exact_funnel_logit(*heads[: t + 1])
        assert joint[0, t].item() == pytest.approx(want, rel=2e-6, abs=2e-6), (t, want)
    joint.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_the_funnel_logits_are_the_products_of_the_head_probabilities():
    model = esmm(funnel=("ctr", "cvr_after_view", "ctcvr")).double()
    x = torch.randn(10, IN_FEATURES, dtype=torch.float64)
    out, heads = model(x).logits, model.conditional_logits(x)
    p = {name: torch.sigmoid(logits) for name, logits in heads.items()}
    torch.testing.assert_close(torch.sigmoid(out["ctr"]), p["ctr"], rtol=0, atol=0)
    torch.testing.assert_close(torch.sigmoid(out["cvr_after_view"]),
                               p["ctr"] * p["cvr_after_view"], rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.sigmoid(out["ctcvr"]),
                               p["ctr"] * p["cvr_after_view"] * p["ctcvr"], rtol=1e-12, atol=0)
    for name in ("topic", "dwell"):  # outside the funnel: the heads' own logits
        assert torch.equal(out[name], heads[name])
    assert (out["ctcvr"] <= out["cvr_after_view"]).all()
    assert (out["cvr_after_view"] <= out["ctr"]).all()


def test_pctcvr_at_most_pctr():
    model = esmm()
    with torch.no_grad():  # wide logits: some probabilities near 0 and 1
        model.heads.output.weight.mul_(40)
    out = model(torch.randn(64, IN_FEATURES)).logits
    assert (torch.sigmoid(out["ctcvr"]) <= torch.sigmoid(out["ctr"])).all()
    assert torch.isfinite(out["ctcvr"]).all()


def test_a_bce_on_ctcvr_trains_the_cvr_tower_through_the_product_only():
    model = esmm()
    x, label = torch.randn(16, IN_FEATURES), torch.randint(0, 2, (16, 1)).float()
    out = model(x)
    conditional = model.conditional_logits(x)["ctcvr"]
    # no output is the CVR tower's own logit: the product is all a loss can read
    assert not torch.allclose(out.logits["ctcvr"], conditional)
    F.binary_cross_entropy_with_logits(out.logits["ctcvr"], label).backward()
    ctr, ctcvr = model.task_names.index("ctr"), model.task_names.index("ctcvr")
    first_tower = model.heads.towers.layers[0].weight.grad
    assert first_tower[ctcvr].abs().sum() > 0  # the CVR tower
    assert first_tower[ctr].abs().sum() > 0  # and the CTR tower, through the product
    others = [i for i in range(len(FUNNEL_TASKS)) if i not in (ctr, ctcvr)]
    assert (first_tower[others] == 0).all()


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize(("bottom_dims", "other", "other_options"), [
    ((10, 8), "shared_bottom", {"bottom_dims": (10, 8)}),
    ((), "single_task", {"hidden_dims": (10, 8)}),
])
def test_a_funnel_of_one_is_shared_bottom_or_single_task(bottom_dims, other, other_options):
    tasks = mixed_tasks()  # income is the only binary task: a funnel of one
    tower_dims = (16, 8)
    model = esmm(tasks, bottom_dims=bottom_dims, funnel=None,
                 tower_dims=(10, 8, *tower_dims) if not bottom_dims else tower_dims)
    assert model.funnel == ("income",)
    torch.manual_seed(1)
    reference = mtlzoo.create_model(other, in_features=IN_FEATURES, tasks=tasks,
                                    tower_dims=tower_dims, **other_options)
    state = model.state_dict()
    if bottom_dims:  # the same keys: bottom.layers.*, heads.*
        copied = state
    else:  # ESMM's first two tower layers are single_task's networks
        copied = {
            **{f"networks.layers.{i}.{p}": state[f"heads.towers.layers.{i}.{p}"]
               for i in (0, 1) for p in ("weight", "bias")},
            **{f"heads.towers.layers.{i - 2}.{p}": state[f"heads.towers.layers.{i}.{p}"]
               for i in (2, 3) for p in ("weight", "bias")},
            **{key: value for key, value in state.items() if key.startswith("heads.output.")},
        }
    reference.load_state_dict(copied)
    x = torch.randn(5, IN_FEATURES)
    ours, theirs = model(x).logits, reference(x).logits
    for task in tasks:
        torch.testing.assert_close(ours[task.name], theirs[task.name], rtol=0, atol=1e-14)


def test_a_task_subset_runs_the_earlier_stages_and_returns_only_the_requested():
    model = esmm(funnel=("ctr", "cvr_after_view", "ctcvr"), tower_dims=(8,)).double()
    x = torch.randn(6, IN_FEATURES, dtype=torch.float64)
    full = model(x).logits
    for subset in (["ctcvr"], ["dwell", "cvr_after_view"], ["ctcvr", "ctr"], ["topic"]):
        model.zero_grad()
        part = model(x, tasks=subset)
        assert list(part.logits) == subset
        for name in subset:
            torch.testing.assert_close(part.logits[name], full[name], rtol=0, atol=1e-12)
        sum(v.sum() for v in part.logits.values()).backward()
        grad = model.heads.output.weight.grad
        last = max((model.funnel.index(n) for n in subset if n in model.funnel), default=0)
        ran = set(subset) | set(model.funnel[:last])
        for i, name in enumerate(model.task_names):
            assert (grad[i].abs().sum() > 0) == (name in ran), (subset, name)


def test_conditional_logits_are_the_heads_own():
    model = esmm()
    x = torch.randn(4, IN_FEATURES)
    heads = model.conditional_logits(x)
    assert tuple(heads) == model.task_names and heads["ctcvr"].shape == (4, 1)
    reps, _ = model.represent(x, None)
    for name, logits in model.heads(reps).items():
        assert torch.equal(heads[name], logits)
    part = model.conditional_logits(x, tasks="ctcvr")  # no earlier stage needed
    assert list(part) == ["ctcvr"] and torch.equal(part["ctcvr"], heads["ctcvr"])


@pytest.mark.usefixtures("float64")
def test_matches_its_loop_version_along_a_funnel():
    model = esmm(funnel=("ctr", "cvr_after_view", "ctcvr"), bottom_dims=(10,)).eval()
    loop = loop_version(model)
    x = torch.randn(7, IN_FEATURES)
    for tasks in (None, ["ctcvr", "topic"]):
        ours, theirs = model(x, tasks=tasks).logits, loop(x, tasks=tasks).logits
        for name in ours:
            torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-12)


def test_default_funnel_is_every_binary_task_in_order():
    model = esmm(funnel=None)
    assert model.funnel == ("ctr", "cvr_after_view", "ctcvr")
    model = mtlzoo.create_model("esmm", in_features=4, tasks=[Task("y", kind="regression")])
    assert model.funnel == ()
    assert model(torch.randn(2, 4)).logits["y"].shape == (2, 1)


def test_the_funnel_order_need_not_be_the_task_order():
    tasks = [Task("ctcvr"), Task("ctr")]
    model = esmm(tasks, funnel=("ctr", "ctcvr"))
    x = torch.randn(5, IN_FEATURES)
    out, heads = model(x).logits, model.conditional_logits(x)
    torch.testing.assert_close(out["ctr"], heads["ctr"])
    torch.testing.assert_close(torch.sigmoid(out["ctcvr"]),
                               torch.sigmoid(heads["ctr"]) * torch.sigmoid(heads["ctcvr"]))


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"funnel": ("ctr", "ctcvrr")}, r"funnel: unknown task 'ctcvrr'\. Did you mean 'ctcvr'"),
        ({"funnel": ("ctr", "topic")}, "funnel: task 'topic' is multiclass, not binary"),
        ({"funnel": ("dwell",)}, "funnel: task 'dwell' is regression, not binary"),
        ({"funnel": ("ctr", "ctr")}, r"funnel names \['ctr'\] more than once"),
        ({"funnel": "ctr"}, "funnel must be a sequence of binary task names"),
        ({"funnel": 3}, "funnel must be a sequence of binary task names"),
        ({"funnel": ()}, "funnel must name at least one binary task"),
        ({"funnel": (1,)}, "funnel: unknown task 1"),
        ({"bottom_dims": (0,)}, "bottom_dims must hold positive integer widths"),
        ({"tower_dims": "8"}, "tower_dims must be a sequence of layer widths"),
    ],
)
def test_bad_options_are_refused(options, match):
    with pytest.raises(mtlzoo.MtlzooError, match=match):
        esmm(**options)
