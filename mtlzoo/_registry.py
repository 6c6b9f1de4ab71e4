"""The model registry: architectures are registered by name and built by name."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import TypeVar

from torch import nn

from mtlzoo import _checks
from mtlzoo.errors import MtlzooError, suggest

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_ALIASES: dict[str, str] = {}


def register_model(name: str, *, aliases: Sequence[str] = ()) -> Callable[[Builder], Builder]:
    """Register an architecture (a class or a function with keyword-only arguments).

    A name or alias that is already taken raises ``MtlzooError``.

    >>> @register_model("my_model")            # doctest: +SKIP
    ... class MyModel(MultiTaskModel): ...
    """

    _checks.name("a model name", name)
    if isinstance(aliases, str) or not all(isinstance(a, str) and a for a in aliases):
        raise MtlzooError(f"aliases must be a sequence of names, got {aliases!r}")

    def decorator(builder: Builder) -> Builder:
        for taken in (name, *aliases):
            if taken in _MODELS or taken in _ALIASES:
                raise MtlzooError(f"a model named {taken!r} is already registered")
        _MODELS[name] = builder
        _ALIASES.update({alias: name for alias in aliases})
        return builder

    return decorator


def list_models() -> list[str]:
    """The registered architecture names, sorted (aliases are not listed)."""
    return sorted(_MODELS)


def get_model_builder(name: str) -> Callable[..., nn.Module]:
    """The class or function registered under ``name`` or one of its aliases."""
    if not isinstance(name, str):
        raise MtlzooError(f"a model name must be a string, got {name!r}")
    canonical = _ALIASES.get(name, name)
    if canonical not in _MODELS:
        raise MtlzooError(
            f"unknown model {name!r}.{suggest(name, [*_MODELS, *_ALIASES])} "
            f"Registered models: {', '.join(list_models())}"
        )
    return _MODELS[canonical]


def create_model(name: str, *, encoder: nn.Module | None = None, **kwargs) -> nn.Module:
    """Build the architecture registered as ``name``, on ``encoder`` if given (its
    ``out_features`` is then the ``in_features``).

    >>> model = create_model("mmoe", in_features=16, tasks=[Task("y")])  # doctest: +SKIP
    """
    builder = get_model_builder(name)
    if encoder is not None:
        width = getattr(encoder, "out_features", None)
        if kwargs.setdefault("in_features", width) != width:
            raise MtlzooError(
                f"in_features={kwargs['in_features']!r} but the encoder gives {width!r} features;"
                " leave in_features out when you pass an encoder"
            )
    accepted = inspect.signature(builder).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        for key in kwargs:
            if key not in accepted:
                raise MtlzooError(
                    f"model {name!r} has no argument {key!r}.{suggest(key, accepted)} "
                    f"Its arguments: {', '.join(accepted)}"
                )
    missing = [
        p.name for p in accepted.values()
        if p.default is p.empty and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        and p.name not in kwargs
    ]
    if missing:
        raise MtlzooError(f"model {name!r} needs the argument(s) {', '.join(missing)}")
    model = builder(**kwargs)
    return model if encoder is None else model.set_encoder(encoder)
