"""Naive loop versions of the batched kernels: ModuleLists looped over in Python.

They compute the same math as ``mtlzoo.layers`` one expert, gate, tower or task at a time,
the way most MTL code is written. The tests pin every batched kernel to them in float64 and
the speed benchmarks measure against them. ``loop_version(model)`` copies a model with every
batched kernel replaced by its loop version (same weights, same outputs).
``packed_final_states`` is the text encoder's BiLSTM read the usual way, through packed
sequences.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from mtlzoo.layers import (
    CrossStitchUnit,
    DSelectGates,
    SoftmaxGates,
    StackedLinear,
    StackedMLP,
    SubspaceStitchUnit,
    TiedMLP,
)
from mtlzoo.layers.topk import NoisyTopKGates, TopKRouting


def _linear(stacked: StackedLinear, g: int) -> nn.Linear:
    """Group g of a StackedLinear as an ``nn.Linear`` with copied weights."""
    has_bias = stacked.bias is not None
    linear = nn.Linear(stacked.in_features, stacked.out_features, bias=has_bias)
    linear = linear.to(stacked.weight.device, stacked.weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(stacked.weight[g].T)
        if has_bias:
            linear.bias.copy_(stacked.bias[g])
    return linear


def _norm(source: nn.Module | None, g: int) -> list[nn.Module]:
    """Group g of a stacked normalisation (``mtlzoo.layers.stacked.stacked_norm``) as an
    ``nn.BatchNorm1d`` or ``nn.LayerNorm`` with copied parameters and running statistics
    (none without a norm)."""
    if source is None:
        return []
    features = source.weight.shape[1]
    batch = hasattr(source, "running_mean")
    norm = nn.BatchNorm1d(features) if batch else nn.LayerNorm(features)
    norm = norm.to(source.weight.device, source.weight.dtype)
    with torch.no_grad():
        norm.weight.copy_(source.weight[g])
        norm.bias.copy_(source.bias[g])
        if batch:
            norm.running_mean.copy_(source.running_mean[g])
            norm.running_var.copy_(source.running_var[g])
    return [norm]


def _group_inputs(x: Tensor, groups: Sequence[int]) -> list[Tensor]:
    """Each selected group's input: the shared (b, d) input, or its own slice of (b, g, d)."""
    return [x] * len(groups) if x.dim() == 2 else [x[:, i] for i in range(len(groups))]


class LoopGroups(nn.Module):
    """One module per group, called one after another; their outputs stacked on dim 1."""

    def __init__(self, per_group: Iterable[nn.Module]) -> None:
        super().__init__()
        self.per_group = nn.ModuleList(per_group)

    def forward(self, x: Tensor, index: Sequence[int] | None = None) -> Tensor:
        groups = range(len(self.per_group)) if index is None else index
        inputs = _group_inputs(x, groups)
        outputs = [self.per_group[g](x_g) for g, x_g in zip(groups, inputs, strict=True)]
        return torch.stack(outputs, dim=1)


class LoopLinear(LoopGroups):
    """One ``nn.Linear`` per group (the reference for ``StackedLinear``)."""

    def __init__(self, stacked: StackedLinear) -> None:
        super().__init__(_linear(stacked, g) for g in range(stacked.groups))


class LoopMLP(LoopGroups):
    """One ``nn.Sequential`` MLP per group (the reference for ``StackedMLP``): linear, its
    own ``nn.BatchNorm1d`` / ``nn.LayerNorm`` (with a norm), activation, dropout."""

    def __init__(self, stacked: StackedMLP) -> None:
        super().__init__(
            nn.Sequential(*[
                module
                for depth, layer in enumerate(stacked.layers)
                for module in (_linear(layer, g),
                               *_norm(stacked.norms and stacked.norms[depth], g),
                               stacked.activation, stacked.dropout)
            ])
            for g in range(stacked.groups)
        )


class LoopGates(nn.Module):
    """One softmax gate per gate, its logits from an ``nn.Linear`` (and its own
    ``nn.BatchNorm1d`` / ``nn.LayerNorm`` with a norm), each mixing the experts with its own
    bmm."""

    def __init__(self, gates: SoftmaxGates) -> None:
        super().__init__()
        self.num_experts = gates.num_experts
        self.register_buffer("expert_index", gates.expert_index.clone(), persistent=False)
        self.linears = nn.ModuleList(_linear(gates.logits, g) for g in range(gates.num_gates))
        # one normalisation a gate, or none
        self.norms = nn.ModuleList(n for g in range(gates.num_gates) for n in _norm(gates.norm, g))

    def forward(
        self, x: Tensor, experts: Tensor, index: Sequence[int] | None = None
    ) -> tuple[Tensor, Tensor]:
        groups = range(len(self.linears)) if index is None else index
        mixed, weights = [], []
        for g, x_g in zip(groups, _group_inputs(x, groups), strict=True):
            weight = self._weight(g, x_g)
            mixed.append(torch.bmm(weight.unsqueeze(1), experts)[:, 0])
            weights.append(weight)
        return torch.stack(mixed, dim=1), torch.stack(weights, dim=1)

    @staticmethod
    def mix(weights: Tensor, experts: Tensor) -> Tensor:
        """Each gate's mixture with its own bmm."""
        mixed = [torch.bmm(weights[:, g].unsqueeze(1), experts)[:, 0]
                 for g in range(weights.shape[1])]
        return torch.stack(mixed, dim=1)

    def weights(self, x: Tensor, index: Sequence[int] | None = None) -> Tensor:
        """Each gate's weights, (b, g, e)."""
        groups = range(len(self.linears)) if index is None else index
        return torch.stack([self._weight(g, x_g) for g, x_g in
                            zip(groups, _group_inputs(x, groups), strict=True)], dim=1)

    def _weight(self, g: int, x_g: Tensor) -> Tensor:
        logits = self.linears[g](x_g)
        if self.norms:
            logits = self.norms[g](logits)
        probs = torch.softmax(logits, dim=-1)
        weight = probs.new_zeros(len(probs), self.num_experts)
        return weight.index_copy(1, self.expert_index[g], probs)


class LoopTopKGates(nn.Module):
    """Noisy top-k gates one gate at a time, each from its own ``nn.Linear`` (clean and noise
    logits), the load estimate's threshold found expert by expert (the k-th largest of the
    other noisy logits); ``mix`` runs every expert dense, one at a time, and masks: the
    weights are zero outside the chosen. The noise is drawn as one (b, g, a) tensor, the
    batched gates' draw, so both see the same noise."""

    def __init__(self, gates: NoisyTopKGates) -> None:
        super().__init__()
        self.num_experts, self.top_k, self.noise = gates.num_experts, gates.top_k, gates.noise
        self.importance_weight, self.load_weight = gates.importance_weight, gates.load_weight
        self.register_buffer("expert_index", gates.expert_index.clone(), persistent=False)
        self.linears = nn.ModuleList(_linear(gates.logits, g) for g in range(gates.num_gates))
        self.train(gates.training)  # noise in training mode only, as the gates it copies

    def forward(self, x: Tensor, index: Sequence[int] | None = None) -> TopKRouting:
        groups = range(len(self.linears)) if index is None else index
        allowed, k = self.expert_index.shape[1], self.top_k
        noisy = self.noise and self.training
        draws = None
        if noisy:
            draws = torch.randn(x.shape[0], len(groups), allowed, dtype=x.dtype, device=x.device)
        weights, experts, expert_weights, aux_loss = [], [], [], x.new_zeros(())
        for i, (g, x_g) in enumerate(zip(groups, _group_inputs(x, groups), strict=True)):
            raw = self.linears[g](x_g)
            clean, logits = raw[:, :allowed], raw[:, :allowed]
            if noisy:
                scale = nn.functional.softplus(raw[:, allowed:])
                logits = clean + draws[:, i] * scale
            values, positions = logits.topk(k, dim=1)
            probs = torch.softmax(values, dim=1)
            chosen = self.expert_index[g][positions]
            weights.append(probs.new_zeros(len(probs), self.num_experts).scatter(1, chosen, probs))
            experts.append(chosen)
            expert_weights.append(probs)
            importance = probs.new_zeros(clean.shape).scatter(1, positions, probs).sum(0)
            if noisy and k < allowed:
                load = []
                for j in range(allowed):
                    others = torch.cat([logits[:, :j], logits[:, j + 1:]], dim=1)
                    kth_other = others.topk(k, dim=1).values[:, -1]
                    load.append(torch.special.ndtr((clean[:, j] - kth_other) / scale[:, j]).sum())
                load = torch.stack(load)
            else:
                load = probs.new_zeros(clean.shape).scatter(1, positions, 1.0).sum(0)
            aux_loss = (aux_loss + self.importance_weight * _cv_squared(importance)
                        + self.load_weight * _cv_squared(load))
        return TopKRouting(torch.stack(weights, dim=1), torch.stack(experts, dim=1),
                           torch.stack(expert_weights, dim=1), aux_loss)

    @staticmethod
    def mix(routing: TopKRouting, mlps: Sequence[nn.Module], inputs: Sequence[Tensor]) -> Tensor:
        """Every expert of every MLP run dense, then each gate's masked mixture, one bmm each."""
        dense = torch.cat([mlp(x) for mlp, x in zip(mlps, inputs, strict=True)], dim=1)
        mixed = [torch.bmm(routing.weights[:, g].unsqueeze(1), dense)[:, 0]
                 for g in range(routing.weights.shape[1])]
        return torch.stack(mixed, dim=1)


def _cv_squared(values: Tensor) -> Tensor:
    """Population variance over the squared mean (1e-10 added), of a 1-d tensor."""
    mean = values.sum() / len(values)
    return ((values - mean) ** 2).sum() / len(values) / (mean**2 + 1e-10)


class LoopCrossStitch(nn.Module):
    """A cross-stitch unit computed one target column at a time."""

    def __init__(self, unit: CrossStitchUnit) -> None:
        super().__init__()
        self.alpha = nn.Parameter(unit.alpha.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        columns = range(x.shape[1])
        return torch.stack(
            [sum(self.alpha[s, t] * x[:, s] for s in columns) for t in columns], dim=1
        )


class LoopTiedMLP(LoopMLP):
    """One MLP per column (``LoopMLP``); the distance summed one pair of columns at a time."""

    def pairwise_squared_distance(self) -> Tensor:
        columns = [[m for m in mlp if isinstance(m, nn.Linear)] for mlp in self.per_group]
        total = columns[0][0].weight.new_zeros(())
        for s in range(len(columns)):
            for t in range(s + 1, len(columns)):
                for a, b in zip(columns[s], columns[t], strict=True):
                    total = total + (a.weight - b.weight).pow(2).sum()
                    total = total + (a.bias - b.bias).pow(2).sum()
        return total


class LoopSubspaceStitch(LoopCrossStitch):
    """A subspace stitch unit: the cross-stitch loop over the T*m subspace columns."""

    def __init__(self, unit: SubspaceStitchUnit) -> None:
        super().__init__(unit)
        self.num_subspaces = unit.num_subspaces

    def forward(self, x: Tensor) -> Tensor:
        width = x.shape[-1] // self.num_subspaces
        return super().forward(x.reshape(x.shape[0], -1, width)).reshape(x.shape)


class LoopDSelectGates(nn.Module):
    """DSelect-k gates one gate, selector and expert at a time: each gate's code and
    combination logits from its own ``nn.Linear``, each expert's weight a product over its
    code's bits of the paper's piecewise smooth-step, each gate mixing with its own bmm."""

    def __init__(self, gates: DSelectGates) -> None:
        super().__init__()
        self.num_experts, self.num_selectors = gates.num_experts, gates.num_selectors
        self.num_bits, self.gamma, self.entropy_reg = gates.num_bits, gates.gamma, gates.entropy_reg
        self.linears = nn.ModuleList(_linear(gates.logits, g) for g in range(gates.num_gates))

    def forward(
        self, x: Tensor, experts: Tensor, index: Sequence[int] | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        groups = range(len(self.linears)) if index is None else index
        mixed, weights, regulariser = [], [], x.new_zeros(())
        for g in groups:
            weight, penalty = self._weight(g, x)
            mixed.append(torch.bmm(weight.unsqueeze(1), experts)[:, 0])
            weights.append(weight)
            regulariser = regulariser + penalty
        return torch.stack(mixed, dim=1), torch.stack(weights, dim=1), regulariser

    def _smooth_step(self, t: Tensor) -> Tensor:
        gamma = self.gamma
        cubic = -2 / gamma**3 * t**3 + 3 / (2 * gamma) * t + 0.5
        return torch.where(t <= -gamma / 2, 0.0, torch.where(t >= gamma / 2, 1.0, cubic))

    def _weight(self, g: int, x: Tensor) -> tuple[Tensor, Tensor]:
        """Gate g's weights (b, e) and its regulariser, averaged over the batch."""
        logits = self.linears[g](x)
        bits, experts = self.num_bits, self.num_experts
        combination = torch.softmax(logits[:, self.num_selectors * bits:], dim=1)
        weight = logits.new_zeros(len(x), experts)
        penalty = logits.new_zeros(len(x))
        for c in range(self.num_selectors):
            steps = self._smooth_step(logits[:, c * bits:(c + 1) * bits])
            probs = []
            for j in range(experts):
                prob = logits.new_ones(len(x))
                for bit in range(bits):
                    on = (j >> (bits - 1 - bit)) & 1
                    prob = prob * (steps[:, bit] if on else 1 - steps[:, bit])
                probs.append(prob)
            selector = torch.stack(probs, dim=1)
            if experts != 2**bits:  # renormalised over the real experts, penalised off them
                mass = selector.sum(1, keepdim=True)
                safe = torch.where(mass > 0, mass, 1.0)
                selector = torch.where(mass > 0, selector / safe, 1.0 / experts)
                penalty = penalty + (1 / safe[:, 0] - 1)
            if self.entropy_reg:
                logs = selector.clamp_min(torch.finfo(selector.dtype).tiny).log()
                penalty = penalty - self.entropy_reg * (selector * logs).sum(1)
            weight = weight + combination[:, c:c + 1] * selector
        return weight, penalty.mean()


_LOOP_VERSIONS: dict[type[nn.Module], type[nn.Module]] = {
    StackedMLP: LoopMLP,
    StackedLinear: LoopLinear,
    SoftmaxGates: LoopGates,
    NoisyTopKGates: LoopTopKGates,
    CrossStitchUnit: LoopCrossStitch,
    TiedMLP: LoopTiedMLP,
    SubspaceStitchUnit: LoopSubspaceStitch,
    DSelectGates: LoopDSelectGates,
}


def loop_version(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every batched kernel replaced by its loop version."""
    model = copy.deepcopy(model)
    _replace_kernels(model)
    return model


def _replace_kernels(module: nn.Module) -> None:
    for name, child in module.named_children():
        loop_class = _LOOP_VERSIONS.get(type(child))
        if loop_class is None:
            _replace_kernels(child)
        else:
            setattr(module, name, loop_class(child))


def packed_final_states(lstm: nn.LSTM, inputs: Tensor, lengths: Tensor) -> Tensor:
    """What ``mtlzoo.encoders.text.final_states`` computes, the usual way: the rows packed
    (``pack_padded_sequence``) through ``lstm``; the last layer's final hidden states of
    both directions, (b, 2h)."""
    packed = nn.utils.rnn.pack_padded_sequence(inputs, lengths.cpu(), batch_first=True,
                                               enforce_sorted=False)
    _, (hidden, _) = lstm(packed)  # (layers * 2, b, h)
    return torch.cat([hidden[-2], hidden[-1]], dim=1)
