"""Adaptive Information Transfer Multi-task (AITM).

Xi, Chen, Yan, Zhang, Zhu, Zhuang, Chen, "Modeling the Sequential Dependence among Audience
Multi-step Conversions with Multi-task Learning in Targeted Display Advertising", KDD 2021.

The tasks are steps of a funnel (impression -> click -> purchase), in the order of ``tasks``.
Task t's tower reads x: q_t. The first task's representation is its tower's, z_1 = q_1; from
then on task t receives ``p_{t-1} = info_{t-1}(z_{t-1})`` and its Adaptive Information
Transfer (AIT) module attends over u in {p_{t-1}, q_t}:
``w_u = softmax_u(<h1(u), h2(u)> / sqrt(k))``, ``z_t = sum_u w_u h3(u)``. The behavioural
expectation calibrator penalises a later step predicted more likely than the one before it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from mtlzoo import _checks
from mtlzoo._registry import register_model
from mtlzoo.layers import StackedLinear, StackedMLP, TaskHeads
from mtlzoo.layers.activations import Activation
from mtlzoo.models.base import MultiTaskModel
from mtlzoo.tasks import Task


@register_model("aitm")
class AITM(MultiTaskModel):
    """Task towers q_t, the information transferred along the task chain, and the AIT module.

    The towers are one ``StackedMLP(T, D, task_tower_dims)`` (``"b d, g d h -> b g h"``);
    the info layers (linear k -> k, activation, dropout), one per transfer, are one
    ``StackedMLP(T - 1, k, (k,))``; the AIT module's bias-free projections h1, h2, h3, shared
    by every transfer as in the authors' code, are one ``StackedLinear(1, k, 3k)``. The chain
    is sequential (z_t needs z_{t-1}), so the T - 1 transfers are a loop; the towers, and the
    projections and scores of every q_t, are computed once before it. With ``tasks=``, the
    towers and transfers up to the last selected task run.

    ``gate_weights["transfer"]`` is (b, n, 2): for each selected task after the first, its
    AIT weights over [p_{t-1}, q_t] (absent when there is none). ``aux_loss`` is the
    calibrator, ``calibration * mean_rows sum_t max(sigmoid(y_t) - sigmoid(y_{t-1}), 0)``
    over consecutive binary tasks whose logits were computed.
    """

    def __init__(
        self,
        *,
        in_features: int,
        tasks: Sequence[Task],
        task_tower_dims: Sequence[int] = (64, 32),
        tower_dims: Sequence[int] = (),
        calibration: float = 0.6,
        dropout: float = 0.0,
        activation: Activation = "relu",
        norm: str | None = None,
    ) -> None:
        super().__init__(in_features=in_features, tasks=tasks)
        task_tower_dims = _checks.layer_dims("task_tower_dims", task_tower_dims)
        self.calibration = _checks.real("calibration", calibration)
        num_tasks, width = len(self.tasks), task_tower_dims[-1]
        self.towers = StackedMLP(num_tasks, in_features, task_tower_dims, activation, dropout,
                                 norm)
        self.info: StackedMLP | None = None
        self.projections: StackedLinear | None = None
        if num_tasks > 1:
            self.info = StackedMLP(num_tasks - 1, width, (width,), activation, dropout, norm)
            self.projections = StackedLinear(1, width, 3 * width, bias=False)
        self.heads = TaskHeads(self.tasks, width, tower_dims, activation, dropout, norm)
        # (t - 1, t) for consecutive binary tasks: the calibrator's pairs
        self.calibrated_pairs = tuple(
            (t - 1, t) for t in range(1, num_tasks)
            if self.tasks[t - 1].kind == self.tasks[t].kind == "binary"
        )

    def represent(self, x: Tensor, task_ids: Sequence[int] | None) -> tuple[Tensor, dict]:
        num_tasks = len(self.tasks)
        last = num_tasks - 1 if task_ids is None else max(task_ids)
        own = self.towers(x, None if last == num_tasks - 1 else list(range(last + 1)))
        chain, transfer = [own[:, 0]], []
        if last > 0:
            batch, _, width = own.shape
            scale = math.sqrt(width)
            # h1, h2, h3 of q_2 .. q_last in one matmul, and their scores <h1, h2> / sqrt(k)
            projected = self.projections(own[:, 1:].reshape(-1, width)).view(batch, last, 3 * width)
            own_h1, own_h2, own_h3 = projected.split(width, dim=-1)
            own_scores = (own_h1 * own_h2).sum(-1) / scale  # (b, last)
            for t in range(1, last + 1):
                info = self.info(chain[-1], [t - 1])[:, 0]  # p_{t-1} (b, k)
                info_h1, info_h2, info_h3 = self.projections(info)[:, 0].split(width, dim=-1)
                info_score = (info_h1 * info_h2).sum(-1) / scale
                weights = torch.softmax(torch.stack([info_score, own_scores[:, t - 1]], -1), -1)
                chain.append(weights[:, :1] * info_h3 + weights[:, 1:] * own_h3[:, t - 1])
                transfer.append(weights)
        reps = torch.stack(chain, dim=1)  # z_1 .. z_last (b, last + 1, k)
        rows = range(1, last + 1) if task_ids is None else [t for t in task_ids if t > 0]
        gate_weights = {}
        if rows:
            gate_weights["transfer"] = torch.stack([transfer[t - 1] for t in rows], dim=1)
        return (reps if task_ids is None else reps[:, task_ids]), gate_weights

    def relate_logits(
        self, logits: dict[str, Tensor], aux_loss: Tensor, task_ids: Sequence[int] | None
    ) -> tuple[dict[str, Tensor], Tensor]:
        """Adds the calibrator over the consecutive binary tasks whose logits were computed
        (nothing, not even a zero with a gradient, with ``calibration=0``: DDP trains that)."""
        pairs = [(self.task_names[a], self.task_names[b]) for a, b in self.calibrated_pairs
                 if self.task_names[a] in logits and self.task_names[b] in logits]
        if not pairs or self.calibration == 0:
            return logits, aux_loss
        earlier = torch.sigmoid(torch.cat([logits[a] for a, _ in pairs], dim=1))  # (b, pairs)
        later = torch.sigmoid(torch.cat([logits[b] for _, b in pairs], dim=1))
        excess = torch.relu(later - earlier).sum() / max(later.shape[0], 1)  # 0 for no rows
        return logits, aux_loss + self.calibration * excess
