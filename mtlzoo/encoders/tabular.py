"""The tabular encoder: categorical codes through one embedding table, numbers through a
linear layer.

Axes: b batch, c categorical columns, n numeric columns, e embedding width.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from mtlzoo import _checks
from mtlzoo.errors import MtlzooError


class TabularEncoder(nn.Module):
    """``[embed(codes) flattened (b, c*e), linear(numbers) (b, numeric_features)]``.

    Every categorical column c has ``cardinalities[c]`` codes (0 .. K_c - 1; loaders reserve
    0 for values unseen in training). One ``nn.Embedding`` holds all columns' rows, column c
    at offset ``sum(cardinalities[:c])``, so the lookup is one gather: ``codes + offsets``.
    Input: a dict with ``"categorical"`` (b, c) integer codes and ``"numeric"`` (b, n) floats
    (either may be absent when the table has none of that kind).
    """

    def __init__(
        self,
        cardinalities: Sequence[int],
        num_numeric: int,
        embedding_dim: int = 4,
        numeric_features: int | None = None,
    ) -> None:
        super().__init__()
        self.cardinalities = [_checks.positive_int("a cardinality", k) for k in cardinalities]
        self.num_numeric = _checks.non_negative_int("num_numeric", num_numeric)
        if not self.cardinalities and not self.num_numeric:
            raise MtlzooError("a table needs at least one categorical or numeric column")
        self.embedding_dim = _checks.positive_int("embedding_dim", embedding_dim)
        offsets = torch.tensor([0, *self.cardinalities[:-1]]).cumsum(0)
        self.register_buffer("offsets", offsets[: len(self.cardinalities)], persistent=False)
        self.embedding = nn.Embedding(max(1, sum(self.cardinalities)), embedding_dim)
        width = num_numeric if numeric_features is None else numeric_features
        self.numeric = nn.Linear(num_numeric, width) if num_numeric else None
        self.out_features = len(self.cardinalities) * embedding_dim + (width if num_numeric else 0)

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        if not isinstance(inputs, Mapping):
            raise MtlzooError(
                "TabularEncoder expects a dict with 'categorical' and 'numeric', got "
                f"{type(inputs).__name__}"
            )
        parts = []
        if self.cardinalities:
            codes = self._codes(inputs)
            parts.append(self.embedding(codes + self.offsets).flatten(1))
        if self.numeric is not None:
            numbers = inputs.get("numeric")
            if numbers is None or numbers.dim() != 2 or numbers.shape[1] != self.num_numeric:
                got = None if numbers is None else tuple(numbers.shape)
                raise MtlzooError(f"'numeric' must be (batch, {self.num_numeric}), got {got}")
            parts.append(self.numeric(numbers.to(self.numeric.weight.dtype)))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def _codes(self, inputs: Mapping[str, Tensor]) -> Tensor:
        codes = inputs.get("categorical")
        count = len(self.cardinalities)
        if codes is None or codes.dim() != 2 or codes.shape[1] != count:
            got = None if codes is None else tuple(codes.shape)
            raise MtlzooError(f"'categorical' must be (batch, {count}) codes, got {got}")
        if codes.is_floating_point():
            raise MtlzooError(f"categorical codes must be integers, got {codes.dtype}")
        self._check_range(codes)
        return codes.long()

    def _check_range(self, codes: Tensor) -> None:
        limits = torch.tensor(self.cardinalities, device=codes.device)
        bad = (codes < 0) | (codes >= limits)
        if torch.compiler.is_compiling():  # a traced graph cannot branch on values: assert
            message = f"categorical codes must be in 0..cardinality - 1 {self.cardinalities}"
            torch._assert_async(~bad.any(), message)
        elif bad.any():
            row, column = bad.nonzero()[0].tolist()
            raise MtlzooError(
                f"categorical column {column}: code {codes[row, column].item()} is outside "
                f"0..{self.cardinalities[column] - 1} (unseen values should map to code 0)"
            )
