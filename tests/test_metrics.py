"""Metrics against brute-force references and hand-computed tables, plus the inputs that fail."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mtlzoo import MtlzooError, metrics
from mtlzoo.metrics import (
    KIND_METRICS,
    METRIC_DIRECTIONS,
    accuracy,
    auc,
    macro_f1,
    mae,
    mse,
    r2,
    rmse,
    task_metrics,
)

NAN = float("nan")


def same(a: float, b: float, tol: float = 1e-12) -> bool:
    """Equal to tol, with nan equal to nan."""
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=tol, abs_tol=tol)


def _raises(fn, *fragments: str) -> None:
    with pytest.raises(MtlzooError) as err:
        fn()
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))


def test_module_doctests():
    result = doctest.testmod(metrics)
    assert result.attempted > 0 and result.failed == 0


# --- AUC ----------------------------------------------------------------------------------


def brute_auc(scores, labels) -> float:
    """O(n^2) pair count: a positive above a negative counts 1, a tie 1/2."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return NAN
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / (len(pos) * len(neg)))


def random_case(seed: int, n: int, kind: str):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < rng.uniform(0.1, 0.9)
    labels[0], labels[-1] = True, False  # both classes present
    if kind == "int":  # integer scores with a few values: many ties, integer dtype
        scores = torch.from_numpy(rng.integers(-3, 4, n))
    elif kind == "int-valued-float":
        scores = torch.from_numpy(rng.integers(0, 5, n).astype(np.float32))
    elif kind == "rounded":  # continuous but rounded: ties across classes and within them
        scores = torch.from_numpy(np.round(rng.normal(labels * 0.7, 1.0), 1))
    else:  # continuous: no ties
        scores = torch.from_numpy(rng.normal(labels * 0.5, 1.0))
    return scores, torch.from_numpy(labels)


SCORE_KINDS = ["int", "int-valued-float", "rounded", "continuous"]


@pytest.mark.parametrize("kind", SCORE_KINDS)
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n", [2, 7, 50, 501])
def test_auc_matches_pair_count(seed, n, kind):
    scores, labels = random_case(seed, n, kind)
    assert same(auc(scores, labels), brute_auc(scores.numpy(), labels.numpy()))


@given(
    st.lists(
        st.tuples(st.integers(-4, 4), st.booleans()), min_size=0, max_size=40
    )
)
@settings(max_examples=200, deadline=None)
def test_auc_property(pairs):
    scores = torch.tensor([float(s) for s, _ in pairs], dtype=torch.float64)
    labels = torch.tensor([y for _, y in pairs], dtype=torch.bool)
    assert same(auc(scores, labels), brute_auc(scores.numpy(), labels.numpy()))


AUC_CASES = [
    pytest.param([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], 1.0, id="perfect"),
    pytest.param([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1], 0.0, id="inverted"),
    pytest.param([0.3, 0.3, 0.3, 0.3, 0.3], [0, 1, 0, 1, 1], 0.5, id="constant"),
    pytest.param([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75, id="sklearn-example"),
    pytest.param([1.0, 2.0, 2.0, 3.0], [0, 0, 1, 1], 0.875, id="one-tie-across"),
    pytest.param([2.0, 2.0, 1.0, 1.0], [1, 1, 0, 0], 1.0, id="ties-within-class"),
    pytest.param([float("-inf"), 0.0, float("inf")], [0, 1, 1], 1.0, id="infinite"),
    pytest.param([-0.0, 0.0], [0, 1], 0.5, id="signed-zero-tie"),
    pytest.param([0.2, 0.1], [1, 0], 1.0, id="two-rows"),
]


@pytest.mark.parametrize(("scores", "labels", "expected"), AUC_CASES)
def test_auc_hand_cases(scores, labels, expected):
    assert auc(torch.tensor(scores), torch.tensor(labels)) == expected


NAN_AUC_CASES = [
    pytest.param([0.1, 0.5, 0.9], [1, 1, 1], id="all-positive"),
    pytest.param([0.1, 0.5, 0.9], [0, 0, 0], id="all-negative"),
    pytest.param([0.4], [1], id="one-row"),
    pytest.param([], [], id="empty"),
    pytest.param([0.1, float("nan"), 0.9], [0, 1, 1], id="nan-score"),
]


@pytest.mark.parametrize(("scores", "labels"), NAN_AUC_CASES)
def test_auc_nan(scores, labels):
    assert math.isnan(auc(torch.tensor(scores), torch.tensor(labels, dtype=torch.int64)))


MONOTONE = [
    pytest.param(lambda s: 3 * s - 7, id="affine"),
    pytest.param(torch.exp, id="exp"),
    pytest.param(lambda s: s**3, id="cube"),
    pytest.param(torch.atan, id="atan"),
    pytest.param(lambda s: torch.where(s > 0, 100 * s, s), id="piecewise"),
]


@pytest.mark.parametrize("transform", MONOTONE)
@pytest.mark.parametrize("kind", ["rounded", "continuous"])
@pytest.mark.parametrize("seed", range(3))
def test_auc_invariant_to_monotone_transforms(transform, kind, seed):
    scores, labels = random_case(seed, 200, kind)
    scores = scores.to(torch.float64)
    base = auc(scores, labels)
    assert same(auc(transform(scores), labels), base)
    # a decreasing transform reflects the curve
    assert same(auc(-transform(scores), labels), 1 - base)


@pytest.mark.parametrize(
    "to_labels",
    [
        pytest.param(lambda y: y, id="bool"),
        pytest.param(lambda y: y.to(torch.int64), id="int64"),
        pytest.param(lambda y: y.to(torch.uint8), id="uint8"),
        pytest.param(lambda y: y.to(torch.float32), id="float32"),
        pytest.param(lambda y: y.to(torch.float64).unsqueeze(1), id="float64-column"),
    ],
)
def test_auc_label_dtypes_and_shapes(to_labels):
    scores, labels = random_case(0, 60, "rounded")
    expected = brute_auc(scores.numpy(), labels.numpy())
    assert same(auc(scores, to_labels(labels)), expected)
    assert same(auc(scores.unsqueeze(1), to_labels(labels)), expected)


def test_auc_exact_on_large_tied_set():
    # 2e5 rows on 3 score values: exact rational answer, no float drift in the rank sum
    n = 200_000
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 3, (n,), generator=g)
    labels = torch.rand(n, generator=g) < 0.3
    counts = {(s, y): int(((scores == s) & (labels == y)).sum()) for s in range(3) for y in (0, 1)}
    wins = sum(counts[(a, 1)] * counts[(b, 0)] for a in range(3) for b in range(3) if a > b)
    ties = sum(counts[(a, 1)] * counts[(a, 0)] for a in range(3))
    n_pos = int(labels.sum())
    expected = (2 * wins + ties) / (2 * n_pos * (n - n_pos))
    assert auc(scores, labels) == expected


# --- accuracy and macro-F1 ----------------------------------------------------------------

ACCURACY_CASES = [
    pytest.param([0, 1, 2, 1], [0, 1, 2, 1], 1.0, id="perfect"),
    pytest.param([1, 0], [0, 1], 0.0, id="all-wrong"),
    pytest.param([0, 1, 1, 2], [0, 1, 2, 2], 0.75, id="three-of-four"),
    pytest.param([3], [3], 1.0, id="one-row"),
    pytest.param([], [], NAN, id="empty"),
]


@pytest.mark.parametrize(("pred", "labels", "expected"), ACCURACY_CASES)
def test_accuracy_hand_cases(pred, labels, expected):
    got = accuracy(torch.tensor(pred, dtype=torch.int64), torch.tensor(labels))
    assert isinstance(got, float) and same(got, expected)


F1_CASES = [
    # class 0: F1 1; class 1: 2*1/(2+1) = 2/3; class 2: 2*1/(1+2) = 2/3
    pytest.param([0, 1, 1, 2], [0, 1, 2, 2], 3, 7 / 9, id="three-classes"),
    pytest.param([0, 1, 1, 2], [0, 1, 2, 2], 5, 7 / 9, id="absent-classes-left-out"),
    # class 1 has a true row and none predicted: it counts 0
    pytest.param([0, 0], [0, 1], 2, (2 / 3 + 0) / 2, id="missed-class-counts-zero"),
    # class 1 is predicted and never true: it counts 0
    pytest.param([0, 1], [0, 0], 2, (2 / 3 + 0) / 2, id="spurious-class-counts-zero"),
    pytest.param([1, 0], [0, 1], 2, 0.0, id="all-wrong"),
    pytest.param([2, 0, 1, 2], [2, 0, 1, 2], 4, 1.0, id="perfect"),
    pytest.param([0, 0, 0, 0], [0, 0, 0, 0], 3, 1.0, id="one-class-only"),
    pytest.param([], [], 3, NAN, id="empty"),
]


@pytest.mark.parametrize(("pred", "labels", "num_classes", "expected"), F1_CASES)
def test_macro_f1_hand_cases(pred, labels, num_classes, expected):
    got = macro_f1(torch.tensor(pred, dtype=torch.int64), torch.tensor(labels), num_classes)
    assert isinstance(got, float) and same(got, expected)


def brute_macro_f1(pred, labels, num_classes) -> float:
    scores = []
    for c in range(num_classes):
        tp = sum(1 for p, y in zip(pred, labels, strict=True) if p == c and y == c)
        fp = sum(1 for p, y in zip(pred, labels, strict=True) if p == c and y != c)
        fn = sum(1 for p, y in zip(pred, labels, strict=True) if p != c and y == c)
        if tp + fp + fn == 0:
            continue
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        scores.append(2 * precision * recall / (precision + recall) if tp else 0.0)
    return sum(scores) / len(scores)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(("n", "num_classes"), [(1, 2), (5, 4), (40, 3), (300, 7), (30, 12)])
def test_macro_f1_and_accuracy_match_brute_force(seed, n, num_classes):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    # mostly right, so every kind of class (hit, missed, spurious, absent) turns up
    noise = torch.randint(0, num_classes, (n,), generator=g)
    pred = torch.where(torch.rand(n, generator=g) < 0.6, labels, noise)
    assert same(
        macro_f1(pred, labels, num_classes),
        brute_macro_f1(pred.tolist(), labels.tolist(), num_classes),
    )
    hits = sum(p == y for p, y in zip(pred.tolist(), labels.tolist(), strict=True))
    assert same(accuracy(pred, labels), hits / n)


def test_macro_f1_accepts_float_and_column_labels():
    pred, labels = torch.tensor([0, 1, 1, 2]), torch.tensor([[0.0], [1.0], [2.0], [2.0]])
    assert same(macro_f1(pred, labels, 3), 7 / 9)


# --- regression ---------------------------------------------------------------------------

REGRESSION_CASES = [
    # (predictions, targets, mse, rmse, r2, mae)
    pytest.param([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], 0.0, 0.0, 1.0, 0.0, id="perfect"),
    pytest.param([2.0, 2.0, 2.0], [1.0, 2.0, 3.0], 2 / 3, math.sqrt(2 / 3), 0.0, 2 / 3,
                 id="mean-predictor"),
    pytest.param([1.0, 2.0], [1.0, 3.0], 0.5, math.sqrt(0.5), 0.5, 0.5, id="half"),
    pytest.param([3.0, 2.0, 1.0], [1.0, 2.0, 3.0], 8 / 3, math.sqrt(8 / 3), -3.0, 4 / 3,
                 id="reversed"),
    pytest.param([0.0, 4.0], [3.0, 3.0], 5.0, math.sqrt(5.0), NAN, 2.0,
                 id="constant-targets"),
    pytest.param([1.5], [2.0], 0.25, 0.5, NAN, 0.5, id="one-row"),
    pytest.param([], [], NAN, NAN, NAN, NAN, id="empty"),
]


@pytest.mark.parametrize(("pred", "target", "e_mse", "e_rmse", "e_r2", "e_mae"), REGRESSION_CASES)
@pytest.mark.parametrize("column", [False, True], ids=["(n,)", "(n,1)"])
def test_regression_hand_cases(pred, target, e_mse, e_rmse, e_r2, e_mae, column):
    p = torch.tensor(pred, dtype=torch.float32)
    p = p.unsqueeze(1) if column else p
    y = torch.tensor(target)
    for fn, expected in [(mse, e_mse), (rmse, e_rmse), (r2, e_r2), (mae, e_mae)]:
        got = fn(p, y)
        assert isinstance(got, float) and same(got, expected), (fn.__name__, got, expected)
    assert task_metrics("regression", p, y).keys() == {"mse", "rmse", "r2", "mae"}
    for name, value in task_metrics("regression", p, y).items():
        assert same(value, {"mse": e_mse, "rmse": e_rmse, "r2": e_r2, "mae": e_mae}[name])


def test_regression_against_numpy():
    rng = np.random.default_rng(0)
    y = rng.normal(size=500)
    p = y + rng.normal(scale=0.3, size=500)
    got = task_metrics("regression", torch.from_numpy(p), torch.from_numpy(y))
    expected = {
        "mse": np.mean((p - y) ** 2),
        "rmse": np.sqrt(np.mean((p - y) ** 2)),
        "r2": 1 - np.sum((p - y) ** 2) / np.sum((y - y.mean()) ** 2),
        "mae": np.mean(np.abs(p - y)),
    }
    for name, value in expected.items():
        assert same(got[name], float(value), 1e-10), name


def test_computed_in_float64():
    # float32 would lose the 1 in 1e8 + 1 and report mse 0
    p = torch.tensor([1e8 + 1.0, 5.0], dtype=torch.float64)
    y = torch.tensor([1e8, 5.0], dtype=torch.float64)
    assert mse(p, y) == 0.5
    # a float32 input is summed in float64: the mean of many 0.1 errors stays exact to 1e-9
    n = 1_000_003
    p32, y32 = torch.full((n,), 0.1, dtype=torch.float32), torch.zeros(n, dtype=torch.float32)
    assert same(mae(p32, y32), float(np.float32(0.1)), 1e-12)


# --- log loss and task_metrics ------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("column", [False, True], ids=["(n,)", "(n,1)"])
def test_binary_task_metrics(seed, column):
    g = torch.Generator().manual_seed(seed)
    n = 257
    labels = torch.rand(n, generator=g) < 0.4
    logits = torch.randn(n, generator=g, dtype=torch.float32) * 3 + labels
    z = logits.unsqueeze(1) if column else logits
    got = task_metrics("binary", z, labels.to(torch.int64))
    assert list(got) == ["auc", "accuracy", "log_loss"]
    assert all(isinstance(v, float) for v in got.values())
    z64, y64 = logits.double(), labels.double()
    expected_loss = F.binary_cross_entropy_with_logits(z64, y64).item()
    # and the same by hand, in numpy
    zn, yn = z64.numpy(), y64.numpy()
    by_hand = np.mean(np.logaddexp(0, zn) - yn * zn)
    assert same(got["log_loss"], expected_loss) and same(got["log_loss"], float(by_hand))
    assert same(got["auc"], brute_auc(zn, labels.numpy()))
    assert same(got["accuracy"], float(np.mean((zn > 0) == labels.numpy())))


def test_binary_threshold_is_logit_zero():
    got = task_metrics("binary", torch.tensor([-0.1, 0.0, 0.1]), torch.tensor([0, 0, 1]))
    assert got["accuracy"] == 1.0  # a logit of exactly 0 predicts class 0


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("num_classes", [2, 5])
def test_multiclass_task_metrics(seed, num_classes):
    g = torch.Generator().manual_seed(seed)
    n = 131
    labels = torch.randint(0, num_classes, (n,), generator=g)
    logits = torch.randn(n, num_classes, generator=g) * 2
    logits[torch.arange(n), labels] += 1.0
    got = task_metrics("multiclass", logits, labels)
    assert list(got) == ["accuracy", "macro_f1", "log_loss"]
    assert all(isinstance(v, float) for v in got.values())
    pred = logits.argmax(1)
    assert same(got["log_loss"], F.cross_entropy(logits.double(), labels).item())
    zn = logits.double().numpy()
    by_hand = np.mean(np.log(np.exp(zn).sum(1)) - zn[np.arange(n), labels.numpy()])
    assert same(got["log_loss"], float(by_hand), 1e-10)
    assert same(got["accuracy"], (pred == labels).double().mean().item())
    assert same(
        got["macro_f1"], brute_macro_f1(pred.tolist(), labels.tolist(), num_classes)
    )
    # labels as a float column give the same answer
    assert got == task_metrics("multiclass", logits, labels.double().unsqueeze(1))


@pytest.mark.parametrize(
    ("kind", "logits", "labels"),
    [
        pytest.param("binary", torch.zeros(0, 1), torch.zeros(0), id="binary-(0,1)"),
        pytest.param("binary", torch.zeros(0), torch.zeros(0, dtype=torch.bool), id="binary"),
        pytest.param("multiclass", torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64),
                     id="multiclass"),
        pytest.param("regression", torch.zeros(0, 1), torch.zeros(0), id="regression"),
    ],
)
def test_empty_input_gives_nan(kind, logits, labels):
    got = task_metrics(kind, logits, labels)
    assert tuple(got) == KIND_METRICS[kind]
    assert all(math.isnan(v) for v in got.values())


def test_metric_directions_cover_every_metric():
    names = {name for keys in KIND_METRICS.values() for name in keys}
    assert set(METRIC_DIRECTIONS) == names
    assert set(METRIC_DIRECTIONS.values()) <= {"max", "min"}
    assert METRIC_DIRECTIONS["auc"] == "max" and METRIC_DIRECTIONS["log_loss"] == "min"


def test_inputs_are_not_modified_and_grads_are_ignored():
    logits = torch.randn(10, 3, requires_grad=True)
    labels = torch.randint(0, 3, (10,))
    before = logits.detach().clone()
    task_metrics("multiclass", logits, labels)
    assert torch.equal(logits.detach(), before) and logits.grad is None


# --- errors -------------------------------------------------------------------------------

ERRORS = [
    pytest.param(lambda: task_metrics("bianry", torch.zeros(2), torch.zeros(2)),
                 ["'bianry'", "'binary'"], id="unknown-kind-suggests"),
    pytest.param(lambda: task_metrics("ranking", torch.zeros(2), torch.zeros(2)),
                 ["'ranking'", "regression"], id="unknown-kind"),
    pytest.param(lambda: task_metrics("binary", torch.zeros(4, 1), torch.zeros(5)),
                 ["(4, 1)", "(5,)"], id="binary-lengths"),
    pytest.param(lambda: task_metrics("multiclass", torch.zeros(4, 3), torch.zeros(3)),
                 ["(4, 3)", "(3,)"], id="multiclass-lengths"),
    pytest.param(lambda: task_metrics("regression", torch.zeros(0, 1), torch.zeros(2)),
                 ["(0, 1)", "(2,)"], id="regression-lengths-empty"),
    pytest.param(lambda: task_metrics("binary", torch.zeros(4, 2), torch.zeros(4)),
                 ["(4, 2)"], id="binary-two-columns"),
    pytest.param(lambda: task_metrics("multiclass", torch.zeros(4), torch.zeros(4)),
                 ["(4,)"], id="multiclass-1-d"),
    pytest.param(lambda: task_metrics("multiclass", torch.zeros(4, 1), torch.zeros(4)),
                 ["(4, 1)"], id="multiclass-one-column"),
    pytest.param(lambda: task_metrics("binary", torch.zeros(3), torch.tensor([0, 1, 2])),
                 ["2"], id="binary-label-2"),
    pytest.param(lambda: task_metrics("binary", torch.zeros(2), torch.tensor([0.0, 0.5])),
                 ["0.5"], id="binary-label-half"),
    pytest.param(lambda: task_metrics("binary", torch.zeros(2), torch.tensor([0.0, NAN])),
                 ["nan"], id="binary-label-nan"),
    pytest.param(lambda: task_metrics("multiclass", torch.zeros(2, 3), torch.tensor([0, 3])),
                 ["3", "0..2"], id="multiclass-label-too-big"),
    pytest.param(lambda: task_metrics("multiclass", torch.zeros(2, 3), torch.tensor([-1, 0])),
                 ["-1"], id="multiclass-label-negative"),
    pytest.param(lambda: task_metrics("multiclass", torch.zeros(2, 3), torch.tensor([0.5, 0])),
                 ["0.5"], id="multiclass-label-fraction"),
    pytest.param(lambda: task_metrics("regression", [1.0, 2.0], torch.zeros(2)),
                 ["list"], id="list-input"),
    pytest.param(lambda: task_metrics("regression", torch.zeros(2), np.zeros(2)),
                 ["ndarray"], id="numpy-labels"),
    pytest.param(lambda: auc(torch.zeros(3), torch.zeros(4)), ["(3,)", "(4,)"],
                 id="auc-lengths"),
    pytest.param(lambda: auc(torch.zeros(2, 2, 1), torch.zeros(2)), ["(2, 2, 1)"],
                 id="auc-3-d"),
    pytest.param(lambda: auc(torch.zeros(2, dtype=torch.complex64), torch.zeros(2)),
                 ["complex64"], id="auc-complex"),
    pytest.param(lambda: accuracy(torch.zeros(3), torch.zeros(2, 1)), ["(3,)", "(2, 1)"],
                 id="accuracy-lengths"),
    pytest.param(lambda: macro_f1(torch.zeros(2), torch.zeros(2), 0), ["0"],
                 id="macro-f1-num-classes-0"),
    pytest.param(lambda: macro_f1(torch.zeros(2), torch.zeros(2), True), ["True"],
                 id="macro-f1-num-classes-bool"),
    pytest.param(lambda: macro_f1(torch.tensor([0, 4]), torch.zeros(2), 3), ["4"],
                 id="macro-f1-pred-out-of-range"),
    pytest.param(lambda: mse(torch.zeros(3), torch.zeros(4)), ["(3,)", "(4,)"],
                 id="mse-lengths"),
    pytest.param(lambda: r2(torch.zeros(3, 2), torch.zeros(3)), ["(3, 2)"], id="r2-shape"),
]


@pytest.mark.parametrize(("fn", "fragments"), ERRORS)
def test_errors(fn, fragments):
    _raises(fn, *fragments)
