"""DSelect-k: MMoE's experts, each task's softmax gate replaced by a sparse DSelect-k gate.

Hazimeh, Zhao, Chowdhery, Sathiamoorthy, Chen, Mazumder, Hong, Chi, "DSelect-k:
Differentiable Selection in the Mixture of Experts with Applications to Multi-Task Learning",
NeurIPS 2021.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from mtlzoo import _checks
from mtlzoo._registry import register_model
from mtlzoo.layers import DSelectGates, StackedMLP, TaskHeads
from mtlzoo.layers.activations import Activation
from mtlzoo.models.base import MultiTaskModel
from mtlzoo.tasks import Task


@register_model("dselect_k")
class DSelectK(MultiTaskModel):
    """E experts read the input; task t's DSelect-k gate, per example, picks at most k of
    them for task t's tower.

    experts (b, e, h) in one einsum; every task's k selectors' logits in one
    ``StackedLinear``; gates (b, t, e) by ``'btc,btce->bte'``; mixed by ``'bte,beh->bth'``
    (``DSelectGates``). ``gate_weights["gates"]`` is (b, t, e); ``aux_loss`` is the gates'
    regulariser (``entropy_reg`` times the selectors' entropy, plus, when E is not a power
    of two, the term that keeps selectors on real experts).
    """

    def __init__(
        self,
        *,
        in_features: int,
        tasks: Sequence[Task],
        num_experts: int = 8,
        k: int = 2,
        gamma: float = 1.0,
        entropy_reg: float = 1e-6,
        expert_dims: Sequence[int] = (64,),
        tower_dims: Sequence[int] = (32,),
        dropout: float = 0.0,
        activation: Activation = "relu",
        norm: str | None = None,
    ) -> None:
        super().__init__(in_features=in_features, tasks=tasks)
        num_experts = _checks.positive_int("num_experts", num_experts)
        k = _checks.positive_int("k", k)
        gamma = _checks.real("gamma", gamma, positive=True)
        entropy_reg = _checks.real("entropy_reg", entropy_reg)
        expert_dims = _checks.layer_dims("expert_dims", expert_dims)
        self.experts = StackedMLP(num_experts, in_features, expert_dims, activation, dropout,
                                  norm)
        self.gates = DSelectGates(len(self.tasks), in_features, num_experts, k, gamma,
                                  entropy_reg)
        self.heads = TaskHeads(self.tasks, expert_dims[-1], tower_dims, activation, dropout,
                               norm)

    def represent(
        self, x: Tensor, task_ids: Sequence[int] | None
    ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        mixed, weights, regulariser = self.gates(x, self.experts(x), task_ids)
        return mixed, {"gates": weights}, regulariser
