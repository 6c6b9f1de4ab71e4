"""MultiTaskModel: what every architecture shares (input checks, task selection, heads)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from mtlzoo import _checks
from mtlzoo.errors import MtlzooError, suggest
from mtlzoo.tasks import Task, check_tasks


class ModelOutput(NamedTuple):
    """What a model returns.

    ``logits``: task name -> (b, out_features). ``gate_weights``: name -> (b, g, e), rows
    summing to one ({} for architectures without gates). ``aux_loss``: a scalar to add to the
    training loss (zero for architectures without one).
    """

    logits: dict[str, Tensor]
    gate_weights: dict[str, Tensor]
    aux_loss: Tensor


class MultiTaskModel(nn.Module):
    """Base class of the registered architectures.

    A subclass builds its sharing layers and ``self.heads`` (a ``TaskHeads``), and implements
    ``represent(x, task_ids) -> (reps (b, t, h), gate_weights)``, where ``reps`` holds the
    tasks in ``task_ids`` (all tasks when None) in that order; an architecture with an
    auxiliary loss (a penalty, a load-balancing term) returns ``(reps, gate_weights,
    aux_loss)``. One whose tasks' outputs depend on each other after the heads (ESMM's
    probability product, AITM's calibrator) overrides ``relate_logits``. An optional
    ``encoder`` (``set_encoder``) turns the raw input into the (b, in_features) features first.
    """

    heads: nn.Module
    encoder: nn.Module | None

    def __init__(self, *, in_features: int, tasks: Sequence[Task]) -> None:
        super().__init__()
        self.in_features = _checks.positive_int("in_features", in_features)
        self.tasks = check_tasks(tasks)
        self.task_names = tuple(task.name for task in self.tasks)
        self.encoder = None

    def set_encoder(self, encoder: nn.Module) -> MultiTaskModel:
        """Read raw inputs through ``encoder`` (its ``out_features`` must be ``in_features``);
        its parameters are shared by every task. Returns the model."""
        width = getattr(encoder, "out_features", None)
        if not isinstance(encoder, nn.Module) or width != self.in_features:
            raise MtlzooError(
                f"the encoder must be an nn.Module with out_features == in_features "
                f"({self.in_features}), got {type(encoder).__name__} with out_features={width}"
            )
        self.encoder = encoder
        return self

    def represent(
        self, x: Tensor, task_ids: Sequence[int] | None
    ) -> tuple[Tensor, dict[str, Tensor]] | tuple[Tensor, dict[str, Tensor], Tensor]:
        raise NotImplementedError

    def relate_logits(
        self, logits: dict[str, Tensor], aux_loss: Tensor, task_ids: Sequence[int] | None
    ) -> tuple[dict[str, Tensor], Tensor]:
        """The heads' logits and the aux_loss as the model returns them (unchanged here)."""
        return logits, aux_loss

    def forward(self, x: Tensor, tasks: str | Sequence[str] | None = None) -> ModelOutput:
        """Logits for every task, or only for ``tasks`` (their heads and gates alone run)."""
        if self.encoder is not None:
            x = self.encoder(x)
        self._check_input(x)
        task_ids = None if tasks is None else self._task_ids(tasks)
        reps, gate_weights, *aux = self.represent(x, task_ids)
        aux_loss = aux[0] if aux else x.new_zeros(())
        logits, aux_loss = self.relate_logits(self.heads(reps, task_ids), aux_loss, task_ids)
        return ModelOutput(logits, gate_weights, aux_loss)

    def shared_parameters(self) -> list[nn.Parameter]:
        """Every parameter outside the task heads (gradient balancing acts on these)."""
        return [p for name, p in self.named_parameters() if not name.startswith("heads.")]

    def task_parameters(self) -> list[nn.Parameter]:
        """The task heads' parameters (each slice serves one task)."""
        return list(self.heads.parameters())

    def num_selected(self, task_ids: Sequence[int] | None) -> int:
        return len(self.tasks) if task_ids is None else len(task_ids)

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise MtlzooError(f"input must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise MtlzooError(
                f"input must have shape (batch, {self.in_features}), got {tuple(x.shape)}"
            )
        expected = next(self.parameters())
        if not x.is_floating_point():
            raise MtlzooError(f"input must be a floating-point tensor, got {x.dtype}")
        autocast = torch.is_autocast_enabled(x.device.type)
        if (x.dtype != expected.dtype and not autocast) or x.device != expected.device:
            raise MtlzooError(
                f"input is {x.dtype} on {x.device} but the model is {expected.dtype} on "
                f"{expected.device}; convert one of them (x.to(...) or model.to(...))"
            )

    def _task_ids(self, tasks: str | Sequence[str]) -> list[int]:
        if isinstance(tasks, str):
            tasks = [tasks]
        if not isinstance(tasks, Sequence):
            raise MtlzooError(f"tasks= must be a task name or a list of names, got {tasks!r}")
        names = list(tasks)
        if not names:
            raise MtlzooError("tasks= must name at least one task, got an empty list")
        for name in names:
            if name not in self.task_names:
                raise MtlzooError(
                    f"unknown task {name!r}.{suggest(str(name), self.task_names)} "
                    f"This model's tasks: {', '.join(self.task_names)}"
                )
        duplicates = _checks.repeated(names)
        if duplicates:
            raise MtlzooError(f"tasks= names {duplicates} more than once")
        return [self.task_names.index(name) for name in names]

