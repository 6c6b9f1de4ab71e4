"""Hard parameter sharing (shared-bottom).

Caruana, "Multitask Learning", Machine Learning 28, 1997.
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


@register_model("shared_bottom", aliases=("hard_sharing",))
class SharedBottom(MultiTaskModel):
    """One bottom MLP shared by every task, then one tower per task.

    ``h = bottom(x)`` (b, h), expanded to (b, t, h) for the task heads.
    """

    def __init__(
        self,
        *,
        in_features: int,
        tasks: Sequence[Task],
        bottom_dims: Sequence[int] = (64,),
        tower_dims: Sequence[int] = (32,),
        dropout: float = 0.0,
        activation: Activation = "relu",
        norm: str | None = None,
    ) -> None:
        super().__init__(in_features=in_features, tasks=tasks)
        bottom_dims = _checks.layer_dims("bottom_dims", bottom_dims)
        self.bottom = StackedMLP(1, in_features, bottom_dims, activation, dropout, norm)
        self.heads = TaskHeads(self.tasks, bottom_dims[-1], tower_dims, activation, dropout,
                               norm)

    def represent(self, x: Tensor, task_ids: Sequence[int] | None) -> tuple[Tensor, dict]:
        shared = self.bottom(x)  # (b, 1, h)
        return shared.expand(-1, self.num_selected(task_ids), -1), {}
