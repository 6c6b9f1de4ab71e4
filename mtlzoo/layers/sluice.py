"""The subspace stitch unit of sluice networks (Ruder et al., AAAI 2019): a cross-stitch unit
over the subspaces of every task column.

Axes: b batch, s source subspace, t target subspace (T*m of each: m subspaces of T
columns), h a subspace's width.
"""

from __future__ import annotations

from torch import Tensor

from mtlzoo import _checks
from mtlzoo.errors import MtlzooError
from mtlzoo.layers.axes import Spec, einsum_specs
from mtlzoo.layers.cross_stitch import CrossStitchUnit


@einsum_specs(
    Spec("s t, b s h -> b t h",
         "alpha (s, t) over the T*m subspaces, x (b, T, m*h) read as (b, s, h)",
         "one torch.einsum (a bmm) on the subspace view"),
)
class SubspaceStitchUnit(CrossStitchUnit):
    """T columns of width H, each split into ``num_subspaces`` m subspaces of width H/m;
    ``out`` subspace t is ``sum_s alpha[s, t] * x`` subspace s, one einsum
    ``"s t, b s h -> b t h"`` over the T*m subspaces (subspace i of column c is number
    ``c*m + i``). ``x`` and the output are (b, T, H).

    ``alpha`` is (T*m, T*m), initialised near identity like ``CrossStitchUnit(T*m)``:
    ``self_weight`` on the diagonal, ``1 - self_weight`` shared by the rest of each column.
    ``num_columns`` (inherited) counts the T*m subspaces. With m = 1 this is the
    cross-stitch unit.
    """

    def __init__(self, num_columns: int, num_subspaces: int, self_weight: float = 0.9) -> None:
        _checks.positive_int("num_columns", num_columns)
        _checks.positive_int("num_subspaces", num_subspaces)
        super().__init__(num_columns * num_subspaces, self_weight)
        self.num_subspaces = num_subspaces

    def forward(self, x: Tensor) -> Tensor:
        width = x.shape[-1]
        if width % self.num_subspaces:
            raise MtlzooError(
                f"SubspaceStitchUnit: a column's width {width} does not split into "
                f"{self.num_subspaces} subspaces of equal width"
            )
        subspaces = x.reshape(x.shape[0], x.shape[1] * self.num_subspaces,
                              width // self.num_subspaces)
        return super().forward(subspaces).reshape(x.shape)
