"""Per-task losses over labelled rows, with optional per-row weights.

A label is missing where the task's mask is False or the label is NaN; missing labels add
nothing to the loss (or the metrics). Axes: n rows, o outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlzoo.errors import MtlzooError

if TYPE_CHECKING:
    from mtlzoo.tasks import Task

RowLoss = Callable[[Tensor, Tensor], Tensor]  # (logits (n, o), labels (n,)) -> losses (n,)


def bce(logits: Tensor, labels: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(
        logits[:, 0], labels.to(logits.dtype), reduction="none"
    )


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits, labels.long(), reduction="none")


def mse(logits: Tensor, labels: Tensor) -> Tensor:
    return (logits[:, 0] - labels.to(logits.dtype)).square()


def l1(logits: Tensor, labels: Tensor) -> Tensor:
    return (logits[:, 0] - labels.to(logits.dtype)).abs()


def huber(logits: Tensor, labels: Tensor) -> Tensor:
    return F.huber_loss(logits[:, 0], labels.to(logits.dtype), reduction="none")


# name -> (row loss, the task kinds it fits)
LOSSES: dict[str, tuple[RowLoss, tuple[str, ...]]] = {
    "bce": (bce, ("binary",)),
    "cross_entropy": (cross_entropy, ("multiclass",)),
    "mse": (mse, ("regression",)),
    "l1": (l1, ("regression",)),
    "huber": (huber, ("regression",)),
}
DEFAULT_LOSSES = {"binary": "bce", "multiclass": "cross_entropy", "regression": "mse"}


def labelled_rows(task: Task, labels: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(labels (n,), labelled (n,) bool)``: checked labels (0 where missing) and the rows
    that carry one. A labelled value outside the task's range raises ``MtlzooError``."""
    if labels.dim() == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.dim() != 1:
        raise MtlzooError(
            f"task {task.name!r}: labels must have shape (n,), got {tuple(labels.shape)}"
        )
    labelled = torch.ones_like(labels, dtype=torch.bool)
    if mask is not None:
        if mask.shape != labels.shape:
            raise MtlzooError(
                f"task {task.name!r}: mask of shape {tuple(mask.shape)} for labels of shape "
                f"{tuple(labels.shape)}"
            )
        labelled = mask.to(torch.bool)
    if labels.is_floating_point():
        labelled = labelled & ~labels.isnan()
    bad = labelled & ~_in_range(task, labels)
    if bad.any():
        value = labels[bad][0].item()
        expected = {
            "binary": "0 or 1",
            "multiclass": f"an integer class in [0, {task.num_classes})",
            "regression": "a finite number",
        }[task.kind]
        raise MtlzooError(
            f"task {task.name!r}: label {value!r} is out of range (expected {expected}; "
            f"{int(bad.sum())} such row(s) in this batch)"
        )
    return torch.where(labelled, labels, torch.zeros_like(labels)), labelled


def _in_range(task: Task, labels: Tensor) -> Tensor:
    if task.kind == "regression":
        return labels.isfinite() if labels.is_floating_point() else torch.ones_like(labels) == 1
    integral = labels == labels.round() if labels.is_floating_point() else True
    if task.kind == "binary":
        return (labels == 0) | (labels == 1)
    return (labels >= 0) & (labels < task.num_classes) & integral


def task_loss(
    task: Task,
    logits: Tensor,
    labels: Tensor,
    mask: Tensor | None = None,
    weights: Tensor | None = None,
) -> Tensor | None:
    """The weighted mean of the task's row losses over its labelled rows:
    ``sum_n w_n m_n l_n / sum_n w_n m_n``; None when no row is labelled (or all weights are 0)."""
    labels, labelled = labelled_rows(task, labels, mask)
    if len(labels) != len(logits):
        raise MtlzooError(
            f"task {task.name!r}: {len(labels)} labels for {len(logits)} rows of logits"
        )
    row_weights = labelled.to(logits.dtype)
    if weights is not None:
        row_weights = row_weights * weights.to(logits.dtype)
    total = row_weights.sum()
    if not labelled.any() or total == 0:
        return None
    return (task.row_loss(logits, labels) * row_weights).sum() / total


def check_row_weights(weights: Tensor) -> None:
    """Per-row sample weights must be finite and non-negative."""
    bad = ~weights.isfinite() | (weights < 0)
    if bad.any():
        raise MtlzooError(
            f"sample weights must be finite and non-negative, got {weights[bad][0].item()!r}"
        )
