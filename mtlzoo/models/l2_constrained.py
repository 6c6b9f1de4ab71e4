"""Soft parameter sharing by an L2 penalty between task columns.

Duong, Cohn, Bird, Cook, "Low Resource Dependency Parsing: Cross-lingual Parameter Sharing
in a Neural Network Parser", ACL 2015; the "L2-Constrained" baseline of Ma et al., "Modeling
Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts", KDD 2018.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from mtlzoo import _checks
from mtlzoo._registry import register_model
from mtlzoo.layers import TaskHeads
from mtlzoo.layers.activations import Activation
from mtlzoo.layers.tied import TiedMLP
from mtlzoo.models.base import MultiTaskModel
from mtlzoo.tasks import Task


@register_model("l2_constrained")
class L2Constrained(MultiTaskModel):
    """One MLP column per task, the T columns one ``TiedMLP`` (one matmul a layer, no
    mixing), tied by ``aux_loss = penalty * sum_{s<t} |theta_s - theta_t|^2`` over the
    columns' weights and biases (computed as ``T * sum_t |theta_t - mean theta|^2``).

    ``penalty`` is MMoE's alpha in ``alpha |theta_1 - theta_2|^2`` (Duong et al.'s lambda);
    both papers tune it. 0 gives independent columns (single-task); a large one pulls the
    columns towards one shared bottom (with 0, ``aux_loss`` is a plain zero, no graph). With
    ``tasks=`` only the selected columns run; the penalty always covers all of them.
    """

    def __init__(
        self,
        *,
        in_features: int,
        tasks: Sequence[Task],
        column_dims: Sequence[int] = (64,),
        tower_dims: Sequence[int] = (32,),
        penalty: float = 1e-3,
        dropout: float = 0.0,
        activation: Activation = "relu",
        norm: str | None = None,
    ) -> None:
        super().__init__(in_features=in_features, tasks=tasks)
        column_dims = _checks.layer_dims("column_dims", column_dims)
        self.penalty = _checks.real("penalty", penalty)
        self.columns = TiedMLP(len(self.tasks), in_features, column_dims, activation, dropout,
                               norm)
        self.heads = TaskHeads(self.tasks, column_dims[-1], tower_dims, activation, dropout,
                               norm)

    def represent(
        self, x: Tensor, task_ids: Sequence[int] | None
    ) -> tuple[Tensor, dict] | tuple[Tensor, dict, Tensor]:
        reps = self.columns(x, task_ids)
        if self.penalty == 0:  # no aux_loss graph at all (DDP trains that)
            return reps, {}
        return reps, {}, self.penalty * self.columns.pairwise_squared_distance()
