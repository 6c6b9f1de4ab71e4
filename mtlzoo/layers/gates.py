"""Softmax gates over experts, stacked, with an optional mask of the experts each may use.

Axes: b batch, g gates, d input features, e experts, a experts a gate may use, h expert width.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtlzoo import _checks
from mtlzoo.errors import MtlzooError
from mtlzoo.layers.axes import Spec, einsum_specs
from mtlzoo.layers.stacked import GroupIndex, Norm, StackedLinear, stacked_norm

_MIXTURE = Spec("b g e, b e h -> b g h", "weights (b, g, e), experts (b, e, h)",
                "one torch.einsum (a bmm over b)")


@einsum_specs(_MIXTURE)
def mix_experts(weights: Tensor, experts: Tensor) -> Tensor:
    """Gate-weighted sums of expert outputs: ``"b g e, b e h -> b g h"``."""
    return torch.einsum("bge,beh->bgh", weights, experts)


@einsum_specs(
    Spec("b d, g d a -> b g a", "logits, x (b, d) read by every gate", "StackedLinear's mm"),
    Spec("b g d, g d a -> b g a", "logits, x (b, g, d): gate g reads x[:, g]",
         "StackedLinear's baddbmm"),
    Spec(_MIXTURE.pattern, "mixture: softmax of the (normalised) logits over a, scattered into e",
         "mix_experts"),
)
class SoftmaxGates(nn.Module):
    """G linear softmax gates over E experts, and the mixtures they weight.

    Gate g's weights are ``softmax(x W_g)``, as in the MMoE and PLE papers (``bias=True``
    adds a bias to the logits). Logits ``"b d, g d a -> b g a"`` when every gate reads the
    same x, ``"b g d, g d a -> b g a"`` when gate g reads ``x[:, g]``; softmax over a,
    scattered into e; mixture ``"b g e, b e h -> b g h"`` (``mix_experts``).

    ``norm`` (None, "batch" or "layer") normalises the logits (b, g, a) before the softmax,
    one op for all gates: ``"batch"`` is one ``nn.BatchNorm1d(a)`` per gate, as torch-rechub's
    gates (an MLP whose one layer has batch norm) do; ``"layer"`` one ``nn.LayerNorm(a)``
    per gate. Its parameters (and running statistics) are ``norm.*``, each (g, a).

    ``mask`` (g, e), optional: gate g may only use the experts where it is True. Every row must
    allow the same number ``a`` of experts; logits are computed only for those (weight
    (g, d, a), so no parameter belongs to a masked expert) and scattered into (b, g, e),
    leaving exact zeros elsewhere.

    ``forward(x, experts)``: ``x`` (b, d) shared by all gates or (b, g, d) one per gate,
    ``experts`` (b, e, h); returns ``(mixed (b, g, h), weights (b, g, e))``, each weight row
    summing to one. ``index`` computes only those gates.
    """

    def __init__(
        self,
        num_gates: int,
        in_features: int,
        num_experts: int,
        mask: Tensor | None = None,
        bias: bool = False,
        norm: Norm = None,
    ) -> None:
        super().__init__()
        self.num_gates = _checks.positive_int("num_gates", num_gates)
        self.num_experts = _checks.positive_int("num_experts", num_experts)
        expert_index = _mask_to_index(mask, num_gates, num_experts)
        self.restricted = expert_index.shape[1] < num_experts
        self.register_buffer("expert_index", expert_index.contiguous(), persistent=False)
        self.logits = StackedLinear(num_gates, in_features, expert_index.shape[1], bias=bias)
        self.norm = stacked_norm(norm, num_gates, expert_index.shape[1])  # None: no keys

    def forward(
        self, x: Tensor, experts: Tensor, index: GroupIndex = None
    ) -> tuple[Tensor, Tensor]:
        if experts.dim() != 3 or experts.shape[1] != self.num_experts:
            raise MtlzooError(
                f"experts must have shape (batch, {self.num_experts}, width), "
                f"got {tuple(experts.shape)}"
            )
        weights = self.weights(x, index)
        return self.mix(weights, experts), weights

    @staticmethod
    def mix(weights: Tensor, experts: Tensor) -> Tensor:
        """``mix_experts``: any gates' weights (b, g, e), these or another module's, mixed in
        one call (PLE's task gates and shared gate: one expert gradient, not two summed)."""
        return mix_experts(weights, experts)

    def weights(self, x: Tensor, index: GroupIndex = None) -> Tensor:
        """The gates' weights alone, (b, g, e)."""
        logits = self.logits(x, index)
        if self.norm is not None:
            logits = self.norm(logits, index)
        weights = torch.softmax(logits, dim=-1)
        if self.restricted:
            expert_index = self.expert_index if index is None else self.expert_index[index]
            full = weights.new_zeros(*weights.shape[:2], self.num_experts)
            weights = full.scatter(-1, expert_index.expand(weights.shape[0], -1, -1), weights)
        return weights


def _mask_to_index(mask: Tensor | None, num_gates: int, num_experts: int) -> Tensor:
    """The (g, a) ids of the experts each gate may use, from a (g, e) boolean mask (None:
    every gate may use every expert)."""
    if mask is None:
        return torch.arange(num_experts).expand(num_gates, num_experts)
    if (
        not isinstance(mask, torch.Tensor)
        or mask.dtype != torch.bool
        or tuple(mask.shape) != (num_gates, num_experts)
    ):
        got = (
            f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor)
            else f"a {type(mask).__name__}"
        )
        raise MtlzooError(
            f"mask must be a bool tensor of shape ({num_gates}, {num_experts}), got {got}"
        )
    counts = mask.sum(dim=1)
    if counts.min() < 1 or counts.min() != counts.max():
        raise MtlzooError(
            f"every gate must be allowed the same number (>= 1) of experts, "
            f"got per-gate counts {counts.tolist()}"
        )
    return mask.nonzero()[:, 1].view(num_gates, -1)
