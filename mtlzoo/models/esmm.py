"""Entire Space Multi-task Model (ESMM): conversion learnt over every impression.

Ma, Zhao, Huang, Wang, Hu, Zhu, Gai, "Entire Space Multi-Task Model: An Effective Approach for
Estimating Post-Click Conversion Rate", SIGIR 2018.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlzoo import _checks
from mtlzoo._registry import register_model
from mtlzoo.errors import MtlzooError, suggest
from mtlzoo.layers import StackedMLP, TaskHeads
from mtlzoo.layers.activations import Activation
from mtlzoo.models.base import ModelOutput, MultiTaskModel
from mtlzoo.tasks import Task


def funnel_logits(head_logits: Tensor) -> Tensor:
    """``logit(prod_{s <= t} sigmoid(head_logits[:, s]))`` for every stage t, (b, f) -> (b, f).

    In log space, stable for any logits: ``log P_t`` is a cumulative sum of log-sigmoids and
    ``log(1 - P_t) = log sum_{s <= t} P_{s-1} (1 - p_s)`` (the funnel left at stage s) a
    ``logcumsumexp``, so neither ``P_t`` near 1 nor near 0 loses digits. The first stage's
    logit is returned as it is. Computed in float32 at least.
    """
    work = head_logits.to(torch.promote_types(head_logits.dtype, torch.float32))
    log_passed = F.logsigmoid(work).cumsum(dim=1)  # log P_t
    log_before = F.pad(log_passed[:, :-1], (1, 0))  # log P_{t-1}, log P_0 = 0
    log_left = torch.logcumsumexp(log_before + F.logsigmoid(-work), dim=1)  # log(1 - P_t)
    joint = torch.cat([work[:, :1], (log_passed - log_left)[:, 1:]], dim=1)
    return joint.to(head_logits.dtype)


@register_model("esmm")
class ESMM(MultiTaskModel):
    """Task towers read the shared input (or an optional shared bottom); along the funnel
    (impression -> click -> conversion, binary tasks) each returned probability is the
    product of the towers' probabilities so far: pCTCVR = pCTR x pCVR.

    ``funnel``: the funnel's binary task names in order; None (default) means every binary
    task, in order. The logit returned for the funnel's t-th task is
    ``logit(prod_{s <= t} sigmoid(head_s))`` (``relate_logits``), so a BCE on the clicked and
    converted label trains the conversion tower through the product only; the towers' own
    logits (pCTR, pCVR) are ``conditional_logits(x)``. Other tasks are ordinary heads.
    Towers ``'bth,thk->btk'`` (one matmul a layer). ``gate_weights`` is {}, ``aux_loss`` 0.
    """

    def __init__(
        self,
        *,
        in_features: int,
        tasks: Sequence[Task],
        funnel: Sequence[str] | None = None,
        bottom_dims: Sequence[int] = (),
        tower_dims: Sequence[int] = (64, 32),
        dropout: float = 0.0,
        activation: Activation = "relu",
        norm: str | None = None,
    ) -> None:
        super().__init__(in_features=in_features, tasks=tasks)
        self.funnel = self._check_funnel(funnel)
        bottom_dims = _checks.layer_dims("bottom_dims", bottom_dims, allow_empty=True)
        self.bottom = (
            StackedMLP(1, in_features, bottom_dims, activation, dropout, norm) if bottom_dims
            else None
        )
        width = bottom_dims[-1] if bottom_dims else in_features
        self.heads = TaskHeads(self.tasks, width, tower_dims, activation, dropout, norm)

    def represent(self, x: Tensor, task_ids: Sequence[int] | None) -> tuple[Tensor, dict]:
        shared = x.unsqueeze(1) if self.bottom is None else self.bottom(x)  # (b, 1, h)
        return shared.expand(-1, self.num_selected(task_ids), -1), {}

    def relate_logits(
        self, logits: dict[str, Tensor], aux_loss: Tensor, task_ids: Sequence[int] | None
    ) -> tuple[dict[str, Tensor], Tensor]:
        """The funnel's tasks in ``logits`` (with all their earlier stages: ``forward`` runs
        those) get their joint logits; the first stage and other tasks keep theirs."""
        reached = [i for i, name in enumerate(self.funnel) if name in logits]
        if not reached or max(reached) == 0:
            return logits, aux_loss
        stages = self.funnel[: max(reached) + 1]
        joint = funnel_logits(torch.cat([logits[name] for name in stages], dim=1))
        related = dict(logits)
        related.update({name: joint[:, i : i + 1] for i, name in enumerate(stages)
                        if name in logits and i > 0})
        return related, aux_loss

    def forward(self, x: Tensor, tasks: str | Sequence[str] | None = None) -> ModelOutput:
        """Logits for every task, or only for ``tasks``: their heads run, and those of the
        funnel's earlier stages that their probabilities multiply."""
        if tasks is None:
            return super().forward(x)
        requested = [self.task_names[t] for t in self._task_ids(tasks)]
        stages = [self.funnel.index(name) for name in requested if name in self.funnel]
        last = max(stages) if stages else 0  # (no max(default=): torch.compile refuses it)
        needed = requested + [name for name in self.funnel[:last] if name not in requested]
        out = super().forward(x, needed)
        return ModelOutput({name: out.logits[name] for name in requested}, out.gate_weights,
                           out.aux_loss)

    def conditional_logits(
        self, x: Tensor, tasks: str | Sequence[str] | None = None
    ) -> dict[str, Tensor]:
        """Each head's own logit, before the funnel's product: for the funnel's t-th task the
        rate given the earlier stages (pCVR: conversion given a click), for the first stage
        and other tasks what ``forward`` returns. Only ``tasks``' heads run when given."""
        if self.encoder is not None:
            x = self.encoder(x)
        self._check_input(x)
        task_ids = None if tasks is None else self._task_ids(tasks)
        reps, _ = self.represent(x, task_ids)
        return self.heads(reps, task_ids)

    def _check_funnel(self, funnel: object) -> tuple[str, ...]:
        if funnel is None:
            return tuple(task.name for task in self.tasks if task.kind == "binary")
        if isinstance(funnel, str) or not isinstance(funnel, Sequence):
            raise MtlzooError(
                f"funnel must be a sequence of binary task names, first stage first "
                f"(impression -> click -> conversion), got {funnel!r}"
            )
        names = list(funnel)
        if not names:
            raise MtlzooError("funnel must name at least one binary task, got an empty "
                              "sequence (None: every binary task, in order)")
        for name in names:
            if name not in self.task_names:
                raise MtlzooError(
                    f"funnel: unknown task {name!r}.{suggest(str(name), self.task_names)} "
                    f"This model's tasks: {', '.join(self.task_names)}"
                )
            kind = self.tasks[self.task_names.index(name)].kind
            if kind != "binary":
                raise MtlzooError(
                    f"funnel: task {name!r} is {kind}, not binary; the funnel multiplies "
                    f"its stages' probabilities"
                )
        duplicates = _checks.repeated(names)
        if duplicates:
            raise MtlzooError(f"funnel names {duplicates} more than once")
        return tuple(names)
