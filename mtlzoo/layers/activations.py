"""Activation functions by name."""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial

from torch import nn

from mtlzoo.errors import MtlzooError, suggest

# in place where torch allows it: the kernels apply activations to fresh matmul results only
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": partial(nn.ReLU, inplace=True),
    "leaky_relu": partial(nn.LeakyReLU, inplace=True),
    "elu": partial(nn.ELU, inplace=True),
    "gelu": nn.GELU,
    "silu": partial(nn.SiLU, inplace=True),
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}

Activation = str | nn.Module | Callable[[], nn.Module]


def make_activation(activation: Activation) -> nn.Module:
    """A new activation module from a name in ``ACTIVATIONS``, a module (copied), or a factory
    such as ``nn.GELU``."""
    if isinstance(activation, str):
        if activation not in ACTIVATIONS:
            raise MtlzooError(
                f"unknown activation {activation!r}.{suggest(activation, ACTIVATIONS)} "
                f"Known: {', '.join(ACTIVATIONS)}"
            )
        return ACTIVATIONS[activation]()
    if isinstance(activation, nn.Module):
        return copy.deepcopy(activation)
    try:
        module = activation()
    except TypeError:
        module = None
    if not isinstance(module, nn.Module):
        raise MtlzooError(
            f"activation must be a name or a callable returning an nn.Module, got {activation!r}"
        )
    return module
