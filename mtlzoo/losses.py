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

# (logits (n, o), labels (n,)) -> losses (n,) or (n, 1)
RowLoss = Callable[[Tensor, Tensor], Tensor]


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
    that carry one. Labels and mask may be ``(n,)`` or ``(n, 1)``. A labelled value outside
    the task's range raises ``MtlzooError``."""
    if labels.dim() == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.dim() != 1:
        raise MtlzooError(
            f"task {task.name!r}: labels must have shape (n,) or (n, 1), got "
            f"{tuple(labels.shape)}"
        )
    labelled = torch.ones_like(labels, dtype=torch.bool)
    if mask is not None:
        labelled = _per_row(task, "mask", mask, len(labels)).to(torch.bool)
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


def _per_row(task: Task, what: str, values: Tensor, n: int) -> Tensor:
    """``values`` of shape (n,) or (n, 1) as (n,); any other shape raises ``MtlzooError``."""
    rows = values[:, 0] if values.dim() == 2 and values.shape[1] == 1 else values
    if rows.shape != (n,):
        raise MtlzooError(
            f"task {task.name!r}: {what} of shape {tuple(values.shape)} for {n} rows; "
            f"expected ({n},) or ({n}, 1)"
        )
    return rows


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
    *,
    weight_key: str | None = None,
) -> Tensor | None:
    """The weighted mean of the task's row losses over its labelled rows:
    ``sum_n w_n m_n l_n / sum_n w_n m_n``; None when no row is labelled (or all weights are 0).

    ``logits`` must be ``(n, task.out_features)``; labels, mask, weights and the row losses
    of a custom loss ``(n,)`` or ``(n, 1)``. Another shape raises ``MtlzooError``, naming the
    weights' batch column ``weight_key`` when given. The weight values are checked by
    :func:`check_row_weights`, not here.
    """
    weighted, total = task_loss_sums(task, logits, labels, mask, weights,
                                     weight_key=weight_key)
    return None if total == 0 else weighted / total  # no labelled row weighs 0 too


def task_loss_sums(
    task: Task,
    logits: Tensor,
    labels: Tensor,
    mask: Tensor | None = None,
    weights: Tensor | None = None,
    *,
    weight_key: str | None = None,
) -> tuple[Tensor, Tensor]:
    """The numerator and the denominator of :func:`task_loss`, ``sum_n w_n m_n l_n`` (with
    its gradient) and ``sum_n w_n m_n`` (detached), both 0 when no row is labelled; no
    host sync. Summed over the ranks of a distributed run, their ratio is the loss of the
    rows of every rank together."""
    labels, row_weights = _row_weights(task, logits, labels, mask, weights, weight_key)
    row_losses = _per_row(task, "its loss function's output", task.row_loss(logits, labels),
                          len(labels))
    return (row_losses * row_weights).sum(), row_weights.sum().detach()


def _row_weights(task: Task, logits: Tensor, labels: Tensor, mask: Tensor | None,
                 weights: Tensor | None, weight_key: str | None
                 ) -> tuple[Tensor, Tensor]:
    """``(labels, row weights)``: the checked labels (0 where missing) and each row's
    weight in the loss (0 where unlabelled)."""
    labels, labelled = labelled_rows(task, labels, mask)
    n = len(labels)
    if logits.shape != (n, task.out_features):
        raise MtlzooError(
            f"task {task.name!r}: logits of shape {tuple(logits.shape)} for {n} labels; "
            f"expected ({n}, {task.out_features}) for a {task.kind} task"
        )
    row_weights = labelled.to(logits.dtype)
    if weights is not None:
        weights = _per_row(task, _weights_name(weight_key), weights, n)
        row_weights = row_weights * weights.to(logits.dtype)
    return labels, row_weights


def check_row_weights(weights: Tensor, *, weight_key: str | None = None) -> None:
    """Per-row sample weights must be finite and non-negative; errors name the batch column
    ``weight_key`` when given."""
    bad = ~weights.isfinite() | (weights < 0)
    if bad.any():
        raise MtlzooError(
            f"{_weights_name(weight_key)} must be finite and non-negative, "
            f"got {weights[bad][0].item()!r}"
        )


def _weights_name(weight_key: str | None) -> str:
    return "sample weights" if weight_key is None else f"sample weights (column {weight_key!r})"
