"""mtlzoo._checks, the one module of generic argument checks, and the places that use it."""

from __future__ import annotations

import re

import pytest

from mtlzoo import MtlzooError, _checks
from mtlzoo.data import synthetic_tasks
from mtlzoo.weighting import create_weighting
from mtlzoo.weighting.registry import seeded_generator


def raises(message: str):
    return pytest.raises(MtlzooError, match=f"^{re.escape(message)}$")


@pytest.mark.parametrize("value", [True, 1.0, "1", None, 0, -1])
def test_positive_int(value):
    with raises(f"n must be a positive integer, got {value!r}"):
        _checks.positive_int("n", value)
    assert _checks.positive_int("n", 3) == 3


def test_non_negative_int_and_none():
    assert _checks.non_negative_int("seed", 0) == 0
    assert _checks.non_negative_int("seed", None, allow_none=True) is None
    with raises("seed must be a non-negative integer, got None"):
        _checks.non_negative_int("seed", None)
    with raises("seed must be a non-negative integer or None, got -1"):
        _checks.non_negative_int("seed", -1, allow_none=True)
    with raises("seed must be a non-negative integer or None, got False"):
        _checks.non_negative_int("seed", False, allow_none=True)


@pytest.mark.parametrize("value", [-1.5, 1.5, True, "0", float("nan")])
def test_in_range(value):
    with raises(f"correlation must be a number in [-1, 1], got {value!r}"):
        _checks.in_range("correlation", value, -1, 1)
    assert _checks.in_range("correlation", -1, -1, 1) == -1.0
    assert _checks.in_range("correlation", 1, -1, 1) == 1.0


@pytest.mark.parametrize("value", [1, 1.0, -0.1, True, float("nan")])
def test_probability_is_half_open(value):
    with raises(f"dropout must be a number in [0, 1), got {value!r}"):
        _checks.probability("dropout", value)
    assert _checks.probability("dropout", 0) == 0.0


def test_real():
    assert _checks.real("lr", 1) == 1.0
    with raises("lr must be > 0, got 0"):
        _checks.real("lr", 0, positive=True)
    with raises("c must be >= 0, got -1"):
        _checks.real("c", -1)
    with raises("c must be a finite number, got inf"):
        _checks.real("c", float("inf"))


@pytest.mark.parametrize("value", [3, 1.0, True, "1", None])
def test_choice_checks_the_type_too(value):
    with raises(f"task_group must be 1 or 2, got {value!r}"):
        _checks.choice("task_group", value, [1, 2])
    assert _checks.choice("task_group", 2, [1, 2]) == 2
    with raises("norm must be one of 'a', 'b' or 'c', got 'A'"):
        _checks.choice("norm", "A", ("a", "b", "c"))


def test_small_checks():
    with raises("flag must be True or False, got 1"):
        _checks.boolean("flag", 1)
    with raises("a task name must be a non-empty string, got ''"):
        _checks.name("a task name", "")
    with raises("weights must be a dict task -> weight, got [1]"):
        _checks.mapping("weights", [1], "a dict task -> weight")
    assert _checks.repeated(["a", "b", "a", "c", "b"]) == ["a", "b"]
    assert _checks.layer_dims("dims", 4) == (4,)
    with raises("dims must hold positive integer widths, got (4, True)"):
        _checks.layer_dims("dims", (4, True))


def test_the_callers_use_it():
    with raises("seed must be a non-negative integer or None, got -1"):
        seeded_generator(-1)
    with raises("seed must be a non-negative integer or None, got -1"):
        create_weighting("rlw", ["a", "b"], seed=-1)
    with raises("upper_bound must be True or False, got 1"):
        create_weighting("mgda", ["a", "b"], upper_bound=1)
    with raises("normalisation must be one of 'none', 'l2', 'loss' or 'loss+', got 'L2'"):
        create_weighting("mgda", ["a", "b"], normalisation="L2")
    with raises("mean_losses must be a dict task name -> loss, got [1.0]"):
        create_weighting("dwa", ["a", "b"]).epoch_end([1.0])
    with raises("correlation must be a number in [-1, 1], got 2"):
        synthetic_tasks(10, correlation=2)
    with raises("seed must be a non-negative integer, got -1"):
        synthetic_tasks(10, seed=-1)
