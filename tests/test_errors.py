"""Bad input raises MtlzooError, and the message names the bad value.

Each table row is (what to call, fragments that must appear in the message).
"""

from __future__ import annotations

import pytest
import torch

import mtlzoo
from mtlzoo import MtlzooError, Task, create_model
from mtlzoo.layers import SoftmaxGates, StackedLinear

TASKS = (Task("click"), Task("topic", kind="multiclass", num_classes=4))


def _raises(fn, *fragments: str) -> None:
    with pytest.raises(MtlzooError) as err:
        fn()
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))


def test_error_class():
    assert issubclass(mtlzoo.MtlzooError, ValueError)
    assert "MtlzooError" in mtlzoo.__all__


# --- forward: the input tensor -------------------------------------------------------------

INPUTS = [
    pytest.param(torch.randn(4, 100), ["(4, 100)", "128"], id="wrong-width"),
    pytest.param(torch.randn(128), ["(128,)"], id="1-d"),
    pytest.param(torch.randn(4, 2, 128), ["(4, 2, 128)"], id="3-d"),
    pytest.param(torch.ones(4, 128, dtype=torch.int64), ["torch.int64"], id="integer"),
    pytest.param(torch.ones(4, 128, dtype=torch.bool), ["torch.bool"], id="bool"),
    pytest.param([[0.0] * 128] * 4, ["list"], id="list"),
    pytest.param(torch.randn(4, 128).numpy(), ["ndarray"], id="numpy"),
]


@pytest.mark.parametrize("name", mtlzoo.list_models())
@pytest.mark.parametrize(("x", "fragments"), INPUTS)
def test_bad_input(name, x, fragments):
    model = create_model(name, in_features=128, tasks=TASKS)
    _raises(lambda: model(x), *fragments)


# --- forward: tasks= ----------------------------------------------------------------------

SELECTIONS = [
    pytest.param("clik", ["'clik'", "'click'"], id="unknown-suggests"),
    pytest.param(["click", "topc"], ["'topc'", "'topic'"], id="unknown-in-list"),
    pytest.param(["price"], ["'price'"], id="unknown-no-suggestion"),
    pytest.param(["click", "click"], ["'click'"], id="duplicate"),
    pytest.param(["topic", "click", "topic"], ["'topic'"], id="duplicate-apart"),
    pytest.param([], ["empty"], id="empty-list"),
    pytest.param((), ["empty"], id="empty-tuple"),
    pytest.param(0, ["0"], id="int"),
]


@pytest.mark.parametrize("name", mtlzoo.list_models())
@pytest.mark.parametrize(("tasks", "fragments"), SELECTIONS)
def test_bad_task_selection(name, tasks, fragments):
    model = create_model(name, in_features=8, tasks=TASKS)
    _raises(lambda: model(torch.randn(2, 8), tasks=tasks), *fragments)


# --- construction: the task list ----------------------------------------------------------

TASK_LISTS = [
    pytest.param([Task("a"), Task("b"), Task("a")], ["'a'"], id="duplicate"),
    pytest.param([Task("a"), Task("a", kind="regression")], ["'a'"], id="duplicate-other-kind"),
    pytest.param([], ["[]"], id="empty-list"),
    pytest.param((), ["()"], id="empty-tuple"),
    pytest.param(["click"], ["'click'"], id="string-entry"),
    pytest.param([Task("a"), {"name": "b"}], ["{'name': 'b'}"], id="dict-entry"),
    pytest.param([Task("a"), None], ["None"], id="none-entry"),
]


@pytest.mark.parametrize("name", mtlzoo.list_models())
@pytest.mark.parametrize(("tasks", "fragments"), TASK_LISTS)
def test_bad_task_list(name, tasks, fragments):
    _raises(lambda: create_model(name, in_features=8, tasks=tasks), *fragments)


# --- construction: counts, widths, dropout, activation ------------------------------------

MOE = ("mmoe", "omoe")
CGC_PLE = ("cgc", "ple")
ALL = ("shared_bottom", "single_task", "cross_stitch", *MOE, *CGC_PLE)

OPTIONS = [
    *[(m, {"num_experts": 0}, ["num_experts", "0"]) for m in MOE],
    *[(m, {"num_experts": -2}, ["num_experts", "-2"]) for m in MOE],
    *[(m, {"num_experts": True}, ["num_experts", "True"]) for m in MOE],
    *[
        (m, {"num_shared_experts": 0, "num_task_experts": 0},
         ["num_shared_experts=0", "num_task_experts=0"])
        for m in CGC_PLE
    ],
    *[(m, {"num_shared_experts": -1}, ["num_shared_experts", "-1"]) for m in CGC_PLE],
    *[(m, {"num_task_experts": -3}, ["num_task_experts", "-3"]) for m in CGC_PLE],
    *[(m, {"num_task_experts": 1.5}, ["num_task_experts", "1.5"]) for m in CGC_PLE],
    ("ple", {"num_levels": 0}, ["num_levels", "0"]),
    ("ple", {"num_levels": -1}, ["num_levels", "-1"]),
    *[(m, {"in_features": 0}, ["in_features", "0"]) for m in ALL],
    *[(m, {"in_features": 8.0}, ["in_features", "8.0"]) for m in ALL],
    ("shared_bottom", {"bottom_dims": ()}, ["bottom_dims", "()"]),
    ("shared_bottom", {"bottom_dims": "64"}, ["bottom_dims", "'64'"]),
    ("cross_stitch", {"column_dims": (0,)}, ["column_dims", "(0,)"]),
    ("cross_stitch", {"column_dims": "64"}, ["column_dims", "'64'"]),
    *[(m, {"expert_dims": ()}, ["expert_dims", "()"]) for m in (*MOE, *CGC_PLE)],
    *[(m, {"expert_dims": (0,)}, ["expert_dims", "(0,)"]) for m in (*MOE, *CGC_PLE)],
    *[(m, {"expert_dims": (16, 8.0)}, ["expert_dims", "(16, 8.0)"]) for m in MOE],
    *[(m, {"expert_dims": "64"}, ["expert_dims", "'64'"]) for m in (*MOE, *CGC_PLE)],
    *[(m, {"tower_dims": (-1,)}, ["tower_dims", "(-1,)"]) for m in ALL],
    *[(m, {"tower_dims": "32"}, ["tower_dims", "'32'"]) for m in ALL],
    *[(m, {"dropout": 1.0}, ["dropout", "1.0"]) for m in ALL],
    *[(m, {"dropout": -0.1}, ["dropout", "-0.1"]) for m in ALL],
    *[(m, {"dropout": "0.1"}, ["dropout", "'0.1'"]) for m in ALL],
    *[(m, {"activation": "rleu"}, ["'rleu'", "'relu'"]) for m in ALL],
    *[(m, {"activation": "gleu"}, ["'gleu'", "'gelu'"]) for m in ALL],
    *[(m, {"activation": "swish"}, ["'swish'"]) for m in ALL],
    *[(m, {"activation": 3}, ["3"]) for m in ALL],
    # a plain function is not a module factory: torch.relu() cannot be called without input
    *[(m, {"activation": torch.relu}, ["relu"]) for m in ALL],
]


def _id(name: str, kwargs: dict) -> str:
    shown = {k: f"<{v.__name__}>" if callable(v) else repr(v) for k, v in kwargs.items()}
    return f"{name}-" + ",".join(f"{k}={v}" for k, v in shown.items())


@pytest.mark.parametrize(
    ("name", "kwargs", "fragments"), OPTIONS, ids=[_id(n, k) for n, k, _ in OPTIONS]
)
def test_bad_option(name, kwargs, fragments):
    kwargs = {"in_features": 8, "tasks": TASKS, **kwargs}
    _raises(lambda: create_model(name, **kwargs), *fragments)


# --- Task ---------------------------------------------------------------------------------

TASK_ARGS = [
    ({"name": "y", "kind": "multiclass", "num_classes": 1}, ["'y'", "num_classes=1"]),
    ({"name": "y", "kind": "multiclass", "num_classes": 0}, ["num_classes=0"]),
    ({"name": "y", "kind": "multiclass"}, ["num_classes=None"]),
    ({"name": "y", "kind": "multiclass", "num_classes": 3.0}, ["num_classes=3.0"]),
    ({"name": "y", "kind": "ordinal"}, ["'ordinal'"]),
    ({"name": "y", "kind": "Binary"}, ["'Binary'"]),
    ({"name": "y", "num_classes": 3}, ["num_classes=3", "'binary'"]),
    ({"name": "y", "kind": "regression", "num_classes": 2}, ["num_classes=2", "'regression'"]),
    ({"name": ""}, ["''"]),
    ({"name": None}, ["None"]),
    ({"name": 7}, ["7"]),
]


@pytest.mark.parametrize(
    ("kwargs", "fragments"), TASK_ARGS, ids=[_id("Task", k) for k, _ in TASK_ARGS]
)
def test_bad_task(kwargs, fragments):
    _raises(lambda: Task(**kwargs), *fragments)


# --- kernels ------------------------------------------------------------------------------

STACKED_INPUTS = [
    (torch.randn(2, 5), ["(2, 5)"]),  # wrong d
    (torch.randn(2, 2, 4), ["(2, 2, 4)"]),  # wrong g
    (torch.randn(2, 3, 5), ["(2, 3, 5)"]),  # wrong d per group
    (torch.randn(4), ["(4,)"]),
    (torch.randn(2, 3, 4, 1), ["(2, 3, 4, 1)"]),
]


@pytest.mark.parametrize(
    ("x", "fragments"), STACKED_INPUTS, ids=[str(tuple(x.shape)) for x, _ in STACKED_INPUTS]
)
def test_stacked_linear_bad_input(x, fragments):
    layer = StackedLinear(3, 4, 6)
    _raises(lambda: layer(x), "StackedLinear", *fragments)


def test_stacked_linear_index_changes_expected_groups():
    layer = StackedLinear(3, 4, 6)
    _raises(lambda: layer(torch.randn(2, 3, 4), index=[0, 2]), "(2, 3, 4)")


MASKS = [
    (torch.ones(3, 3, dtype=torch.bool), ["(3, 3)"]),  # wrong shape
    (torch.ones(2, 4, dtype=torch.bool), ["(2, 4)"]),
    (torch.ones(3, dtype=torch.bool), ["(3,)"]),
    (torch.ones(2, 3), ["torch.float32"]),  # wrong dtype
    (torch.ones(2, 3, dtype=torch.int64), ["torch.int64"]),
    (torch.tensor([[True, False, False], [True, True, False]]), ["[1, 2]"]),  # uneven rows
    (torch.tensor([[False, False, False], [True, True, True]]), ["[0, 3]"]),
    (torch.zeros(2, 3, dtype=torch.bool), ["[0, 0]"]),
    ([[True, True, False], [False, True, True]], ["list"]),  # not a tensor
]


@pytest.mark.parametrize(("mask", "fragments"), MASKS, ids=[f[0] for _, f in MASKS])
def test_softmax_gates_bad_mask(mask, fragments):
    _raises(lambda: SoftmaxGates(2, 4, 3, mask), *fragments)
