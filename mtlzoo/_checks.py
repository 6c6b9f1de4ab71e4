"""Validation of constructor arguments; every failure is an MtlzooError naming the value."""

from __future__ import annotations

import math
from collections.abc import Sequence

from mtlzoo.errors import MtlzooError


def positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MtlzooError(f"{name} must be a positive integer, got {value!r}")
    return value


def non_negative_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MtlzooError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def layer_dims(name: str, value: object, *, allow_empty: bool = False) -> tuple[int, ...]:
    """Layer widths as a tuple: an int is one layer, a sequence one width per layer."""
    dims = (value,) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(dims, Sequence) or isinstance(dims, str):
        raise MtlzooError(f"{name} must be a sequence of layer widths, got {value!r}")
    if not dims and not allow_empty:
        raise MtlzooError(f"{name} needs at least one layer, got {value!r}")
    for width in dims:
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise MtlzooError(f"{name} must hold positive integer widths, got {value!r}")
    return tuple(dims)


def probability(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise MtlzooError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def real(name: str, value: object, *, positive: bool = False) -> float:
    """A finite real number >= 0 (> 0 with ``positive``), as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
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
