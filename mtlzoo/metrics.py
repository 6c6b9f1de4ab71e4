"""Evaluation metrics for the three task kinds, in float64, returned as Python floats.

Every function takes whole-set tensors (concatenate the batches first) and validates them
with :class:`~mtlzoo.errors.MtlzooError`. Vectors may be given as ``(n,)`` or ``(n, 1)``.
An empty set (``n == 0``) gives ``nan`` for every metric. Select the labelled rows of a
task before calling; these functions know nothing of masks.

A ``nan`` prediction never gives a number: ``auc``, ``accuracy`` and the regression metrics
return ``nan`` (``accuracy`` also for a non-finite label; ``auc`` ranks ``±inf`` scores as
any other), ``macro_f1`` raises, since its predicted classes must be class indices.
:func:`task_metrics` goes further: a non-finite logit or prediction (``nan`` or ``±inf``:
the model has diverged) makes every metric of the task ``nan``.

>>> import torch
>>> auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
0.75
>>> task_metrics("regression", torch.tensor([[1.0], [2.0]]), torch.tensor([1.0, 3.0]))
{'mse': 0.5, 'rmse': 0.7071067811865476, 'r2': 0.5, 'mae': 0.5}
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlzoo import _checks
from mtlzoo.errors import MtlzooError, suggest
from mtlzoo.tasks import TASK_KINDS

NAN = float("nan")

#: Whether a larger ("max") or smaller ("min") value of each metric is better.
METRIC_DIRECTIONS: dict[str, str] = {
    "auc": "max",
    "accuracy": "max",
    "macro_f1": "max",
    "r2": "max",
    "log_loss": "min",
    "mse": "min",
    "rmse": "min",
    "mae": "min",
}

#: The keys :func:`task_metrics` returns for each task kind.
KIND_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("auc", "accuracy", "log_loss"),
    "multiclass": ("accuracy", "macro_f1", "log_loss"),
    "regression": ("mse", "rmse", "r2", "mae"),
}


# --- validation ---------------------------------------------------------------------------


def _tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise MtlzooError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.is_complex():
        raise MtlzooError(f"{name} must be real-valued, got dtype {value.dtype}")
    return value.detach()


def _vector(name: str, value: object) -> Tensor:
    """A tensor of shape (n,) or (n, 1), returned as (n,)."""
    t = _tensor(name, value)
    if t.dim() == 2 and t.shape[1] == 1:
        return t.reshape(-1)
    if t.dim() != 1:
        raise MtlzooError(f"{name} must have shape (n,) or (n, 1), got {tuple(t.shape)}")
    return t


def _f64(t: Tensor) -> Tensor:
    # MPS has no float64; every other device computes in place
    if t.device.type == "mps":
        t = t.cpu()
    return t.to(torch.float64)


def _same_length(where: str, a_name: str, a: Tensor, b_name: str, b: Tensor) -> None:
    if a.shape[0] != b.shape[0]:
        raise MtlzooError(
            f"{where}: {a_name} of shape {tuple(a.shape)} and {b_name} of shape "
            f"{tuple(b.shape)} hold different numbers of rows"
        )


def _vector_pair(
    where: str, a_name: str, a: object, b_name: str, b: object
) -> tuple[Tensor, Tensor]:
    """Two (n,) or (n, 1) tensors of one length, as (n,); errors name the given shapes."""
    va, vb = _vector(a_name, a), _vector(b_name, b)
    _same_length(where, a_name, a, b_name, b)
    return va, vb


def _binary_labels(name: str, labels: Tensor) -> Tensor:
    """Labels in {0, 1} (bool, int or float) as a bool tensor."""
    y = _f64(labels)
    bad = (y != 0) & (y != 1)
    if bool(bad.any()):
        value = y[bad][0].item()
        raise MtlzooError(f"{name} must hold only 0 and 1, found {value!r}")
    return y == 1


def _class_indices(name: str, values: Tensor, num_classes: int) -> Tensor:
    """Integer-valued class indices in [0, num_classes) as int64."""
    v = _f64(values)
    bad = (v != v.round()) | (v < 0) | (v >= num_classes)  # nan != nan, so nan is flagged
    if bool(bad.any()):
        value = v[bad][0].item()
        raise MtlzooError(
            f"{name} must hold class indices 0..{num_classes - 1}, found {value!r}"
        )
    return v.to(torch.int64)


# --- binary -------------------------------------------------------------------------------


def auc(scores: Tensor, labels: Tensor) -> float:
    """Exact ROC AUC over the whole set: the Mann-Whitney U statistic over n_pos * n_neg.

    A positive scored above a negative counts 1, a tie counts 1/2 (average ranks), so
    constant scores give 0.5. Only the order of the scores matters. O(n log n).

    Returns ``nan`` when only one class is present (or the set is empty), and when any
    score is ``nan``.
    """
    s, y_raw = _vector_pair("auc", "scores", scores, "labels", labels)
    y = _binary_labels("labels", y_raw)
    s = _f64(s)
    n = s.shape[0]
    n_pos = int(y.sum().item())
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0 or bool(torch.isnan(s).any()):
        return NAN
    sorted_s, order = torch.sort(s)
    _, inverse, counts = torch.unique_consecutive(
        sorted_s, return_inverse=True, return_counts=True
    )
    starts = torch.cumsum(counts, 0) - counts
    # a tie group at 1-based positions start+1 .. start+c has average rank start + (c+1)/2;
    # twice that is an integer, so the rank sum is exact in int64
    twice_rank = 2 * starts + counts + 1
    twice_rank_sum = int(twice_rank[inverse][y[order]].sum().item())
    twice_u = twice_rank_sum - n_pos * (n_pos + 1)
    return twice_u / (2 * n_pos * n_neg)


# --- classification -----------------------------------------------------------------------


def accuracy(pred_classes: Tensor, labels: Tensor) -> float:
    """Fraction of rows where the predicted class equals the label; ``nan`` when empty or
    when a predicted class or label is not finite."""
    p, y = _vector_pair("accuracy", "pred_classes", pred_classes, "labels", labels)
    p, y = _f64(p), _f64(y)
    if p.shape[0] == 0 or not bool(p.isfinite().all() and y.isfinite().all()):
        return NAN
    return (p == y).to(torch.float64).mean().item()


def macro_f1(pred_classes: Tensor, labels: Tensor, num_classes: int) -> float:
    """Unweighted mean over classes of F1 = 2 TP / (2 TP + FP + FN).

    A class with no true and no predicted rows is left out of the mean (its F1 is 0/0);
    a class with true rows and none predicted, or predicted rows and none true, counts 0.
    Returns ``nan`` when empty.
    """
    num_classes = _checks.positive_int("num_classes", num_classes)
    p, y = _vector_pair("macro_f1", "pred_classes", pred_classes, "labels", labels)
    if p.shape[0] == 0:
        return NAN
    p = _class_indices("pred_classes", p, num_classes)
    y = _class_indices("labels", y, num_classes)
    true_pos = torch.bincount(y[p == y], minlength=num_classes).to(torch.float64)
    predicted = torch.bincount(p, minlength=num_classes).to(torch.float64)
    actual = torch.bincount(y, minlength=num_classes).to(torch.float64)
    support = predicted + actual  # = 2 TP + FP + FN
    present = support > 0
    return (2 * true_pos[present] / support[present]).mean().item()


# --- regression ---------------------------------------------------------------------------


def _regression_pair(where: str, predictions: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    p, y = _vector_pair(where, "predictions", predictions, "targets", targets)
    return _f64(p), _f64(y)


def mse(predictions: Tensor, targets: Tensor) -> float:
    """Mean squared error; ``nan`` when empty."""
    p, y = _regression_pair("mse", predictions, targets)
    return (p - y).square().mean().item() if p.shape[0] else NAN


def rmse(predictions: Tensor, targets: Tensor) -> float:
    """Root mean squared error; ``nan`` when empty."""
    return math.sqrt(mse(predictions, targets))


def mae(predictions: Tensor, targets: Tensor) -> float:
    """Mean absolute error; ``nan`` when empty."""
    p, y = _regression_pair("mae", predictions, targets)
    return (p - y).abs().mean().item() if p.shape[0] else NAN


def r2(predictions: Tensor, targets: Tensor) -> float:
    """Coefficient of determination 1 - SS_res / SS_tot.

    1 for a perfect fit, 0 for predicting the mean target, negative when worse than that.
    ``nan`` when SS_tot == 0 (constant targets, including a single row) or when empty.
    """
    p, y = _regression_pair("r2", predictions, targets)
    if p.shape[0] == 0:
        return NAN
    ss_tot = (y - y.mean()).square().sum().item()
    if ss_tot == 0:
        return NAN
    return 1.0 - (p - y).square().sum().item() / ss_tot


# --- per task -----------------------------------------------------------------------------


def task_metrics(kind: str, logits: Tensor, labels: Tensor) -> dict[str, float]:
    """The metrics of one task, keyed by name (see ``KIND_METRICS``), in float64.

    * ``"binary"``: logits ``(n, 1)`` or ``(n,)``, labels in {0, 1}: ``auc``, ``accuracy``
      (a logit > 0 predicts 1), ``log_loss`` (mean binary cross-entropy with logits).
    * ``"multiclass"``: logits ``(n, C)``, labels class indices: ``accuracy`` (argmax),
      ``macro_f1`` over the C classes, ``log_loss`` (mean cross-entropy).
    * ``"regression"``: predictions ``(n, 1)`` or ``(n,)``: ``mse``, ``rmse``, ``r2``, ``mae``.

    An empty set, or any non-finite logit or prediction, gives ``nan`` for every metric
    (the labels are checked first).
    """
    if kind not in KIND_METRICS:
        raise MtlzooError(
            f"unknown task kind {kind!r}; expected one of {TASK_KINDS}."
            + suggest(str(kind), TASK_KINDS)
        )
    if kind == "multiclass":
        z = _tensor("logits", logits)
        if z.dim() != 2 or z.shape[1] < 2:
            raise MtlzooError(
                f"multiclass logits must have shape (n, C) with C >= 2, got {tuple(z.shape)}"
            )
    else:
        z = _vector("logits" if kind == "binary" else "predictions", logits)
    y = _vector("labels", labels)
    z_name = "predictions" if kind == "regression" else "logits"
    _same_length(f"{kind} task", z_name, logits, "labels", labels)
    if kind == "binary":
        y = _binary_labels("labels", y)
    elif kind == "multiclass":
        y = _class_indices("labels", y, z.shape[1])
    z = _f64(z)
    if z.shape[0] == 0 or not bool(z.isfinite().all()):
        return dict.fromkeys(KIND_METRICS[kind], NAN)

    if kind == "binary":
        return {
            "auc": auc(z, y),
            "accuracy": ((z > 0) == y).to(torch.float64).mean().item(),
            "log_loss": F.binary_cross_entropy_with_logits(z, y.to(z.dtype)).item(),
        }
    if kind == "multiclass":
        pred = z.argmax(dim=1)
        return {
            "accuracy": (pred == y).to(torch.float64).mean().item(),
            "macro_f1": macro_f1(pred, y, z.shape[1]),
            "log_loss": F.cross_entropy(z, y.to(z.device)).item(),
        }
    return {
        "mse": mse(z, y),
        "rmse": rmse(z, y),
        "r2": r2(z, y),
        "mae": mae(z, y),
    }
