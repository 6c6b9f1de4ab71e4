"""The interface every loss-weighting or gradient-balancing method implements.

Axes: t tasks (those present in the step), p flattened parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from mtlzoo.errors import MtlzooError, suggest
from mtlzoo.tasks import Task, check_task_names


class Weighting(nn.Module):
    """Turns per-task losses into one update of the model's gradients.

    The trainer calls, every step, ``backward(losses, shared, specific, representation)``
    with the losses of the tasks present in the step (a task with no labelled row is left
    out), the model's shared parameters, its task-specific ones (the heads), and the
    encoder's output when the model has an encoder and the step made one forward pass
    (None otherwise; MGDA-UB reads it). It must leave the gradient of
    the update in ``.grad`` of every parameter that has one (accumulating, as
    ``Tensor.backward`` does) and return the weights it applied, one per task in ``losses``:
    the coefficient of each task's loss (or raw gradient) in the update.
    Learnable state (``nn.Parameter``) is optimised by the trainer's optimizer together with
    the model; ``after_step()`` runs after each optimizer step, ``epoch_end(mean_losses)``
    after each epoch. State to checkpoint lives in parameters, buffers and
    ``get_extra_state``.

    ``task_names`` holds the tasks, each a name or an ``mtlzoo.Task``; ``self.task_names``
    keeps their names, ``self.task_kinds`` their kinds by name (None for a bare name).

    Under DDP the trainer sets ``rank_sum`` (sums a tensor over the ranks, in place) and
    ``world_size``: a gradient method then sums the per-task gradients over the ranks
    before it combines them, and leaves ``1 / world_size`` of the shared update in ``.grad``
    on each rank; the trainer sums the model's ``.grad`` over the ranks afterwards.
    For a compiled model it sets ``batched_backward = False``: per-task gradients then take
    one backward pass per task, since a compiled backward cannot be batched over the tasks.
    """

    rank_sum: Callable[[Tensor], Tensor] | None = None
    world_size: int = 1
    batched_backward: bool = True

    def __init__(self, task_names: Sequence[str | Task]) -> None:
        super().__init__()
        self.task_names = check_task_names(task_names)
        self.task_kinds: dict[str, str | None] = {
            name: task.kind if isinstance(task, Task) else None
            for name, task in zip(self.task_names, task_names, strict=True)
        }

    def backward(
        self,
        losses: dict[str, Tensor],
        shared: Sequence[Tensor],
        specific: Sequence[Tensor],
        representation: Tensor | None = None,
    ) -> Tensor:
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after every optimizer step."""

    def summed(self, grads: Tensor) -> Tensor:
        """Per-task gradients (or their Gram matrix) summed over the ranks (under DDP)."""
        return grads if self.rank_sum is None else self.rank_sum(grads)

    def share(self, update: Tensor) -> Tensor:
        """This rank's share of an update computed from gradients ``summed`` over the
        ranks: the ranks' shares add up to it when the trainer sums ``.grad``."""
        return update if self.rank_sum is None else update / self.world_size

    def epoch_end(self, mean_losses: dict[str, float]) -> None:
        """Called after every epoch with each task's mean training loss over it."""


class LossWeighting(Weighting):
    """A method that only scales the losses: ``sum_t w_t L_t``, one ordinary backward."""

    def weights(self, losses: dict[str, Tensor]) -> Tensor:
        """(t,) weights for the tasks in ``losses``, in that order."""
        raise NotImplementedError

    def total(self, losses: dict[str, Tensor], weights: Tensor) -> Tensor:
        """The scalar to back-propagate (a method may add terms, as uncertainty does)."""
        return (weights * torch.stack(list(losses.values()))).sum()

    def backward(
        self,
        losses: dict[str, Tensor],
        shared: Sequence[Tensor],
        specific: Sequence[Tensor],
        representation: Tensor | None = None,
        extra: Tensor | None = None,
    ) -> Tensor:
        """Back-propagates ``sum_t w_t L_t`` (``total``), plus ``extra``, unweighted, when
        given (the model's aux_loss under DDP, which needs one backward a forward)."""
        weights = self.weights(losses)  # drawn once: the weights applied are those returned
        total = self.total(losses, weights)
        (total if extra is None else total + extra).backward()
        return weights.detach()


class GradientWeighting(Weighting):
    """A method that combines the per-task gradients of the shared parameters.

    ``combine(grads (t, p), losses)`` returns the shared update (p,) and the task weights
    (t,) it amounts to (or that it used). Task-specific parameters get their ordinary
    gradient, that of ``sum_t L_t``.
    """

    needs_task_gradients: ClassVar[bool] = True

    def combine(self, grads: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def backward(
        self,
        losses: dict[str, Tensor],
        shared: Sequence[Tensor],
        specific: Sequence[Tensor],
        representation: Tensor | None = None,
    ) -> Tensor:
        from mtlzoo.weighting.gradients import accumulate_flat, task_gradients

        task_index(self.task_names, list(losses))  # names checked, at least one
        values = torch.stack(list(losses.values()))
        shared_grads, specific_grads = task_gradients(values, shared, specific,
                                                       batched=self.batched_backward)
        update, weights = self.combine(self.summed(shared_grads), values.detach())
        accumulate_flat(shared, self.share(update))
        accumulate_flat(specific, specific_grads.sum(dim=0))
        return weights.detach()


def task_index(task_names: Sequence[str], names: Sequence[str]) -> list[int]:
    """Positions in ``task_names`` of ``names`` (the tasks of a step), in that order."""
    index = []
    for name in names:
        if name not in task_names:
            raise MtlzooError(
                f"unknown task {name!r}.{suggest(str(name), task_names)} "
                f"This weighting's tasks: {', '.join(task_names)}"
            )
        index.append(task_names.index(name))
    if not index:
        raise MtlzooError("no task losses given: a step needs at least one task")
    return index
