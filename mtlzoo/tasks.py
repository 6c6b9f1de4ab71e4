"""Task: what one head of a multi-task model predicts."""

from __future__ import annotations

from dataclasses import dataclass

from mtlzoo.errors import MtlzooError

TASK_KINDS = ("binary", "multiclass", "regression")


@dataclass(frozen=True)
class Task:
    """One prediction task.

    ``kind`` is ``"binary"`` (one logit), ``"multiclass"`` (``num_classes`` logits) or
    ``"regression"`` (one value).

    >>> Task("topic", kind="multiclass", num_classes=4).out_features
    4
    """

    name: str
    kind: str = "binary"
    num_classes: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise MtlzooError(f"a task name must be a non-empty string, got {self.name!r}")
        if self.kind not in TASK_KINDS:
            raise MtlzooError(
                f"task {self.name!r}: unknown kind {self.kind!r}; expected one of {TASK_KINDS}"
            )
        if self.kind == "multiclass":
            if not _is_int(self.num_classes) or self.num_classes < 2:
                raise MtlzooError(
                    f"task {self.name!r}: a multiclass task needs num_classes >= 2, "
                    f"got num_classes={self.num_classes!r}"
                )
        elif self.num_classes is not None:
            raise MtlzooError(
                f"task {self.name!r}: num_classes={self.num_classes!r} is only for "
                f"multiclass tasks, not {self.kind!r}"
            )

    @property
    def out_features(self) -> int:
        """Width of this task's output layer."""
        return self.num_classes if self.kind == "multiclass" else 1


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
