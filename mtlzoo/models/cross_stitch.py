"""Cross-stitch networks.

Misra, Shrivastava, Gupta, Hebert, "Cross-stitch Networks for Multi-task Learning", CVPR 2016.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from torch import Tensor, nn

from mtlzoo import _checks
from mtlzoo._registry import register_model
from mtlzoo.layers import CrossStitchUnit, StackedMLP, TaskHeads
from mtlzoo.layers.activations import Activation
from mtlzoo.models.base import MultiTaskModel
from mtlzoo.tasks import Task


@register_model("cross_stitch")
class CrossStitch(MultiTaskModel):
    """One MLP column per task; a learned T x T cross-stitch unit after every hidden layer.

    Layer l: ``h_t = act(W_t^l h_t + b_t^l)`` for all t in one einsum (the first layer reads
    x), then ``h_t <- sum_s alpha^l[s, t] h_s``. The units start near identity.
    """

    def __init__(
        self,
        *,
        in_features: int,
        tasks: Sequence[Task],
        column_dims: Sequence[int] = (64,),
        tower_dims: Sequence[int] = (32,),
        dropout: float = 0.0,
        activation: Activation = "relu",
        norm: str | None = None,
    ) -> None:
        super().__init__(in_features=in_features, tasks=tasks)
        widths = (in_features, *_checks.layer_dims("column_dims", column_dims))
        num_tasks = len(self.tasks)
        self.layers = nn.ModuleList(
            StackedMLP(num_tasks, n_in, (n_out,), activation, dropout, norm)
            for n_in, n_out in pairwise(widths)
        )
        self.stitches = nn.ModuleList(CrossStitchUnit(num_tasks) for _ in widths[1:])
        self.heads = TaskHeads(self.tasks, widths[-1], tower_dims, activation, dropout, norm)

    def represent(self, x: Tensor, task_ids: Sequence[int] | None) -> tuple[Tensor, dict]:
        h = x
        for layer, stitch in zip(self.layers, self.stitches, strict=True):
            h = stitch(layer(h))
        return (h if task_ids is None else h[:, task_ids]), {}
