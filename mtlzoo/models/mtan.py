"""Multi-Task Attention Network (MTAN), for dense features.

Liu, Johns, Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019.

The paper's shared network is a SegNet whose blocks j hold a first convolution, giving
u^(j), then more giving the block's output p^(j). Task i's attention module at block j reads
``[u^(j); f^(j)(a_i^(j-1))]`` (u^(1) alone at the first block) through g_i^(j) (1x1
convolution, batch norm, ReLU) and h_i^(j) (1x1 convolution, batch norm, sigmoid), a soft
mask that multiplies p^(j) element-wise: ``a_i^(j) = h_i^(j)(g_i^(j)(...)) * p^(j)``.
f^(j), a 3x3 convolution shared by the tasks, brings task i's attended features of block
j-1 to block j's width. On feature vectors a 1x1 convolution is a linear layer, so here
block j is two linear layers of width h_j (u^(j), then p^(j)); g_i^(j), h_i^(j) and f^(j)
are linear layers (no batch norm).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import Tensor, nn

from mtlzoo import _checks
from mtlzoo._registry import register_model
from mtlzoo.layers import StackedLinear, StackedMLP, TaskHeads
from mtlzoo.layers.activations import Activation
from mtlzoo.models.base import MultiTaskModel
from mtlzoo.tasks import Task


@register_model("mtan")
class MTAN(MultiTaskModel):
    """A shared network of blocks; at each block every task's attention module masks the
    block's output with a sigmoid mask.

    Block j: ``u = act(W_u p^(j-1) + b_u)``, ``p^(j) = act(W_p u + b_p)`` (p^(0) = x), each a
    ``StackedMLP(1, ...)`` like shared-bottom's. The attention modules of all tasks are one
    ``StackedMLP`` (g^(j)) and one ``StackedLinear`` (h^(j)) with a group per task: at the
    first block they read u (b, h), ``"b d, g d h -> b g h"``; later they read
    ``[u; f^(j)(a^(j-1))]`` (b, t, 2h), ``"b g d, g d h -> b g h"``. f^(j), shared, reads the
    (b * t) rows of a^(j-1) in one matmul. The towers read a^(L) (b, t, h). ``gate_weights``
    is {}: the masks weigh features, not experts.
    """

    def __init__(
        self,
        *,
        in_features: int,
        tasks: Sequence[Task],
        shared_dims: Sequence[int] = (64, 64),
        tower_dims: Sequence[int] = (32,),
        dropout: float = 0.0,
        activation: Activation = "relu",
        norm: str | None = None,
    ) -> None:
        super().__init__(in_features=in_features, tasks=tasks)
        shared_dims = _checks.layer_dims("shared_dims", shared_dims)
        num_tasks = len(self.tasks)
        self.intermediate = nn.ModuleList(  # u^(j)
            StackedMLP(1, n_in, (n_out,), activation, dropout, norm)
            for n_in, n_out in pairwise((in_features, *shared_dims))
        )
        self.block_outputs = nn.ModuleList(  # p^(j)
            StackedMLP(1, width, (width,), activation, dropout, norm) for width in shared_dims
        )
        self.attention = nn.ModuleList(  # g^(j), every task's
            StackedMLP(num_tasks, width if j == 0 else 2 * width, (width,), activation, norm=norm)
            for j, width in enumerate(shared_dims)
        )
        self.masks = nn.ModuleList(  # h^(j), every task's, before the sigmoid
            StackedLinear(num_tasks, width, width) for width in shared_dims
        )
        self.extractors = nn.ModuleList(  # f^(j), j >= 2, shared by the tasks
            StackedMLP(1, n_in, (n_out,), activation, norm=norm)
            for n_in, n_out in pairwise(shared_dims)
        )
        self.heads = TaskHeads(self.tasks, shared_dims[-1], tower_dims, activation, dropout,
                               norm)

    def represent(self, x: Tensor, task_ids: Sequence[int] | None) -> tuple[Tensor, dict]:
        shared, attended = x, None
        for j, (first, second) in enumerate(zip(self.intermediate, self.block_outputs,
                                                strict=True)):
            u = first(shared)[:, 0]  # (b, h)
            shared = second(u)[:, 0]  # p^(j), (b, h)
            if attended is None:
                attention_in = u
            else:  # f^(j) on every task's rows at once, then [u; f] per task
                batch, tasks, width = attended.shape
                extracted = self.extractors[j - 1](attended.reshape(-1, width))
                extracted = extracted.view(batch, tasks, extracted.shape[-1])
                attention_in = torch.cat([u.unsqueeze(1).expand_as(extracted), extracted], -1)
            mask = torch.sigmoid(self.masks[j](self.attention[j](attention_in, task_ids),
                                               task_ids))
            attended = mask * shared.unsqueeze(1)  # (b, t, h)
        return attended, {}
