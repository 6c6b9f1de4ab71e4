"""TaskHeads: every task's tower and output layer, stacked over tasks.

Axes: b batch, t task, h representation width, k tower width, o output width.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from mtlzoo import _checks
from mtlzoo.layers.activations import Activation
from mtlzoo.layers.axes import Spec, einsum_specs
from mtlzoo.layers.stacked import Norm, StackedLinear, StackedMLP
from mtlzoo.tasks import Task


@einsum_specs(
    Spec("b t h, t h k -> b t k", "each tower layer (a later layer's h is the last one's k)",
         "StackedMLP's baddbmm"),
    Spec("b t k, t k o -> b t o", "output layer, o the widest task's (k is h with no towers)",
         "StackedLinear's baddbmm"),
)
class TaskHeads(nn.Module):
    """Towers ``"b t h, t h k -> b t k"`` (one matmul a layer), then one output layer
    ``"b t k, t k o -> b t o"``.

    The output layer is padded to the widest task (o = max out_features) and sliced per task,
    so a binary task beside a 4-class one owns 3 output columns that never train.
    ``forward(reps (b, t, h), task_ids)`` returns ``{task name: (b, out_features)}`` for the
    tasks in ``task_ids`` (all when None); ``reps`` then holds just those tasks, in that order.
    ``norm`` (None, "batch" or "layer") normalises every tower layer before its activation
    (``StackedMLP``'s ``norm``); ``task_ids`` then read and update only those towers'
    statistics. The output layer has none.
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        in_features: int,
        tower_dims: Sequence[int] = (),
        activation: Activation = "relu",
        dropout: float = 0.0,
        norm: Norm = None,
    ) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        tower_dims = _checks.layer_dims("tower_dims", tower_dims, allow_empty=True)
        self.towers = StackedMLP(len(tasks), in_features, tower_dims, activation, dropout, norm)
        widest = max(task.out_features for task in tasks)
        self.output = StackedLinear(len(tasks), self.towers.out_features, widest)

    def forward(self, reps: Tensor, task_ids: Sequence[int] | None = None) -> dict[str, Tensor]:
        out = self.output(self.towers(reps, task_ids), task_ids)
        selected = range(len(self.tasks)) if task_ids is None else task_ids
        return {
            self.tasks[t].name: out[:, i, : self.tasks[t].out_features]
            for i, t in enumerate(selected)
        }
