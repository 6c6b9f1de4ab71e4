"""Faults of issue 10 in losses, weightings and metrics: per-row tensors of shape (n, 1), the
uncertainty weighting per task kind, the weights PCGrad applies, non-finite predictions."""

from __future__ import annotations

import math

import pytest
import torch

import mtlzoo
from mtlzoo import MtlzooError, Task
from mtlzoo.losses import check_row_weights, task_loss
from mtlzoo.metrics import (
    KIND_METRICS,
    accuracy,
    auc,
    macro_f1,
    mae,
    mse,
    r2,
    rmse,
    task_metrics,
)
from mtlzoo.weighting import GradientWeighting, create_weighting, list_weightings

pytestmark = pytest.mark.usefixtures("float64")

N = 5
F64 = torch.float64
LOGITS = torch.linspace(-1.0, 1.5, N, dtype=F64)[:, None]
LABELS = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0], dtype=F64)
WEIGHTS = torch.tensor([1.0, 0.0, 2.0, 0.5, 3.0], dtype=F64)
BINARY = Task("a")


def weighted_mean_bce(weights: torch.Tensor) -> torch.Tensor:
    rows = torch.nn.functional.binary_cross_entropy_with_logits(
        LOGITS[:, 0], LABELS, reduction="none")
    return (rows * weights).sum() / weights.sum()


def squared_rows(logits, labels):
    return (logits[:, 0] - labels).square()


# --- losses: per-row tensors ---------------------------------------------------------------


def test_sample_weights_of_shape_n_1_weight_the_rows():
    expected = weighted_mean_bce(WEIGHTS)
    torch.testing.assert_close(task_loss(BINARY, LOGITS, LABELS, None, WEIGHTS), expected)
    torch.testing.assert_close(task_loss(BINARY, LOGITS, LABELS, None, WEIGHTS[:, None]),
                               expected)


@pytest.mark.parametrize("shape", [(N, 2), (N + 1,), (1, N), (), (N, 1, 1), (N - 1, 1)])
def test_sample_weights_of_another_shape_are_named(shape):
    weights = torch.ones(shape)
    with pytest.raises(MtlzooError) as err:
        task_loss(BINARY, LOGITS, LABELS, None, weights, weight_key="w")
    message = str(err.value)
    for part in ("task 'a'", "sample weights (column 'w')", str(shape), f"({N},)", f"({N}, 1)"):
        assert part in message, (part, message)
    with pytest.raises(MtlzooError, match=r"task 'a': sample weights of shape"):
        task_loss(BINARY, LOGITS, LABELS, None, weights)


def test_check_row_weights_names_the_column():
    with pytest.raises(MtlzooError, match=r"sample weights \(column 'w'\).*-1\.0"):
        check_row_weights(torch.tensor([1.0, -1.0]), weight_key="w")
    with pytest.raises(MtlzooError, match=r"^sample weights must be.*nan"):
        check_row_weights(torch.tensor([math.nan]))


def test_a_mask_of_shape_n_1_is_a_mask():
    mask = torch.tensor([True, False, True, True, False])
    expected = task_loss(BINARY, LOGITS, LABELS, mask)
    torch.testing.assert_close(task_loss(BINARY, LOGITS, LABELS[:, None], mask[:, None]),
                               expected)
    with pytest.raises(MtlzooError, match=r"task 'a': mask of shape \(5, 2\)"):
        task_loss(BINARY, LOGITS, LABELS, torch.ones(N, 2, dtype=torch.bool))


def test_a_custom_loss_returning_a_column_is_a_row_loss():
    column = Task("r", kind="regression", loss=lambda z, y: squared_rows(z, y)[:, None])
    rows = Task("r", kind="regression", loss=squared_rows)
    for weights in (None, WEIGHTS):
        torch.testing.assert_close(task_loss(column, LOGITS, LABELS, None, weights),
                                   task_loss(rows, LOGITS, LABELS, None, weights))


@pytest.mark.parametrize(
    ("loss", "returned"),
    [
        (lambda z, y: squared_rows(z, y).mean(), "()"),
        (lambda z, y: squared_rows(z, y)[1:], f"({N - 1},)"),
        (lambda z, y: z.expand(N, 2), f"({N}, 2)"),
        (lambda z, y: squared_rows(z, y)[None, :], f"(1, {N})"),
    ],
)
def test_a_custom_loss_of_another_shape_is_named(loss, returned):
    task = Task("r", kind="regression", loss=loss)
    with pytest.raises(MtlzooError) as err:
        task_loss(task, LOGITS, LABELS)
    message = str(err.value)
    for part in ("task 'r'", returned, f"({N},)"):
        assert part in message, (part, message)


@pytest.mark.parametrize(
    ("task", "logits"),
    [
        (BINARY, LOGITS[:, 0]),
        (BINARY, LOGITS.expand(N, 2)),
        (Task("m", kind="multiclass", num_classes=4), torch.zeros(N, 3)),
        (Task("r", kind="regression"), torch.zeros(N, 1, 1)),
    ],
)
def test_logits_of_the_wrong_width_are_named(task, logits):
    with pytest.raises(MtlzooError, match=rf"task '{task.name}': logits of shape"):
        task_loss(task, logits, torch.zeros(N))


def test_the_trainer_weighs_rows_by_a_weight_column_of_shape_n_1():
    g = torch.Generator().manual_seed(0)
    data = {"x": torch.randn(16, 3, generator=g), "a": torch.randint(0, 2, (16,), generator=g)}
    weights = torch.rand(16, generator=g)
    states = []
    for column in (weights, weights[:, None]):
        torch.manual_seed(0)
        model = mtlzoo.create_model("shared_bottom", in_features=3, tasks=[BINARY])
        trainer = mtlzoo.Trainer(model, optimizer="sgd", lr=0.1, batch_size=16, progress=False)
        trainer.fit(dict(data, weight=column), steps=1)
        states.append(model.state_dict())
    for key, value in states[0].items():
        torch.testing.assert_close(states[1][key], value, rtol=0, atol=1e-12)


# --- weightings built from tasks -----------------------------------------------------------

KIND_TASKS = (
    Task("r", kind="regression"),
    Task("b", kind="binary"),
    Task("m", kind="multiclass", num_classes=3),
)


def options(name: str) -> dict:
    return {"weights": {"a": 1.0, "b": 2.0}} if name == "fixed" else {}


@pytest.mark.parametrize("name", list_weightings())
def test_every_weighting_takes_task_objects(name):
    tasks = [Task("a"), Task("b", kind="regression")]
    from_tasks = create_weighting(name, tasks, **options(name))
    from_names = create_weighting(name, ["a", "b"], **options(name))
    assert from_tasks.task_names == from_names.task_names == ("a", "b")
    assert from_tasks.task_kinds == {"a": "binary", "b": "regression"}
    assert from_names.task_kinds == {"a": None, "b": None}
    model = mtlzoo.create_model("mmoe", in_features=4, tasks=tasks)
    x = torch.randn(8, 4)
    logits = model(x).logits
    losses = {"a": task_loss(tasks[0], logits["a"], torch.randint(0, 2, (8,))),
              "b": task_loss(tasks[1], logits["b"], torch.randn(8))}
    weights = from_tasks.backward(losses, model.shared_parameters(), model.task_parameters())
    assert weights.shape == (2,) and torch.isfinite(weights).all()


@pytest.mark.parametrize(
    ("tasks", "named"),
    [
        ([Task("a"), "a"], "'a'"),
        ([Task("a"), 3], "3"),
        (Task("a"), "Task"),
        ([Task("a"), ""], "''"),
    ],
)
def test_bad_tasks_for_a_weighting_are_named(tasks, named):
    with pytest.raises(MtlzooError, match=named):
        create_weighting("equal", tasks)
    with pytest.raises(MtlzooError, match=named):
        mtlzoo.weighting.Uncertainty(tasks)


def test_a_trainer_takes_a_weighting_built_from_the_model_tasks():
    tasks = [Task("a"), Task("b", kind="regression")]
    model = mtlzoo.create_model("mmoe", in_features=3, tasks=tasks)
    weighting = create_weighting("uncertainty", model.tasks)
    trainer = mtlzoo.Trainer(model, weighting=weighting, batch_size=16, progress=False)
    g = torch.Generator().manual_seed(0)
    data = {"x": torch.randn(32, 3, generator=g), "a": torch.randint(0, 2, (32,), generator=g),
            "b": torch.randn(32, generator=g)}
    history = trainer.fit(data, epochs=1)
    # log_vars start at 0: the classification weight exp(-s) ~ 1, the regression one ~ 1/2
    assert history["a/weight"].item() == pytest.approx(1.0, abs=0.05)
    assert history["b/weight"].item() == pytest.approx(0.5, abs=0.05)


# --- uncertainty: Kendall et al. per task kind --------------------------------------------


def uncertainty_at(log_vars, tasks=KIND_TASKS):
    weighting = create_weighting("uncertainty", tasks)
    with torch.no_grad():
        weighting.log_vars.copy_(torch.tensor(log_vars))
    return weighting


def test_uncertainty_total_and_weights_per_kind_are_the_paper():
    s = [0.5, -1.0, 0.25]
    losses = {"r": torch.tensor(2.0), "b": torch.tensor(3.0), "m": torch.tensor(0.7)}
    weighting = uncertainty_at(s)
    weights = weighting.weights(losses)
    expected_weights = [0.5 * math.exp(-0.5), math.exp(1.0), math.exp(-0.25)]
    torch.testing.assert_close(weights, torch.tensor(expected_weights), rtol=1e-14, atol=0)
    # regression L / (2 sigma^2) + log sigma, classification L / sigma^2 + log sigma
    expected = (0.5 * math.exp(-0.5) * 2.0 + 0.25
                + math.exp(1.0) * 3.0 - 0.5
                + math.exp(-0.25) * 0.7 + 0.125)
    assert weighting.total(losses, weights).item() == pytest.approx(expected, rel=1e-14)


def test_uncertainty_follows_the_task_names_not_the_step_order():
    weighting = uncertainty_at([0.0, 0.0, 0.0])
    losses = {"m": torch.tensor(1.0), "r": torch.tensor(1.0)}
    assert weighting.weights(losses).tolist() == [1.0, 0.5]


def test_uncertainty_gradient_and_fixed_point_per_kind():
    losses = {"r": torch.tensor(2.0), "b": torch.tensor(3.0), "m": torch.tensor(0.7)}
    loss = torch.tensor([2.0, 3.0, 0.7])
    s = torch.tensor([0.3, -0.2, 1.1])
    weighting = uncertainty_at(s.tolist())
    weighting.backward(losses, [], [])
    scale = torch.tensor([0.5, 1.0, 1.0])
    torch.testing.assert_close(weighting.log_vars.grad, -scale * torch.exp(-s) * loss + 0.5)
    # the optimum: s = log L (regression), s = log 2L (classification); there w_t L_t = 1/2
    optimum = torch.cat([loss[:1].log(), (2 * loss[1:]).log()])
    weighting = uncertainty_at(optimum.tolist())
    weighting.backward(losses, [], [])
    torch.testing.assert_close(weighting.log_vars.grad, torch.zeros(3), atol=1e-14, rtol=0)
    torch.testing.assert_close(weighting.weights(losses) * loss, torch.full((3,), 0.5))


def test_uncertainty_names_alone_take_the_regression_form():
    s = [0.5, -1.0]
    losses = {"x": torch.tensor(2.0), "y": torch.tensor(3.0)}
    by_name = uncertainty_at(s, ("x", "y"))
    as_regression = uncertainty_at(s, (Task("x", kind="regression"),
                                       Task("y", kind="regression")))
    for weighting in (by_name, as_regression):
        weights = weighting.weights(losses)
        torch.testing.assert_close(weights, 0.5 * torch.exp(-torch.tensor(s)))
        expected = 0.5 * math.exp(-0.5) * 2.0 + 0.25 + 0.5 * math.exp(1.0) * 3.0 - 0.5
        assert weighting.total(losses, weights).item() == pytest.approx(expected, rel=1e-14)


# --- gradient methods return the weights they applied --------------------------------------

GRADIENT_METHODS = [name for name in list_weightings()
                    if issubclass(mtlzoo.weighting.get_weighting_class(name), GradientWeighting)]
CONFLICTING = torch.tensor([[1.0, 0.2, 0.0, 0.5], [-1.0, 1.0, 0.3, 0.0],
                            [0.1, -1.0, 1.0, -0.4]], dtype=F64)


@pytest.mark.parametrize("name", GRADIENT_METHODS)
@pytest.mark.parametrize("seed", range(4))
def test_gradient_methods_return_the_weights_of_their_update(name, seed):
    weighting = create_weighting(name, ["a", "b", "c"], **({"seed": seed} if name == "pcgrad"
                                                             else {}))
    update, weights = weighting.combine(CONFLICTING, torch.ones(3))
    torch.testing.assert_close(update, weights @ CONFLICTING, rtol=1e-12, atol=1e-12)


def test_pcgrad_weights_are_the_projection_coefficients():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    # g1^PC = g1 + 0.5 g2, g2^PC = g2 + g1: the update is 2 g1 + 1.5 g2
    for grads, expected in (((g1, g2), [2.0, 1.5]), ((g2, g1), [1.5, 2.0])):
        _, weights = create_weighting("pcgrad", ["a", "b"], seed=0).combine(
            torch.stack(grads), torch.ones(2))
        torch.testing.assert_close(weights, torch.tensor(expected))


def test_pcgrad_backward_returns_the_weights_it_applied():
    torch.manual_seed(0)
    shared = [torch.randn(3, 2, requires_grad=True)]
    x = torch.randn(6, 2)
    hidden = x @ shared[0].T
    losses = {"a": hidden[:, 0].mean(), "b": -hidden[:, 0].mean() + hidden[:, 1].square().mean()}
    grads = torch.stack([torch.autograd.grad(loss, shared, retain_graph=True)[0].reshape(-1)
                         for loss in losses.values()])
    weights = create_weighting("pcgrad", ["a", "b"], seed=0).backward(losses, shared, [])
    assert not torch.equal(weights, torch.ones(2))  # the two gradients conflict
    torch.testing.assert_close(shared[0].grad.reshape(-1), weights @ grads)


# --- metrics: non-finite predictions -------------------------------------------------------

KIND_CASES = {
    "binary": (torch.tensor([[-2.0], [1.0], [0.5], [-0.3]]), torch.tensor([0, 1, 1, 0])),
    "multiclass": (torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0],
                                 [1.0, 0.0, 0.0]]), torch.tensor([0, 1, 2, 1])),
    "regression": (torch.tensor([[0.5], [1.0], [2.0], [3.5]]), torch.tensor([0.0, 1.0, 2.0, 3.0])),
}


@pytest.mark.parametrize("kind", list(KIND_CASES))
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("row", [0, 3])
def test_a_non_finite_prediction_makes_every_metric_of_the_task_nan(kind, bad, row):
    logits, labels = KIND_CASES[kind]
    assert all(math.isfinite(v) for v in task_metrics(kind, logits, labels).values())
    logits = logits.clone()
    logits[row, 0] = bad
    result = task_metrics(kind, logits, labels)
    assert list(result) == list(KIND_METRICS[kind])
    assert all(math.isnan(v) for v in result.values()), result


@pytest.mark.parametrize("kind", list(KIND_CASES))
def test_labels_are_checked_before_a_non_finite_prediction_gives_nan(kind):
    logits, _ = KIND_CASES[kind]
    logits = torch.full_like(logits, math.nan)
    bad = torch.tensor([0, 1, 7, 0]) if kind != "regression" else torch.ones(3)
    with pytest.raises(MtlzooError):
        task_metrics(kind, logits, bad)


NAN_PREDICTION = torch.tensor([0.0, math.nan, 1.0, 2.0])
TARGETS = torch.tensor([0.0, 1.0, 1.0, 2.0])


@pytest.mark.parametrize("metric", [auc, accuracy, mse, rmse, r2, mae],
                         ids=lambda f: f.__name__)
def test_a_nan_prediction_makes_each_metric_nan(metric):
    labels = (TARGETS > 0).long() if metric is auc else TARGETS
    assert math.isfinite(metric(NAN_PREDICTION.nan_to_num(0.0), labels))
    assert math.isnan(metric(NAN_PREDICTION, labels))


def test_accuracy_of_a_nan_label_is_nan():
    assert math.isnan(accuracy(TARGETS, NAN_PREDICTION))


def test_macro_f1_of_a_nan_prediction_raises():
    with pytest.raises(MtlzooError, match=r"pred_classes.*nan"):
        macro_f1(NAN_PREDICTION, TARGETS.long(), 3)
