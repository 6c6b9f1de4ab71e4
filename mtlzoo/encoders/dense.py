"""The dense encoder: features that are already a float vector per sample."""

from __future__ import annotations

from torch import Tensor, nn

from mtlzoo import _checks
from mtlzoo.errors import MtlzooError


class DenseEncoder(nn.Module):
    """Identity on (b, d) float features; checks the width."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.out_features = _checks.positive_int("in_features", in_features)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.out_features:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise MtlzooError(f"DenseEncoder expects (batch, {self.out_features}), got {got}")
        return x
