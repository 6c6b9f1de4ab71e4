"""Sluice networks.

Ruder, Bingel, Augenstein, Søgaard, "Latent Multi-task Architecture Learning", AAAI 2019
(arXiv:1705.08142, first titled "Sluice networks: Learning what to share between loosely
related tasks").
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import Tensor, nn

from mtlzoo import _checks
from mtlzoo._registry import register_model
from mtlzoo.errors import MtlzooError
from mtlzoo.layers import StackedMLP, TaskHeads
from mtlzoo.layers.activations import Activation
from mtlzoo.layers.sluice import SubspaceStitchUnit
from mtlzoo.models.base import MultiTaskModel
from mtlzoo.tasks import Task


@register_model("sluice")
class Sluice(MultiTaskModel):
    """One MLP column per task, every layer's output split into ``num_subspaces`` m
    subspaces; after each layer a ``SubspaceStitchUnit`` (alpha, (T*m, T*m)) mixes all
    tasks' subspaces. Task t's representation is ``sum_l betas[l, t] * h^l_t`` over the
    stitched outputs of every layer, so all ``column_dims`` must be equal.

    ``aux_loss = orthogonality * sum_{t, l, i<j} |G_i^T G_j / b|_F^2``, G_i the (b, H/m)
    activations of subspace i of layer l's output (before the stitch) in column t: the
    paper's subspace orthogonality term with the Gram matrices averaged over the batch.
    """

    def __init__(
        self,
        *,
        in_features: int,
        tasks: Sequence[Task],
        column_dims: Sequence[int] = (64, 64),
        tower_dims: Sequence[int] = (32,),
        num_subspaces: int = 2,
        orthogonality: float = 1e-2,
        dropout: float = 0.0,
        activation: Activation = "relu",
        norm: str | None = None,
    ) -> None:
        super().__init__(in_features=in_features, tasks=tasks)
        column_dims = _checks.layer_dims("column_dims", column_dims)
        self.num_subspaces = _checks.positive_int("num_subspaces", num_subspaces)
        self.orthogonality = _checks.real("orthogonality", orthogonality)
        if len(set(column_dims)) > 1:
            raise MtlzooError(
                f"sluice's column_dims must all be one width (every layer's output is added "
                f"into the representation), got {column_dims}"
            )
        if column_dims[0] % num_subspaces:
            raise MtlzooError(
                f"sluice's column width {column_dims[0]} does not split into num_subspaces="
                f"{num_subspaces} subspaces of equal width"
            )
        num_tasks, num_layers = len(self.tasks), len(column_dims)
        widths = (in_features, *column_dims)
        self.layers = nn.ModuleList(
            StackedMLP(num_tasks, n_in, (n_out,), activation, dropout, norm)
            for n_in, n_out in pairwise(widths)
        )
        self.stitches = nn.ModuleList(
            SubspaceStitchUnit(num_tasks, num_subspaces) for _ in column_dims
        )
        self.betas = nn.Parameter(_last_layer_heavy(num_layers, num_tasks))
        self.heads = TaskHeads(self.tasks, column_dims[-1], tower_dims, activation, dropout,
                               norm)

    def represent(
        self, x: Tensor, task_ids: Sequence[int] | None
    ) -> tuple[Tensor, dict, Tensor]:
        h, outputs, overlap = x, [], x.new_zeros(())
        for layer, stitch in zip(self.layers, self.stitches, strict=True):
            h = layer(h)
            if self.orthogonality:
                overlap = overlap + subspace_overlap(h, self.num_subspaces)
            h = stitch(h)
            outputs.append(h)
        reps = torch.einsum("lt,lbth->bth", self.betas, torch.stack(outputs))
        reps = reps if task_ids is None else reps[:, task_ids]
        return reps, {}, self.orthogonality * overlap


def _last_layer_heavy(num_layers: int, num_tasks: int) -> Tensor:
    """Each task's betas: 0.9 on the last layer, 0.1 shared by the others (1 with one layer),
    the authors' "imbalanced" initialisation of the layer-stitch weights."""
    if num_layers == 1:
        return torch.ones(1, num_tasks)
    betas = torch.full((num_layers, num_tasks), 0.1 / (num_layers - 1))
    betas[-1] = 0.9
    return betas


def subspace_overlap(h: Tensor, num_subspaces: int) -> Tensor:
    """``sum_t sum_{i<j} |G_{t,i}^T G_{t,j} / b|_F^2`` for h (b, T, H), G_{t,i} (b, H/m) the
    columns of subspace i of task t: every pair of subspaces in one batched einsum,
    ``"btpw,btpv->tpwv"`` (p the pairs). 0 with one subspace or an empty batch."""
    rows = h.shape[0]
    subspaces = h.unflatten(-1, (num_subspaces, -1))  # (b, T, m, H/m)
    first, second = torch.triu_indices(num_subspaces, num_subspaces, 1, device=h.device)
    cross = torch.einsum("btpw,btpv->tpwv", subspaces[:, :, first], subspaces[:, :, second])
    return cross.pow(2).sum() / torch.sym_max(rows, 1) ** 2
