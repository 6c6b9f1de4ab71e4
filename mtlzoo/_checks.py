"""The generic argument checks: every failure is an MtlzooError naming the value.

Each check takes the argument's name first (as the message should call it) and returns the
value, converted where noted. Checks tied to one concept stay with it: the task lists in
``mtlzoo.tasks``, the trainer-state fields in ``mtlzoo.train.state``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from mtlzoo.errors import MtlzooError


def is_int(value: object) -> bool:
    """An ``int`` that is not a ``bool`` (``True`` is not a count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """An ``int`` or ``float`` that is not a ``bool`` (possibly infinite or nan)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_int(name: str, value: object) -> int:
    if not is_int(value) or value < 1:
        raise MtlzooError(f"{name} must be a positive integer, got {value!r}")
    return value


def non_negative_int(name: str, value: object, *, allow_none: bool = False) -> int | None:
    """An int >= 0; with ``allow_none`` None passes too (a seed to draw, say)."""
    if value is None and allow_none:
        return None
    if not is_int(value) or value < 0:
        alternative = " or None" if allow_none else ""
        raise MtlzooError(f"{name} must be a non-negative integer{alternative}, got {value!r}")
    return value


def layer_dims(name: str, value: object, *, allow_empty: bool = False) -> tuple[int, ...]:
    """Layer widths as a tuple: an int is one layer, a sequence one width per layer."""
    dims = (value,) if is_int(value) else value
    if not isinstance(dims, Sequence) or isinstance(dims, str):
        raise MtlzooError(f"{name} must be a sequence of layer widths, got {value!r}")
    if not dims and not allow_empty:
        raise MtlzooError(f"{name} needs at least one layer, got {value!r}")
    for width in dims:
        if not is_int(width) or width < 1:
            raise MtlzooError(f"{name} must hold positive integer widths, got {value!r}")
    return tuple(dims)


def in_range(
    name: str, value: object, low: float, high: float, *, include_high: bool = True
) -> float:
    """A number in ``[low, high]`` (``[low, high)`` without ``include_high``), as a float."""
    inside = is_real(value) and low <= value and (value <= high if include_high else value < high)
    if not inside:
        bracket = "]" if include_high else ")"
        raise MtlzooError(f"{name} must be a number in [{low}, {high}{bracket}, got {value!r}")
    return float(value)


def probability(name: str, value: object) -> float:
    """A probability in ``[0, 1)`` (a dropout rate), as a float."""
    return in_range(name, value, 0, 1, include_high=False)


def real(name: str, value: object, *, positive: bool = False) -> float:
    """A finite real number >= 0 (> 0 with ``positive``), as a float."""
    if not is_real(value) or not math.isfinite(value):
        raise MtlzooError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise MtlzooError(f"{name} must be {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


def boolean(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise MtlzooError(f"{name} must be True or False, got {value!r}")
    return value


def name(what: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise MtlzooError(f"{what} must be a non-empty string, got {value!r}")
    return value


def choice(name: str, value: object, choices: Sequence) -> object:
    """One of ``choices``, of the same type too (``1.0`` and ``True`` are not ``1``)."""
    if not any(type(value) is type(c) and value == c for c in choices):
        listed = [repr(c) for c in choices]
        allowed = (" or ".join(listed) if len(listed) <= 2
                   else f"one of {', '.join(listed[:-1])} or {listed[-1]}")
        raise MtlzooError(f"{name} must be {allowed}, got {value!r}")
    return value


def repeated(values: Sequence) -> list:
    """The values that occur more than once in ``values``, sorted (for a message)."""
    return sorted({value for value in values if values.count(value) > 1})


def mapping(name: str, value: object, what: str = "a dict") -> Mapping:
    """A ``Mapping``; ``what`` says in the message what it maps, e.g. "a dict task -> column"."""
    if not isinstance(value, Mapping):
        raise MtlzooError(f"{name} must be {what}, got {value!r}")
    return value
