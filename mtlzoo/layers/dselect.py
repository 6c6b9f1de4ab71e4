"""DSelect-k gates: each gate combines k differentiable single-expert selectors.

Hazimeh, Zhao, Chowdhery, Sathiamoorthy, Chen, Mazumder, Hong, Chi, "DSelect-k:
Differentiable Selection in the Mixture of Experts with Applications to Multi-Task Learning",
NeurIPS 2021.

Axes: b batch, g gates, d input features, c single-expert selectors (the paper's k),
e experts, h expert width, o logits per gate.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtlzoo import _checks
from mtlzoo.errors import MtlzooError
from mtlzoo.layers.axes import Spec, einsum_specs
from mtlzoo.layers.gates import mix_experts
from mtlzoo.layers.stacked import GroupIndex, StackedLinear


def _smooth_step(logits: Tensor, gamma: float) -> Tensor:
    """The cubic smooth-step: 0 below -gamma/2, 1 above gamma/2, and in between the paper's
    ``-2 t^3 / gamma^3 + 3 t / (2 gamma) + 1/2``, written as ``u^2 (3 - 2u)`` with
    ``u = t / gamma + 1/2`` clamped to [0, 1], so the saturated values are exactly 0 and 1."""
    u = (logits / gamma + 0.5).clamp(0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


@einsum_specs(
    Spec("b d, g d o -> b g o",
         "logits, x (b, d) read by every gate: each selector's m code logits and its "
         "combination logit, o = c (m + 1)",
         "StackedLinear's mm"),
    Spec("b g c, b g c e -> b g e",
         "gate weights: softmax over c of the combination logits, times each selector's "
         "distribution over e (a product of m smooth-steps per expert)",
         "one torch.einsum (a bmm over b g)"),
    Spec("b g e, b e h -> b g h", "mixture of the experts by the gate weights", "mix_experts"),
)
class DSelectGates(nn.Module):
    """G DSelect-k gates over E experts, each with ``num_selectors`` (the paper's k)
    single-expert selectors, per example (every logit is a linear function of x).

    Expert j has the m-bit binary code of j (m = ceil(log2 E), most significant bit first).
    Selector c of gate g reads m code logits z, ``s = smooth_step(z)``, and gives expert j
    the weight ``r_j = prod_l (s_l if bit l of j is 1 else 1 - s_l)``: a distribution over
    the 2^m codes, computed for all experts at once (a product over the bits of an
    (e, m) code table, no loop over experts). Gate weights
    ``"b g c, b g c e -> b g e"``: the softmax over c of the combination logits weighting the
    selectors; all gates' and selectors' logits come from one ``StackedLinear``,
    ``"b d, g d o -> b g o"``. Mixture ``"b g e, b e h -> b g h"`` (``mix_experts``).

    E not a power of two: codes E..2^m - 1 belong to no expert. As in the official code, the
    selector is restricted to the E real codes and ``1 / mass - 1`` (mass: its weight on
    them) is added to the regulariser, which keeps selectors off the missing codes; unlike
    it, each selector is renormalised to sum to one (a selector saturated wholly on missing
    codes, mass exactly 0, spreads evenly over the experts).

    ``forward(x (b, d), experts (b, e, h), index)`` returns ``(mixed (b, g, h), weights
    (b, g, e), regulariser ())``, each weight row summing to one; ``regulariser`` is, averaged
    over the batch and summed over gates and selectors, ``entropy_reg`` times the selector's
    entropy (0 for a selector on one expert) plus the missing-code term. ``index`` computes
    only those gates.
    """

    def __init__(
        self,
        num_gates: int,
        in_features: int,
        num_experts: int,
        num_selectors: int = 2,
        gamma: float = 1.0,
        entropy_reg: float = 1e-6,
    ) -> None:
        super().__init__()
        self.num_gates = _checks.positive_int("num_gates", num_gates)
        self.num_experts = _checks.positive_int("num_experts", num_experts)
        self.num_selectors = _checks.positive_int("num_selectors", num_selectors)
        self.gamma = _checks.real("gamma", gamma, positive=True)
        self.entropy_reg = _checks.real("entropy_reg", entropy_reg)
        self.num_bits = (num_experts - 1).bit_length()  # ceil(log2 E)
        self.all_codes_used = num_experts == 2**self.num_bits
        bits = torch.arange(self.num_bits - 1, -1, -1)
        codes = (torch.arange(num_experts).unsqueeze(1) >> bits) & 1
        self.register_buffer("codes", codes.bool(), persistent=False)  # (e, m)
        self.logits = StackedLinear(
            num_gates, in_features, num_selectors * (self.num_bits + 1)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official code's initialisation: code logits (weight and bias) from
        U(-gamma/100, gamma/100), so every smooth-step starts near 1/2 and the selectors
        near uniform; combination logits from U(-0.05, 0.05)."""
        split = self.num_selectors * self.num_bits
        with torch.no_grad():
            for param in (self.logits.weight, self.logits.bias):
                param[..., :split].uniform_(-self.gamma / 100, self.gamma / 100)
                param[..., split:].uniform_(-0.05, 0.05)

    def forward(
        self, x: Tensor, experts: Tensor, index: GroupIndex = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        if experts.dim() != 3 or experts.shape[1] != self.num_experts:
            raise MtlzooError(
                f"experts must have shape (batch, {self.num_experts}, width), "
                f"got {tuple(experts.shape)}"
            )
        weights, regulariser = self.weights(x, index)
        return mix_experts(weights, experts), weights, regulariser

    def weights(self, x: Tensor, index: GroupIndex = None) -> tuple[Tensor, Tensor]:
        """The gates' weights (b, g, e) and the regulariser (a scalar)."""
        logits = self.logits(x, index)
        split = self.num_selectors * self.num_bits
        code_logits = logits[..., :split].unflatten(-1, (self.num_selectors, self.num_bits))
        steps = _smooth_step(code_logits, self.gamma).unsqueeze(-2)  # (b, g, c, 1, m)
        # (b, g, c, e): per expert, the product over its code's bits
        selectors = torch.where(self.codes, steps, 1.0 - steps).prod(-1)
        regulariser = logits.new_zeros(())
        rows = max(selectors.shape[0], 1)  # the mean over the batch; 0 for no rows
        if not self.all_codes_used:
            mass = selectors.sum(-1, keepdim=True)
            reached = mass > 0
            safe_mass = torch.where(reached, mass, 1.0)
            selectors = torch.where(reached, selectors / safe_mass, 1.0 / self.num_experts)
            regulariser = (1.0 / safe_mass - 1.0).sum() / rows
        if self.entropy_reg:
            tiny = torch.finfo(selectors.dtype).tiny
            entropy = -(selectors * selectors.clamp_min(tiny).log()).sum() / rows
            regulariser = regulariser + self.entropy_reg * entropy
        combination = torch.softmax(logits[..., split:], dim=-1)  # (b, g, c)
        return torch.einsum("bgc,bgce->bge", combination, selectors), regulariser

    def extra_repr(self) -> str:
        return (f"num_gates={self.num_gates}, num_experts={self.num_experts}, "
                f"num_selectors={self.num_selectors}, gamma={self.gamma}, "
                f"entropy_reg={self.entropy_reg}")
