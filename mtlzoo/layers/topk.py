"""Noisy top-k gates (Shazeer et al., ICLR 2017) and the sparse expert mixture they route.

Shazeer, Mirhoseini, Maziarz, Davis, Le, Hinton, Dean, "Outrageously Large Neural Networks:
The Sparsely-Gated Mixture-of-Experts Layer", ICLR 2017.

Axes: b batch, g gates, d input features, e experts, a experts a gate may use, h expert width.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlzoo import _checks
from mtlzoo.errors import MtlzooError
from mtlzoo.layers.axes import Spec, einsum_specs
from mtlzoo.layers.gates import _mask_to_index
from mtlzoo.layers.stacked import GroupIndex, StackedLinear, StackedMLP

IMPORTANCE_WEIGHT = 0.1  # w_importance and w_load, the paper's setting (its Appendix A)
LOAD_WEIGHT = 0.1


class TopKRouting(NamedTuple):
    """What top-k gates decided for a batch.

    ``weights`` (b, g, e): each gate's softmax over its k chosen experts, zeros elsewhere
    (rows sum to one). ``experts`` (b, g, k): the chosen expert ids, best first;
    ``expert_weights`` (b, g, k): their weights. ``aux_loss``: the load-balancing loss.
    """

    weights: Tensor
    experts: Tensor
    expert_weights: Tensor
    aux_loss: Tensor

    def concat(self, other: TopKRouting) -> TopKRouting:
        """Both routings' gates (this one's first) and the sum of their losses."""
        return TopKRouting(*(torch.cat(pair, dim=1) for pair in zip(self[:3], other[:3],
                                                                    strict=True)),
                           self.aux_loss + other.aux_loss)


@einsum_specs(
    Spec("b d, g d a -> b g a", "logits and noise logits, x (b, d) read by every gate",
         "StackedLinear's mm (both in one weight, (g, d, 2a))"),
    Spec("b g d, g d a -> b g a", "logits and noise logits, x (b, g, d): gate g reads x[:, g]",
         "StackedLinear's baddbmm"),
)
class NoisyTopKGates(nn.Module):
    """G noisy top-k gates over E experts (Shazeer et al. 2017).

    Logits ``"b d, g d a -> b g a"`` (x (b, d) read by every gate) or
    ``"b g d, g d a -> b g a"`` (gate g reads ``x[:, g]``), the clean logits ``x W_g`` and the
    noise logits ``x W_noise`` in one StackedLinear. In training (with ``noise``)
    ``H = x W_g + N(0, 1) * softplus(x W_noise)``, in eval ``H = x W_g``. Each gate keeps the
    ``top_k`` largest of H per row, and its weights are the softmax over those (zeros
    elsewhere). ``mask`` (g, e), optional, as in ``SoftmaxGates``: gate g chooses among the
    ``a`` experts its row allows.

    The aux loss is the paper's: ``w_importance * CV(importance)^2 + w_load * CV(load)^2``
    per gate, summed over gates; importance sums a gate's weights over the batch, load its
    smooth estimate ``sum_x P(x, i)`` (the normal CDF of clean logit minus the k-th largest
    other noisy logit, over the noise scale) in noisy training, the count of rows routed to
    each expert otherwise (no gradient then). CV^2 is variance over mean squared, over the
    gate's ``a`` experts (population variance).

    ``forward(x, index)`` returns a ``TopKRouting``; ``mix`` runs only the chosen experts
    (``sparse_mixture``).
    """

    def __init__(
        self,
        num_gates: int,
        in_features: int,
        num_experts: int,
        top_k: int = 2,
        mask: Tensor | None = None,
        noise: bool = True,
        importance_weight: float = IMPORTANCE_WEIGHT,
        load_weight: float = LOAD_WEIGHT,
    ) -> None:
        super().__init__()
        self.num_gates = _checks.positive_int("num_gates", num_gates)
        self.num_experts = _checks.positive_int("num_experts", num_experts)
        expert_index = _mask_to_index(mask, num_gates, num_experts)
        allowed = expert_index.shape[1]
        if not _checks.is_int(top_k) or not 1 <= top_k <= allowed:
            raise MtlzooError(
                f"top_k must be an integer from 1 to {allowed} (the experts a gate may use), "
                f"got {top_k!r}"
            )
        self.top_k = top_k
        self.noise = _checks.boolean("noise", noise)
        self.importance_weight = _checks.real("importance_weight", importance_weight)
        self.load_weight = _checks.real("load_weight", load_weight)
        self.register_buffer("expert_index", expert_index.contiguous(), persistent=False)
        self.logits = StackedLinear(num_gates, in_features, allowed * (2 if noise else 1),
                                    bias=False)

    def forward(self, x: Tensor, index: GroupIndex = None) -> TopKRouting:
        raw = self.logits(x, index)
        allowed, k = self.expert_index.shape[1], self.top_k
        clean = raw[..., :allowed]
        noisy = self.noise and self.training
        logits, noise_scale = clean, None
        if noisy:
            noise_scale = F.softplus(raw[..., allowed:])
            logits = clean + torch.randn(clean.shape, dtype=clean.dtype,
                                         device=clean.device) * noise_scale
        top_values, top_positions = logits.topk(min(k + 1, allowed), dim=-1)
        expert_weights = torch.softmax(top_values[..., :k], dim=-1)
        positions = top_positions[..., :k]
        batch, gates = clean.shape[:2]
        expert_index = self.expert_index if index is None else self.expert_index[index]
        experts = expert_index.expand(batch, -1, -1).gather(-1, positions)
        weights = expert_weights.new_zeros(batch, gates, self.num_experts)
        weights = weights.scatter(-1, experts, expert_weights)
        importance = expert_weights.new_zeros(clean.shape).scatter(-1, positions, expert_weights)
        if noisy and k < allowed:
            load = _smooth_load(clean, logits, noise_scale, top_values, k)
        else:
            load = torch.zeros_like(importance).scatter(-1, positions, 1.0)
        aux_loss = (self.importance_weight * _cv_squared(importance.sum(0)).sum()
                    + self.load_weight * _cv_squared(load.sum(0)).sum())
        return TopKRouting(weights, experts, expert_weights, aux_loss)

    @staticmethod
    def mix(routing: TopKRouting, mlps: Sequence[StackedMLP], inputs: Sequence[Tensor]) -> Tensor:
        """``sparse_mixture`` of the routing's gates over ``mlps`` (their groups, in order,
        are the e experts), each reading its input: (b, g, h)."""
        return sparse_mixture(routing.experts, routing.expert_weights, mlps, inputs)


def _smooth_load(clean: Tensor, noisy: Tensor, noise_scale: Tensor, top_values: Tensor,
                 k: int) -> Tensor:
    """P(x, i), (b, g, a): the chance that expert i stays in the top k under a fresh draw of
    its own noise, the others' kept: Phi((clean_i - kth_excluding(H, k, i)) / scale_i). The
    k-th largest of the others is the (k+1)-th largest overall when i is in the top k, the
    k-th largest otherwise."""
    threshold_in, threshold_out = top_values[..., k:k + 1], top_values[..., k - 1:k]
    inside = noisy > threshold_in
    threshold = torch.where(inside, threshold_in, threshold_out)
    return torch.special.ndtr((clean - threshold) / noise_scale)


def _cv_squared(values: Tensor) -> Tensor:
    """The squared coefficient of variation over the last axis: population variance over the
    squared mean (1e-10 added to it, so all zeros give 0)."""
    return values.var(-1, correction=0) / (values.mean(-1) ** 2 + 1e-10)



@einsum_specs(
    Spec("b d, e d h -> b e h",
         "first layer, x (b, d) read by every expert: only the (row, expert) pairs some gate chose",
         "the chosen rows gathered per expert, padded to the busiest expert's count n: "
         "one baddbmm (e, n, d) @ (e, d, h) (StackedMLP's, one per StackedMLP)"),
    Spec("b e d, e d h -> b e h",
         "first layer with x (b, e, d) (expert i reads x[:, i]), and every later layer",
         "the same padded baddbmm over e"),
    Spec("b g e, b e h -> b g h",
         "mixture: weights zero outside each gate's k chosen experts",
         "a gather of the k chosen outputs, one bmm over (b g) of (1, k) @ (k, h)"),
)
def sparse_mixture(experts: Tensor, expert_weights: Tensor, mlps: Sequence[StackedMLP],
                   inputs: Sequence[Tensor]) -> Tensor:
    """Each gate's weighted sum of its chosen experts, running only the (row, expert) pairs
    some gate chose: (b, g, h).

    ``experts`` (b, g, k) chosen expert ids, ``expert_weights`` (b, g, k) their weights;
    ``mlps``: StackedMLPs whose groups, in order, are the e experts; ``inputs``: one per MLP,
    (b, d) read by all its experts or (b, groups, d). The chosen pairs are grouped by
    expert, each expert's rows gathered and padded to the busiest expert's count n, and each
    MLP runs on its (e, n, d) block, ``"b d, e d h -> b e h"`` (x (b, d)) or
    ``"b e d, e d h -> b e h"`` (x (b, e, d), and every later layer) on those pairs only, as
    one baddbmm a layer; the k outputs of each (row, gate) are gathered and mixed,
    ``"b g e, b e h -> b g h"`` with the weights zero outside the chosen. A gate's expert
    FLOPs scale with k, not e (padding aside).
    """
    if len(mlps) != len(inputs) or not mlps:
        raise MtlzooError(f"sparse_mixture needs one input per MLP, got {len(mlps)} MLPs and "
                          f"{len(inputs)} inputs")
    num_experts = sum(mlp.groups for mlp in mlps)
    rows, slots = _dispatch(experts, num_experts)
    outputs, start = [], 0
    for mlp, x in zip(mlps, inputs, strict=True):  # at most two StackedMLPs (PLE), not experts
        own_rows = rows[start:start + mlp.groups]
        if x.dim() == 3:
            own_rows = (own_rows, torch.arange(mlp.groups, device=x.device)[:, None])
        routed = x[own_rows]  # (groups, n, d)
        outputs.append(mlp(routed.transpose(0, 1)).transpose(0, 1))
        start += mlp.groups
    ran = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    chosen = ran.reshape(-1, ran.shape[-1])[slots]  # (b, g, k, h)
    return torch.matmul(expert_weights.unsqueeze(-2).to(chosen.dtype), chosen).squeeze(-2)


def _dispatch(experts: Tensor, num_experts: int) -> tuple[Tensor, Tensor]:
    """The chosen (row, expert) pairs grouped by expert: ``rows`` (e, n), expert i's rows in
    order, padded with row 0 up to the busiest expert's count n; ``slots`` (b, g, k), where
    each choice's output lands in the flattened (e * n) block."""
    batch = experts.shape[0]
    picks = experts.flatten(1)  # (b, g k); not reshape(b, -1), which fails on no rows
    used = torch.zeros(batch, num_experts, dtype=torch.bool, device=experts.device)
    used = used.scatter(1, picks, True)
    rank = used.cumsum(0) - 1  # a pair's place among its expert's rows
    capacity = int(used.sum(0).max())
    place = rank + torch.arange(num_experts, device=experts.device) * capacity
    row_ids = torch.arange(batch, device=experts.device)[:, None].expand(-1, num_experts)
    rows = torch.zeros(num_experts * capacity, dtype=torch.long, device=experts.device)
    rows = rows.index_put((place[used],), row_ids[used])
    slots = place.gather(1, picks).view_as(experts)
    return rows.view(num_experts, capacity), slots
