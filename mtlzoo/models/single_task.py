"""The single-task baseline: no sharing at all, one independent network per task.

The baseline every MTL paper measures its gain against (the MMoE paper's "Single-Task",
Ma et al., KDD 2018; PLE's "MTL gain" is single-task loss minus multi-task loss, Tang et
al., RecSys 2020). Trained jointly for convenience, its tasks share no parameter, so each
task's result is what training it alone would give (with the same seed and data order).

That holds with an encoder too: ``set_encoder`` gives each task its own deep copy of the
encoder (``self.encoders``, one per task), where the other architectures share one. The
copies start from the given encoder's weights (all identical, so each task starts as the
multi-task model's encoder would) and are trained apart; the given encoder itself is only
the template and is not trained. The copies count as task parameters, not shared ones.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtlzoo import _checks
from mtlzoo._registry import register_model
from mtlzoo.layers import StackedMLP, TaskHeads
from mtlzoo.layers.activations import Activation
from mtlzoo.models.base import ModelOutput, MultiTaskModel
from mtlzoo.tasks import Task


@register_model("single_task")
class SingleTask(MultiTaskModel):
    """T independent MLPs, one per task, all reading x, in one einsum a layer
    (``'bd,tdh->bth'``), then the task towers. No parameter serves two tasks.

    With an encoder (``set_encoder``, or ``create_model(..., encoder=...)``), each task
    reads the raw input through its own deep copy of it, ``self.encoders[t]``: the copies
    start equal to the given encoder (which is not itself used or trained), the encoder
    forward is one call per selected task (``tasks=`` runs only those tasks' copies), and
    the T encoded inputs go through the stacked networks together (``'btd,tdh->bth'``).
    ``self.encoder`` stays None: there is no shared representation (MGDA-UB then falls back
    to exact MGDA). ``shared_parameters()`` holds the stacked networks only (each task's
    gradient lives in its own slice of them, as without an encoder); the encoder copies are
    in ``task_parameters()`` with the heads.
    """

    def __init__(
        self,
        *,
        in_features: int,
        tasks: Sequence[Task],
        hidden_dims: Sequence[int] = (64,),
        tower_dims: Sequence[int] = (32,),
        dropout: float = 0.0,
        activation: Activation = "relu",
        norm: str | None = None,
    ) -> None:
        super().__init__(in_features=in_features, tasks=tasks)
        hidden_dims = _checks.layer_dims("hidden_dims", hidden_dims)
        self.networks = StackedMLP(len(self.tasks), in_features, hidden_dims, activation, dropout,
                                   norm)
        self.heads = TaskHeads(self.tasks, hidden_dims[-1], tower_dims, activation, dropout,
                               norm)
        self.encoders: nn.ModuleList | None = None

    def set_encoder(self, encoder: nn.Module) -> SingleTask:
        """Give each task its own deep copy of ``encoder`` (its ``out_features`` must be
        ``in_features``); the copies start from ``encoder``'s current weights and share
        nothing with it or with each other. Returns the model."""
        super().set_encoder(encoder)  # the checks
        self.encoder = None
        self.encoders = nn.ModuleList(copy.deepcopy(encoder) for _ in self.tasks)
        return self

    def represent(self, x: Tensor, task_ids: Sequence[int] | None) -> tuple[Tensor, dict]:
        return self.networks(x, task_ids), {}

    def forward(self, x, tasks: str | Sequence[str] | None = None) -> ModelOutput:
        """Logits for every task, or only for ``tasks`` (their encoders, networks and heads
        alone run)."""
        if self.encoders is None:
            return super().forward(x, tasks)
        task_ids = None if tasks is None else self._task_ids(tasks)
        ids = range(len(self.tasks)) if task_ids is None else task_ids
        encoded = [self.encoders[t](x) for t in ids]
        for features in encoded:
            self._check_input(features)
        # task t's network reads its own encoder's output: 'btd,tdh->bth' in the first layer
        reps = self.networks(torch.stack(encoded, dim=1), task_ids)
        return ModelOutput(self.heads(reps, task_ids), {}, encoded[0].new_zeros(()))

    def shared_parameters(self) -> list[nn.Parameter]:
        """The stacked networks (each task's gradient lives in its own slice); never an
        encoder copy."""
        return [p for name, p in self.named_parameters()
                if not name.startswith(("heads.", "encoders."))]

    def task_parameters(self) -> list[nn.Parameter]:
        """The task heads' parameters, then the per-task encoder copies' (if any)."""
        copies = [] if self.encoders is None else list(self.encoders.parameters())
        return [*self.heads.parameters(), *copies]
