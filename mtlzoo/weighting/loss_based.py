"""Methods that only scale the losses: equal, fixed, uncertainty, DWA, RLW.

Axes: t tasks (those present in the step). Each returns ``w`` (t,) and the trainer
back-propagates ``sum_t w_t L_t`` (plus the uncertainty regulariser) in one ordinary pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from mtlzoo import _checks
from mtlzoo.errors import MtlzooError, suggest
from mtlzoo.tasks import Task
from mtlzoo.weighting.base import LossWeighting, task_index
from mtlzoo.weighting.registry import GeneratorState, register_weighting, seeded_generator


def _stack(losses: dict[str, Tensor]) -> Tensor:
    return torch.stack(list(losses.values()))


@register_weighting("equal")
class Equal(LossWeighting):
    """Equal weighting, the usual baseline: ``w_t = 1``, total ``sum_t L_t``."""

    def weights(self, losses: dict[str, Tensor]) -> Tensor:
        task_index(self.task_names, list(losses))
        first = next(iter(losses.values()))
        return torch.ones(len(losses), dtype=first.dtype, device=first.device)

    def total(self, losses: dict[str, Tensor], weights: Tensor) -> Tensor:
        return _stack(losses).sum()  # the weights are 1: no product in the graph


@register_weighting("fixed")
class Fixed(LossWeighting):
    """Constant weights chosen by the user: ``w_t = weights[t]``, total ``sum_t w_t L_t``.

    ``weights`` names every task exactly once, each with a finite value >= 0.
    """

    task_weights: Tensor

    def __init__(self, task_names: Sequence[str | Task], *, weights: Mapping[str, float]) -> None:
        super().__init__(task_names)
        _checks.mapping("weights", weights, "a dict task name -> weight")
        unknown = [name for name in weights if name not in self.task_names]
        if unknown:
            raise MtlzooError(
                f"weights names unknown task(s) {unknown}."
                f"{suggest(str(unknown[0]), self.task_names)} Tasks: {', '.join(self.task_names)}"
            )
        missing = [name for name in self.task_names if name not in weights]
        if missing:
            raise MtlzooError(f"weights has no weight for task(s) {missing}")
        values = [_checks.real(f"weights[{name!r}]", weights[name]) for name in self.task_names]
        # not persistent: weights given now are configuration, never replaced by a checkpoint's
        self.register_buffer("task_weights", torch.tensor(values), persistent=False)

    def weights(self, losses: dict[str, Tensor]) -> Tensor:
        index = task_index(self.task_names, list(losses))
        return self.task_weights[index].to(_stack(losses).dtype)


@register_weighting("uncertainty")
class Uncertainty(LossWeighting):
    """Homoscedastic uncertainty weighting with learnable log-variances ``s_t``.

    A. Kendall, Y. Gal, R. Cipolla. "Multi-Task Learning Using Uncertainty to Weigh Losses
    for Scene Geometry and Semantics." IEEE/CVF Conference on Computer Vision and Pattern
    Recognition (CVPR), 2018. arXiv:1705.07115

    The paper's terms, ``L_t / (2 sigma_t^2) + log sigma_t`` for a regression task and
    ``L_t / sigma_t^2 + log sigma_t`` for a classification task, in ``s_t = log sigma_t^2``
    (the ``nn.Parameter`` ``log_vars``, initialised to 0, which the trainer's optimizer
    updates with the model)::

        regression:           0.5 exp(-s_t) L_t + 0.5 s_t,     w_t = 0.5 exp(-s_t)
        binary, multiclass:       exp(-s_t) L_t + 0.5 s_t,     w_t = exp(-s_t)

    The total is the sum of these terms; ``w_t``, the multipliers of the losses, are the
    returned weights. The kind comes from the ``mtlzoo.Task`` given for the task; a task
    given by name alone takes the regression form. For a fixed loss the optimum is
    ``s_t = log L_t`` (regression) or ``log 2 L_t`` (classification); either way
    ``w_t L_t = 1/2``.
    """

    loss_scales: Tensor

    def __init__(self, task_names: Sequence[str | Task]) -> None:
        super().__init__(task_names)
        self.log_vars = nn.Parameter(torch.zeros(len(self.task_names)))
        scales = [1.0 if kind in ("binary", "multiclass") else 0.5
                  for kind in self.task_kinds.values()]
        self.register_buffer("loss_scales", torch.tensor(scales), persistent=False)

    def weights(self, losses: dict[str, Tensor]) -> Tensor:
        index = task_index(self.task_names, list(losses))
        return self.loss_scales[index] * torch.exp(-self.log_vars[index])

    def total(self, losses: dict[str, Tensor], weights: Tensor) -> Tensor:
        log_vars = self.log_vars[task_index(self.task_names, list(losses))]
        return (weights * _stack(losses) + 0.5 * log_vars).sum()


@register_weighting("dwa")
class DWA(LossWeighting):
    """Dynamic Weight Average: weights from the rate at which each loss falls.

    S. Liu, E. Johns, A. J. Davison. "End-to-End Multi-Task Learning with Attention."
    IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR), 2019.
    arXiv:1803.10704

    With ``L_t(e)`` task t's mean training loss over epoch e (given to ``epoch_end``)::

        r_t = L_t(e-1) / L_t(e-2),     w_t = T exp(r_t / temperature) / sum_k exp(r_k / temperature)

    ``w_t = 1`` until two epochs have ended. T is the number of tasks in the step, so the
    weights sum to T; a task with fewer than two recorded epochs gets ``r_t = 1``. The last
    two mean losses of every task live in the buffer ``loss_history`` (2, T).
    """

    loss_history: Tensor

    def __init__(self, task_names: Sequence[str | Task], *, temperature: float = 2.0) -> None:
        super().__init__(task_names)
        self.temperature = _checks.real("temperature", temperature, positive=True)
        history = torch.full((2, len(self.task_names)), math.nan)
        self.register_buffer("loss_history", history)

    def weights(self, losses: dict[str, Tensor]) -> Tensor:
        index = task_index(self.task_names, list(losses))
        before, last = self.loss_history[:, index]
        ratio = last / before.clamp_min(torch.finfo(before.dtype).tiny)
        ratio = torch.nan_to_num(ratio, nan=1.0)
        weights = len(index) * torch.softmax(ratio / self.temperature, dim=0)
        return weights.to(_stack(losses).dtype)

    def epoch_end(self, mean_losses: dict[str, float]) -> None:
        _checks.mapping("mean_losses", mean_losses, "a dict task name -> loss")
        if not mean_losses:
            return
        index = task_index(self.task_names, list(mean_losses))
        values = []
        for name, value in mean_losses.items():
            number = value.item() if isinstance(value, Tensor) and value.numel() == 1 else value
            values.append(_checks.real(f"the mean loss of task {name!r}", number))
        history = self.loss_history
        history[0, index] = history[1, index]
        history[1, index] = torch.tensor(values, dtype=history.dtype, device=history.device)


@register_weighting("rlw")
class RLW(GeneratorState, LossWeighting):
    """Random loss weighting: fresh random weights every step.

    B. Lin, F. Ye, Y. Zhang, I. W. Tsang. "Reasonable Effectiveness of Random Weighting: A
    Litmus Test for Multi-Task Learning." Transactions on Machine Learning Research (TMLR),
    2022. arXiv:2111.10603

    ``w = softmax(z)``, ``z ~ N(0, I_T)`` drawn at every step from the weighting's own
    generator (``seed``; None takes one from torch's global RNG, so ``torch.manual_seed``
    fixes it). The weights are positive and sum to 1. The generator state is checkpointed
    in ``state_dict()``.
    """

    def __init__(self, task_names: Sequence[str | Task], *, seed: int | None = None) -> None:
        super().__init__(task_names)
        self.generator = seeded_generator(seed)

    def weights(self, losses: dict[str, Tensor]) -> Tensor:
        values = _stack(losses)
        count = len(task_index(self.task_names, list(losses)))
        z = torch.randn(count, generator=self.generator, dtype=torch.float64)
        return torch.softmax(z, dim=0).to(values)
