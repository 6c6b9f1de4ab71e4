"""The single-task baseline: no sharing at all, one independent network per task.

The baseline every MTL paper measures its gain against (the MMoE paper's "Single-Task",
Ma et al., KDD 2018; PLE's "MTL gain" is single-task loss minus multi-task loss, Tang et
al., RecSys 2020). Trained jointly for convenience, its tasks share no parameter, so each
task's result is what training it alone would give (with the same seed and data order).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from mtlzoo import _checks
from mtlzoo._registry import register_model
from mtlzoo.layers import StackedMLP, TaskHeads
from mtlzoo.layers.activations import Activation
from mtlzoo.models.base import MultiTaskModel
from mtlzoo.tasks import Task


@register_model("single_task")
class SingleTask(MultiTaskModel):
    """T independent MLPs, one per task, all reading x, in one einsum a layer
    (``'bd,tdh->bth'``), then the task towers. No parameter serves two tasks."""

    def __init__(
        self,
        *,
        in_features: int,
        tasks: Sequence[Task],
        hidden_dims: Sequence[int] = (64,),
        tower_dims: Sequence[int] = (32,),
        dropout: float = 0.0,
        activation: Activation = "relu",
    ) -> None:
        super().__init__(in_features=in_features, tasks=tasks)
        hidden_dims = _checks.layer_dims("hidden_dims", hidden_dims)
        self.networks = StackedMLP(len(self.tasks), in_features, hidden_dims, activation, dropout)
        self.heads = TaskHeads(self.tasks, hidden_dims[-1], tower_dims, activation, dropout)

    def represent(self, x: Tensor, task_ids: Sequence[int] | None) -> tuple[Tensor, dict]:
        return self.networks(x, task_ids), {}
