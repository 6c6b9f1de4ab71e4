"""Customized Gate Control (CGC) and Progressive Layered Extraction (PLE).

Tang, Liu, Zhao, Gong, "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning
(MTL) Model for Personalized Recommendations", RecSys 2020.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor, nn

from mtlzoo import _checks
from mtlzoo._registry import register_model
from mtlzoo.errors import MtlzooError
from mtlzoo.layers import SoftmaxGates, StackedMLP, TaskHeads, run_jointly
from mtlzoo.layers.activations import Activation
from mtlzoo.layers.topk import NoisyTopKGates
from mtlzoo.models.base import MultiTaskModel
from mtlzoo.models.mmoe import check_gate
from mtlzoo.tasks import Task


class ExtractionNetwork(nn.Module):
    """One PLE level: task experts, shared experts, task gates and a shared gate (not at the
    last level, nor without shared experts, where nothing would read its output).

    Experts are laid out as ``[task 0's n_t, ..., task T-1's n_t, the n_s shared]`` (e of them).
    ``forward(task_in, shared_in, task_ids)``: ``task_in`` (b, t, d) holds each task's input
    (None at the first level, where everything reads ``shared_in``); ``shared_in`` is (b, d).
    Returns ``task_out`` (b, t, h), ``shared_out`` (b, h) or None, and the gate weights
    (b, t [+ 1 shared], e).
    """

    def __init__(
        self,
        num_tasks: int,
        in_features: int,
        num_shared_experts: int,
        num_task_experts: int,
        expert_dims: Sequence[int],
        activation: Activation,
        dropout: float,
        *,
        last: bool,
        norm: str | None = None,
        gate_norm: str | None = None,
        gate: str = "softmax",
        top_k: int = 2,
        gate_noise: bool = True,
    ) -> None:
        super().__init__()
        self.num_task_experts = num_task_experts
        task_total = num_tasks * num_task_experts
        num_experts = task_total + num_shared_experts

        def experts(count: int) -> StackedMLP | None:
            if not count:
                return None
            return StackedMLP(count, in_features, expert_dims, activation, dropout, norm)

        self.task_experts = experts(task_total)
        self.shared_experts = experts(num_shared_experts)
        expert_ids = torch.arange(num_experts)
        owner = torch.div(expert_ids, max(num_task_experts, 1), rounding_mode="floor")
        mask = (owner == torch.arange(num_tasks)[:, None]) | (expert_ids >= task_total)
        self.sparse = check_gate(gate, norm, gate_norm) == "topk"
        gates = (partial(NoisyTopKGates, top_k=top_k, noise=gate_noise) if self.sparse
                 else partial(SoftmaxGates, norm=gate_norm))
        self.task_gates = gates(num_tasks, in_features, num_experts, mask=mask)
        # the shared output feeds the next level's shared experts: none there, no shared gate
        has_next_shared = not last and num_shared_experts > 0
        self.shared_gate = gates(1, in_features, num_experts) if has_next_shared else None

    def forward(
        self, task_in: Tensor | None, shared_in: Tensor, task_ids: Sequence[int] | None = None
    ) -> tuple[Tensor, Tensor | None, Tensor] | tuple[Tensor, Tensor | None, Tensor, Tensor]:
        if self.sparse:
            return self._sparse_forward(task_in, shared_in, task_ids)
        if task_in is None:  # the first level: every expert reads x, one matmul a layer
            experts = run_jointly([m for m in (self.task_experts, self.shared_experts) if m],
                                  shared_in)
        else:
            outputs = []
            if self.task_experts is not None:
                outputs.append(self.task_experts(
                    task_in.repeat_interleave(self.num_task_experts, dim=1)))
            if self.shared_experts is not None:
                outputs.append(self.shared_experts(shared_in))
            experts = torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0]

        gate_in = shared_in
        if task_in is not None:
            gate_in = task_in if task_ids is None else task_in[:, task_ids]
        if self.shared_gate is None:
            task_out, weights = self.task_gates(gate_in, experts, task_ids)
            return task_out, None, weights
        # the task gates and the shared gate mix the experts in one mixture: the experts'
        # gradient comes out of one bmm, not two to be summed
        weights = torch.cat([self.task_gates.weights(gate_in, task_ids),
                             self.shared_gate.weights(shared_in)], dim=1)
        mixed = self.task_gates.mix(weights, experts)
        return mixed[:, :-1], mixed[:, -1], weights

    def _sparse_forward(
        self, task_in: Tensor | None, shared_in: Tensor, task_ids: Sequence[int] | None
    ) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
        """Top-k gates route first; then only the chosen (row, expert) pairs run (task
        experts reading their task's input), one padded bmm a layer per StackedMLP. Returns
        forward's three values and the gates' load-balancing loss."""
        gate_in = shared_in
        if task_in is not None:
            gate_in = task_in if task_ids is None else task_in[:, task_ids]
        routing = self.task_gates(gate_in, task_ids)
        if self.shared_gate is not None:
            routing = routing.concat(self.shared_gate(shared_in))
        task_experts_in = (shared_in if task_in is None
                           else task_in.repeat_interleave(self.num_task_experts, dim=1))
        mlps, inputs = zip(*[(mlp, x) for mlp, x in ((self.task_experts, task_experts_in),
                                                     (self.shared_experts, shared_in))
                             if mlp is not None], strict=True)
        mixed = self.task_gates.mix(routing, mlps, inputs)
        if self.shared_gate is None:
            return mixed, None, routing.weights, routing.aux_loss
        return mixed[:, :-1], mixed[:, -1], routing.weights, routing.aux_loss


@register_model("ple")
class PLE(MultiTaskModel):
    """Progressive Layered Extraction: ``num_levels`` stacked extraction networks.

    Level 1's experts and gates read x. At level k > 1, task t's experts and gate read task t's
    output of level k-1; the shared experts and shared gate read the shared output. Task t's
    gate mixes its own and the shared experts; the shared gate (every level but the last)
    mixes all experts of its level. The towers read each task's output of the last level.
    ``gate_weights["level{k}"]`` is (b, t + 1, e) (the shared gate last), (b, t, e) at the
    last level (and at every level when ``num_shared_experts=0``: no shared path then).
    ``gate="topk"``: every gate is a noisy top-k gate (``NoisyTopKGates``, a task gate
    choosing among the experts its mask allows), only the chosen experts run, and
    ``aux_loss`` sums the gates' load-balancing losses over the levels.
    ``gate_norm`` normalises every softmax gate's logits (``SoftmaxGates``), as
    torch-rechub's batch-normalised gates do.
    """

    def __init__(
        self,
        *,
        in_features: int,
        tasks: Sequence[Task],
        num_levels: int = 2,
        num_shared_experts: int = 4,
        num_task_experts: int = 2,
        expert_dims: Sequence[int] = (64,),
        tower_dims: Sequence[int] = (32,),
        dropout: float = 0.0,
        activation: Activation = "relu",
        norm: str | None = None,
        gate_norm: str | None = None,
        gate: str = "softmax",
        top_k: int = 2,
        gate_noise: bool = True,
    ) -> None:
        super().__init__(in_features=in_features, tasks=tasks)
        num_levels = _checks.positive_int("num_levels", num_levels)
        num_shared = _checks.non_negative_int("num_shared_experts", num_shared_experts)
        num_own = _checks.non_negative_int("num_task_experts", num_task_experts)
        if num_shared + num_own == 0:
            raise MtlzooError(
                "a level needs experts: num_shared_experts=0 and num_task_experts=0 leave none"
            )
        expert_dims = _checks.layer_dims("expert_dims", expert_dims)
        width = expert_dims[-1]
        self.levels = nn.ModuleList(
            ExtractionNetwork(
                len(self.tasks), in_features if k == 0 else width, num_shared, num_own,
                expert_dims, activation, dropout, last=k == num_levels - 1, norm=norm,
                gate_norm=gate_norm, gate=gate, top_k=top_k, gate_noise=gate_noise,
            )
            for k in range(num_levels)
        )
        self.heads = TaskHeads(self.tasks, width, tower_dims, activation, dropout, norm)

    def represent(self, x: Tensor, task_ids: Sequence[int] | None) -> tuple:
        task_in, shared_in, gate_weights, aux_losses = None, x, {}, []
        last = len(self.levels) - 1
        for k, level in enumerate(self.levels):
            task_in, shared_in, weights, *aux_loss = level(task_in, shared_in,
                                                           task_ids if k == last else None)
            gate_weights[f"level{k + 1}"] = weights
            aux_losses += aux_loss  # top-k gates' load-balancing loss
        if aux_losses:
            return task_in, gate_weights, torch.stack(aux_losses).sum()
        return task_in, gate_weights


@register_model("cgc")
class CGC(PLE):
    """Customized Gate Control: PLE with a single extraction level (no shared gate).

    ``gate_weights["level1"]`` is (b, t, e).
    """

    def __init__(
        self,
        *,
        in_features: int,
        tasks: Sequence[Task],
        num_shared_experts: int = 4,
        num_task_experts: int = 2,
        expert_dims: Sequence[int] = (64,),
        tower_dims: Sequence[int] = (32,),
        dropout: float = 0.0,
        activation: Activation = "relu",
        norm: str | None = None,
        gate_norm: str | None = None,
        gate: str = "softmax",
        top_k: int = 2,
        gate_noise: bool = True,
    ) -> None:
        super().__init__(
            in_features=in_features, tasks=tasks, num_levels=1,
            num_shared_experts=num_shared_experts, num_task_experts=num_task_experts,
            expert_dims=expert_dims, tower_dims=tower_dims, dropout=dropout,
            activation=activation, norm=norm, gate_norm=gate_norm, gate=gate, top_k=top_k,
            gate_noise=gate_noise,
        )
