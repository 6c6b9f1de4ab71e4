"""The weighting registry, and the helpers the registered methods share (seeded generators;
the option checks are in ``mtlzoo._checks``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from mtlzoo import _checks
from mtlzoo.errors import MtlzooError, suggest
from mtlzoo.tasks import Task, check_task_names
from mtlzoo.weighting.base import Weighting

W = TypeVar("W", bound=type[Weighting])

_WEIGHTINGS: dict[str, type[Weighting]] = {}


def register_weighting(name: str) -> Callable[[W], W]:
    """Register a ``Weighting`` subclass under ``name`` (a taken name raises ``MtlzooError``).

    Its ``__init__(self, task_names, *, option=default, ...)`` takes keyword-only options.

    >>> @register_weighting("my_weighting")     # doctest: +SKIP
    ... class MyWeighting(LossWeighting): ...
    """
    _checks.name("a weighting name", name)

    def decorator(cls: W) -> W:
        if not (isinstance(cls, type) and issubclass(cls, Weighting)):
            raise MtlzooError(f"register_weighting needs a Weighting subclass, got {cls!r}")
        if name in _WEIGHTINGS:
            raise MtlzooError(f"a weighting named {name!r} is already registered")
        _WEIGHTINGS[name] = cls
        return cls

    return decorator


def list_weightings() -> list[str]:
    """The registered weighting names, sorted."""
    return sorted(_WEIGHTINGS)


def get_weighting_class(name: str) -> type[Weighting]:
    """The class registered under ``name``."""
    if not isinstance(name, str):
        raise MtlzooError(f"a weighting name must be a string, got {name!r}")
    if name not in _WEIGHTINGS:
        raise MtlzooError(
            f"unknown weighting {name!r}.{suggest(name, _WEIGHTINGS)} "
            f"Registered weightings: {', '.join(list_weightings())}"
        )
    return _WEIGHTINGS[name]


def create_weighting(name: str, task_names: Sequence[str | Task], **options) -> Weighting:
    """Build the weighting registered as ``name`` for the tasks ``task_names``: names, or
    ``mtlzoo.Task`` objects (``model.tasks``), which also give each task's kind.

    >>> create_weighting("dwa", ["click", "topic"], temperature=2.0)   # doctest: +SKIP
    """
    cls = get_weighting_class(name)
    check_task_names(task_names)
    parameters = inspect.signature(cls.__init__).parameters.values()
    open_ended = any(p.kind is p.VAR_KEYWORD for p in parameters)
    accepted = {
        p.name: p for p in parameters
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        and p.name not in ("self", "task_names")
    }
    for key in options:
        if key not in accepted and not open_ended:
            known = ", ".join(accepted) or "none"
            raise MtlzooError(
                f"weighting {name!r} has no option {key!r}.{suggest(key, accepted)} "
                f"Its options: {known}"
            )
    missing = [p.name for p in accepted.values() if p.default is p.empty and p.name not in options]
    if missing:
        raise MtlzooError(f"weighting {name!r} needs the option(s) {', '.join(missing)}")
    return cls(tuple(task_names), **options)


def seeded_generator(seed: object) -> torch.Generator:
    """A CPU generator seeded with ``seed``; None draws the seed from torch's global RNG."""
    _checks.non_negative_int("seed", seed, allow_none=True)
    if seed is None:
        seed = int(torch.randint(2**62, ()))
    return torch.Generator().manual_seed(seed)


class GeneratorState:
    """Mixin: checkpoint ``self.generator`` (a ``torch.Generator``) as the module's extra state."""

    generator: torch.Generator

    def get_extra_state(self) -> dict:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
