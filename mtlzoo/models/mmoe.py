"""Multi-gate Mixture-of-Experts (MMoE) and its one-gate baseline (OMoE).

Ma, Zhao, Yi, Chen, Hong, Chi, "Modeling Task Relationships in Multi-task Learning with
Multi-gate Mixture-of-Experts", KDD 2018.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from torch import Tensor

from mtlzoo import _checks
from mtlzoo._registry import register_model
from mtlzoo.errors import MtlzooError
from mtlzoo.layers import SoftmaxGates, StackedMLP, TaskHeads
from mtlzoo.layers.activations import Activation
from mtlzoo.layers.stacked import NORMS
from mtlzoo.layers.topk import NoisyTopKGates
from mtlzoo.models.base import MultiTaskModel
from mtlzoo.tasks import Task

GATES = ("softmax", "topk")


def check_gate(gate: str, norm: str | None, gate_norm: str | None) -> str:
    """``gate`` checked against GATES and the norms it goes with; returns it."""
    gate = _checks.choice("gate", gate, GATES)
    _checks.choice("gate_norm", gate_norm, NORMS)
    if gate == "topk" and norm == "batch":
        # the top-k dispatch runs an expert on the rows routed to it: not the batch
        raise MtlzooError(
            "norm='batch' does not go with gate='topk': the top-k dispatch runs each expert "
            "on the rows routed to it, so its batch statistics would not be the batch's; "
            "use norm='layer' or gate='softmax'"
        )
    if gate == "topk" and gate_norm is not None:
        raise MtlzooError(
            f"gate_norm={gate_norm!r} is for softmax gates, got gate='topk' (its noisy "
            "logits are not normalised); use gate_norm=None or gate='softmax'"
        )
    return gate


@register_model("mmoe")
class MMoE(MultiTaskModel):
    """E experts read the input; task t's softmax gate mixes them for task t's tower.

    experts (b, e, h) in one einsum, gates (b, t, e) in one einsum, mixed by
    ``'bte,beh->bth'``. ``gate_weights["gates"]`` is (b, t, e).

    ``gate="topk"``: noisy top-k gates (Shazeer et al. 2017, ``NoisyTopKGates``); only the
    chosen (row, expert) pairs run (``sparse_mixture``), ``aux_loss`` is their load-balancing
    loss; ``gate_weights`` keep their shape, ``top_k`` non-zero weights a row.

    ``norm`` normalises the experts' and towers' layers, ``gate_norm`` the softmax gates'
    logits (``SoftmaxGates``); torch-rechub's MMoE has both as batch norm.
    """

    one_gate: ClassVar[bool] = False

    def __init__(
        self,
        *,
        in_features: int,
        tasks: Sequence[Task],
        num_experts: int = 8,
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
        num_experts = _checks.positive_int("num_experts", num_experts)
        expert_dims = _checks.layer_dims("expert_dims", expert_dims)
        self.experts = StackedMLP(num_experts, in_features, expert_dims, activation, dropout,
                                  norm)
        num_gates = 1 if self.one_gate else len(self.tasks)
        self.gate = check_gate(gate, norm, gate_norm)
        if gate == "topk":
            self.gates = NoisyTopKGates(num_gates, in_features, num_experts, top_k,
                                        noise=gate_noise)
        else:
            self.gates = SoftmaxGates(num_gates, in_features, num_experts, norm=gate_norm)
        self.heads = TaskHeads(self.tasks, expert_dims[-1], tower_dims, activation, dropout,
                               norm)

    def represent(self, x: Tensor, task_ids: Sequence[int] | None) -> tuple:
        if self.gate == "topk":  # only the chosen experts run, for the rows that chose them
            routing = self.gates(x, None if self.one_gate else task_ids)
            mixed = self.gates.mix(routing, [self.experts], [x])
            if self.one_gate:
                mixed = mixed.expand(-1, self.num_selected(task_ids), -1)
            return mixed, {"gates": routing.weights}, routing.aux_loss
        experts = self.experts(x)
        if self.one_gate:
            mixed, weights = self.gates(x, experts)
            return mixed.expand(-1, self.num_selected(task_ids), -1), {"gates": weights}
        mixed, weights = self.gates(x, experts, task_ids)
        return mixed, {"gates": weights}


@register_model("omoe")
class OMoE(MMoE):
    """One-gate Mixture-of-Experts, the MMoE paper's baseline: one gate serves every task.

    ``gate_weights["gates"]`` is (b, 1, e); the mixture is expanded to (b, t, h).
    """

    one_gate = True
