"""The cross-stitch unit (Misra et al., CVPR 2016): a learned mixing of task columns.

Axes: b batch, s source column, t target column, h width.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtlzoo import _checks
from mtlzoo.errors import MtlzooError
from mtlzoo.layers.axes import Spec, einsum_specs


@einsum_specs(
    Spec("s t, b s h -> b t h", "alpha (s, t), x (b, s, h): target t sums the sources s",
         "one torch.einsum (a bmm)"),
)
class CrossStitchUnit(nn.Module):
    """``out[:, t] = sum_s alpha[s, t] * x[:, s]``, one einsum: ``"s t, b s h -> b t h"``.

    Initialised near identity, as in the paper: ``alpha[t, t] = self_weight`` and the other
    entries of each column share ``1 - self_weight``, so every column starts as a convex mix.
    """

    def __init__(self, num_columns: int, self_weight: float = 0.9) -> None:
        super().__init__()
        self.num_columns = _checks.positive_int("num_columns", num_columns)
        if isinstance(self_weight, bool) or not isinstance(self_weight, (int, float)) or not (
            0 <= self_weight <= 1
        ):
            raise MtlzooError(f"self_weight must be a number in [0, 1], got {self_weight!r}")
        if num_columns == 1:
            alpha = torch.ones(1, 1)
        else:
            other = (1.0 - self_weight) / (num_columns - 1)
            alpha = torch.full((num_columns, num_columns), other)
            alpha.fill_diagonal_(self_weight)
        self.alpha = nn.Parameter(alpha)

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("st,bsh->bth", self.alpha, x)
