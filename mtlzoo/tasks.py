"""Task: what one head of a multi-task model predicts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mtlzoo import _checks
from mtlzoo.errors import MtlzooError, suggest
from mtlzoo.losses import DEFAULT_LOSSES, LOSSES, RowLoss

TASK_KINDS = ("binary", "multiclass", "regression")


@dataclass(frozen=True)
class Task:
    """One prediction task.

    ``kind`` is ``"binary"`` (one logit), ``"multiclass"`` (``num_classes`` logits) or
    ``"regression"`` (one value). ``loss`` names a loss from ``mtlzoo.losses.LOSSES`` that
    fits the kind, or is a function ``(logits (n, o), labels (n,)) -> (n,)`` row losses
    (``(n, 1)`` is read as ``(n,)``); by default BCE with logits, cross-entropy and MSE.

    >>> Task("topic", kind="multiclass", num_classes=4).out_features
    4
    """

    name: str
    kind: str = "binary"
    num_classes: int | None = None
    loss: str | Callable | None = None

    def __post_init__(self) -> None:
        _checks.name("a task name", self.name)
        if self.kind not in TASK_KINDS:
            raise MtlzooError(
                f"task {self.name!r}: unknown kind {self.kind!r}; expected one of {TASK_KINDS}"
            )
        if self.kind == "multiclass":
            if not _checks.is_int(self.num_classes) or self.num_classes < 2:
                raise MtlzooError(
                    f"task {self.name!r}: a multiclass task needs num_classes >= 2, "
                    f"got num_classes={self.num_classes!r}"
                )
        elif self.num_classes is not None:
            raise MtlzooError(
                f"task {self.name!r}: num_classes={self.num_classes!r} is only for "
                f"multiclass tasks, not {self.kind!r}"
            )

        if isinstance(self.loss, str):
            if self.loss not in LOSSES:
                raise MtlzooError(
                    f"task {self.name!r}: unknown loss {self.loss!r}.{suggest(self.loss, LOSSES)}"
                    f" Known: {', '.join(LOSSES)}"
                )
            if self.kind not in LOSSES[self.loss][1]:
                raise MtlzooError(
                    f"task {self.name!r}: loss {self.loss!r} does not fit a {self.kind} task"
                )
        elif self.loss is not None and not callable(self.loss):
            raise MtlzooError(
                f"task {self.name!r}: loss must be a name or a function, got {self.loss!r}"
            )

    @property
    def row_loss(self) -> RowLoss:
        """The function giving this task's loss per row."""
        if callable(self.loss):
            return self.loss
        return LOSSES[self.loss or DEFAULT_LOSSES[self.kind]][0]

    @property
    def out_features(self) -> int:
        """Width of this task's output layer."""
        return self.num_classes if self.kind == "multiclass" else 1



# The task lists a model and a weighting are built for: checks of the Task concept, so here
# rather than with the generic checks in mtlzoo._checks.


def check_tasks(tasks: Task | Sequence[Task]) -> tuple[Task, ...]:
    """A model's tasks: one ``Task`` or a non-empty sequence of them, distinct by name."""
    if isinstance(tasks, Task):
        tasks = [tasks]
    if not isinstance(tasks, Sequence) or not tasks:
        raise MtlzooError(f"tasks must be a non-empty list of mtlzoo.Task, got {tasks!r}")
    for task in tasks:
        if not isinstance(task, Task):
            raise MtlzooError(f"tasks must hold mtlzoo.Task objects, got {task!r}")
    duplicates = _checks.repeated([task.name for task in tasks])
    if duplicates:
        raise MtlzooError(f"duplicate task names: {duplicates}")
    return tuple(tasks)


def check_task_names(task_names: object) -> tuple[str, ...]:
    """A weighting's tasks: the names of a non-empty sequence of distinct tasks, each a
    non-empty name or a ``Task``, as a tuple."""
    if isinstance(task_names, str) or not isinstance(task_names, Sequence) or not task_names:
        raise MtlzooError(
            f"task_names must be a non-empty list of task names or mtlzoo.Task objects, "
            f"got {task_names!r}"
        )
    names = []
    for task in task_names:
        if not isinstance(task, Task) and (not isinstance(task, str) or not task):
            raise MtlzooError(
                f"a task must be a non-empty name or an mtlzoo.Task, got {task!r}"
            )
        names.append(task.name if isinstance(task, Task) else task)
    duplicates = _checks.repeated(names)
    if duplicates:
        raise MtlzooError(f"duplicate task names: {duplicates}")
    return tuple(names)
