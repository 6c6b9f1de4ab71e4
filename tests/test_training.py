"""The trainer: both data regimes, label masks, sample weights, errors, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

import mtlzoo
from mtlzoo import MtlzooError, Task, Trainer
from mtlzoo.train import read_checkpoint

D = 6
TASKS = [
    Task("click", kind="binary"),
    Task("topic", kind="multiclass", num_classes=3),
    Task("price", kind="regression"),
]


def joint_data(rows: int = 512, seed: int = 0) -> dict[str, torch.Tensor]:
    """Three learnable tasks of one linear signal each."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, D, generator=g)
    return {
        "x": x,
        "click": (x[:, 0] + 0.3 * x[:, 1] > 0).long(),
        "topic": torch.bucketize(x[:, 2].contiguous(), torch.tensor([-0.5, 0.5])),
        "price": 2 * x[:, 3] - x[:, 4],
    }


def model(name: str = "mmoe", tasks=TASKS, **options) -> mtlzoo.MultiTaskModel:
    torch.manual_seed(0)
    return mtlzoo.create_model(name, in_features=D, tasks=tasks, **options)


def trainer(net=None, **options) -> Trainer:
    options = {"lr": 1e-2, "batch_size": 64, "progress": False, **options}
    return Trainer(net or model(), **options)


# --- the joint-label regime ----------------------------------------------------------------


def test_joint_regime_learns_every_task():
    data = joint_data()
    t = trainer()
    before = t.evaluate(joint_data(256, seed=1))
    history = t.fit(data, eval=joint_data(256, seed=1), epochs=8)
    after = t.evaluate(joint_data(256, seed=1))
    assert after.loc["click", "auc"] > 0.95 and after.loc["topic", "accuracy"] > 0.8
    assert after.loc["price", "r2"] > 0.9
    assert (after["loss"] < before["loss"]).all()
    assert list(history.epoch) == list(range(1, 9))
    assert {"click/train_loss", "click/weight", "price/r2", "topic/macro_f1"} <= set(history)


def assert_same_sgd_step(*batches: tuple[dict, int]) -> None:
    """One SGD step from the same initial weights on each (batch, batch size) leaves the same
    weights; in float64, so the updates compare exactly."""
    results = []
    for batch, size in batches:
        t = trainer(model().double(), batch_size=size, optimizer="sgd")
        t.fit(dict(batch, x=batch["x"].double()), steps=1)
        results.append(t.model.state_dict())
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=0, atol=1e-12)


def test_missing_labels_add_nothing():
    """A step on rows whose label is masked (or NaN) equals the step without those rows."""
    data = joint_data(64)
    keep = torch.arange(64) % 3 != 0
    masked = dict(data, click_mask=keep, topic_mask=keep,
                  price=torch.where(keep, data["price"], math.nan))
    dropped = {key: value[keep] for key, value in data.items()}
    assert_same_sgd_step((masked, 64), (dropped, 64))


def test_masked_rows_leave_the_metrics():
    data = joint_data(100)
    data["click_mask"] = torch.arange(100) < 40
    table = trainer().evaluate(data)
    assert table.loc["click", "rows"] == 40 and table.loc["topic", "rows"] == 100


def test_a_row_weight_of_two_counts_the_row_twice():
    data = joint_data(32)
    weighted = dict(data, weight=torch.ones(32).index_fill(0, torch.tensor([5]), 2.0))
    doubled = {key: torch.cat([value, value[5:6]]) for key, value in data.items()}
    assert_same_sgd_step((weighted, 32), (doubled, 33))


def test_trains_from_a_datasets_dataset_and_a_dataloader():
    import datasets

    data = joint_data(128)
    dataset = datasets.Dataset.from_dict({k: v.numpy() for k, v in data.items()})
    t = trainer()
    t.fit(dataset, epochs=1)
    assert t.step == 2
    rows = [{k: v[i] for k, v in data.items()} for i in range(128)]
    loader = torch.utils.data.DataLoader(rows, batch_size=32)
    t.fit(loader, epochs=2)
    assert t.step == 2 + 4


# --- the per-task-dataset regime -----------------------------------------------------------


def per_task_data(rows=(96, 32)):
    a, b = joint_data(rows[0], seed=2), joint_data(rows[1], seed=3)
    return {"click": {"x": a["x"], "label": a["click"]},
            "topic": {"x": b["x"], "topic": b["topic"]}}


TWO = [Task("click"), Task("topic", kind="multiclass", num_classes=3)]


def test_each_task_batch_runs_only_its_own_head(monkeypatch):
    net = model(tasks=TWO)
    calls = []
    forward = net.forward

    def spy(x, tasks=None):
        calls.append((x.clone(), tasks))
        return forward(x, tasks=tasks)

    monkeypatch.setattr(net, "forward", spy)
    data = per_task_data()
    t = trainer(net, batch_size=32)
    t.fit(data, steps=1)
    assert [tasks for _, tasks in calls] == [["click"], ["topic"]]
    for (x, _), name in zip(calls, ["click", "topic"], strict=True):  # its own rows only
        rows_of = {task: data[task]["x"] for task in data}
        assert _rows_within(x, rows_of[name])
        assert not _rows_within(x, rows_of["topic" if name == "click" else "click"])


def _rows_within(x: torch.Tensor, pool: torch.Tensor) -> bool:
    return bool((x[:, None, :] == pool[None]).all(-1).any(1).all())


def test_a_task_batch_gives_the_other_head_no_gradient():
    net = model(tasks=TWO)
    t = trainer(net, batch_size=32, sampling="proportional")
    t.optimizer = torch.optim.SGD(net.parameters(), lr=0.0)  # keep weights, look at grads
    data = per_task_data()
    t.fit({"click": data["click"], "topic": data["topic"]}, steps=1)
    grads = net.heads.output.weight.grad
    touched = [bool(grads[i].abs().sum() > 0) for i in range(2)]
    assert sum(touched) == 1  # proportional sampling: one task's batch in the step


@pytest.mark.parametrize(
    ("sampling", "steps"), [("round_robin", 3), ("proportional", 4), ("temperature", 4)]
)
def test_epoch_length_per_sampling(sampling, steps):
    t = trainer(model(tasks=TWO), batch_size=32, sampling=sampling)
    t.fit(per_task_data(), epochs=1)
    assert t.step == steps  # 96 and 32 rows: 3 and 1 batches


def test_round_robin_restarts_the_shorter_task():
    net = model(tasks=TWO)
    seen = []
    forward = net.forward
    net.forward = lambda x, tasks=None: (seen.append(tasks[0]), forward(x, tasks=tasks))[1]
    trainer(net, batch_size=32).fit(per_task_data(), epochs=1)
    assert seen == ["click", "topic"] * 3


def test_per_task_regime_learns_both_tasks():
    t = trainer(model(tasks=TWO), batch_size=32)
    data = per_task_data((512, 512))
    t.fit(data, epochs=6)
    table = t.evaluate(per_task_data((256, 256)))
    assert table.loc["click", "auc"] > 0.9 and table.loc["topic", "accuracy"] > 0.7


@pytest.mark.parametrize("weighting", mtlzoo.list_weightings())
@pytest.mark.parametrize("regime", ["joint", "per_task"])
def test_every_weighting_trains_in_both_regimes_with_masks(weighting, regime):
    options = {"weights": {"click": 1.0, "topic": 0.5}} if weighting == "fixed" else {}
    t = trainer(model(tasks=TWO), weighting=weighting, weighting_options=options,
                batch_size=32)
    if regime == "joint":
        data = joint_data(96)
        data = {"x": data["x"], "click": data["click"], "topic": data["topic"],
                "click_mask": torch.arange(96) % 2 == 0}
    else:
        data = per_task_data()
    history = t.fit(data, epochs=3)
    assert len(history) == 3
    for param in t.model.parameters():
        assert torch.isfinite(param).all()


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "labels", "fragment"),
    [
        ("click", torch.full((64,), 2), "2"),
        ("click", torch.full((64,), 0.5), "0.5"),
        ("topic", torch.full((64,), 3), "3"),
        ("topic", torch.full((64,), -1), "-1"),
        ("price", torch.full((64,), math.inf), "inf"),
    ],
)
def test_a_label_out_of_range(task, labels, fragment):
    data = dict(joint_data(64), **{task: labels})
    with pytest.raises(MtlzooError, match=task) as err:
        trainer().fit(data, steps=1)
    assert fragment in str(err.value)


def test_data_naming_a_task_the_model_lacks_and_the_reverse():
    data = per_task_data()
    with pytest.raises(MtlzooError, match="'clik'") as err:
        trainer(model(tasks=TWO)).fit({"clik": data["click"], "topic": data["topic"]}, steps=1)
    assert "'click'" in str(err.value)
    with pytest.raises(MtlzooError, match="'topic'"):
        trainer(model(tasks=TWO)).fit({"click": data["click"]}, steps=1)
    with pytest.raises(MtlzooError, match="'price'"):  # joint data without a task's labels
        trainer().fit({k: v for k, v in joint_data(64).items() if k != "price"}, steps=1)


def test_an_empty_loader():
    data = per_task_data()
    data["topic"] = torch.utils.data.DataLoader([], batch_size=4)
    with pytest.raises(MtlzooError, match=r"'topic'.*empty"):
        trainer(model(tasks=TWO)).fit(data, steps=1)


def test_a_missing_input_column():
    with pytest.raises(MtlzooError, match="'features'"):
        trainer(input_key="features").fit(joint_data(64), steps=1)


def test_a_nan_loss_names_task_and_step_and_keeps_the_checkpoint(tmp_path):
    path = tmp_path / "run.pt"
    t = trainer()
    t.fit(joint_data(128), epochs=1, checkpoint=path)
    saved = path.read_bytes()
    bad = joint_data(128)
    bad["x"][:] = math.nan
    with pytest.raises(MtlzooError, match=r"'click': the loss is nan at step 3"):
        t.fit(bad, epochs=3, checkpoint=path, checkpoint_every=1)
    assert path.read_bytes() == saved  # the failed run wrote nothing over it


def test_epochs_or_steps():
    with pytest.raises(MtlzooError, match="exactly one"):
        trainer().fit(joint_data(64), epochs=1, steps=1)
    with pytest.raises(MtlzooError, match="exactly one"):
        trainer().fit(joint_data(64))


# --- checkpoints ---------------------------------------------------------------------------


def test_checkpoint_round_trip_and_weights_only(tmp_path):
    path = tmp_path / "run.pt"
    t = trainer(weighting="uncertainty")
    t.fit(joint_data(128), epochs=2, checkpoint=path)
    state = read_checkpoint(path)["trainer"]
    assert (state["step"], state["epoch"], state["position"]["steps"]) == (4, 2, 0)
    fresh = trainer(model(), weighting="uncertainty")
    fresh.load(path)
    for key, value in t.model.state_dict().items():
        assert torch.equal(fresh.model.state_dict()[key], value)
    assert fresh.history.equals(t.history)
    assert not list(tmp_path.glob(".run.pt.*"))  # no temporary file left behind


def test_loading_into_another_setup_is_refused(tmp_path):
    path = tmp_path / "run.pt"
    trainer().fit(joint_data(64), steps=1, checkpoint=path)
    with pytest.raises(MtlzooError, match="weighting"):
        trainer(weighting="dwa").load(path)
    with pytest.raises(MtlzooError, match="tasks"):
        trainer(model(tasks=TWO)).load(path)
    with pytest.raises(MtlzooError, match="no checkpoint"):
        trainer().load(tmp_path / "missing.pt")


def test_early_stopping_restores_the_best_epoch():
    data, held_out = joint_data(256), joint_data(128, seed=5)
    t = trainer(lr=5e-2)
    history = t.fit(data, eval=held_out, epochs=30, early_stopping="price/mse", patience=2)
    best = int(history["price/mse"].idxmin()) + 1
    assert t.best_epoch == best
    assert len(history) == min(30, best + 2)  # stopped after 2 epochs without improvement
    assert t.evaluate(held_out).loc["price", "mse"] == pytest.approx(
        history["price/mse"].min(), rel=1e-6
    )


def test_early_stopping_needs_eval_data_and_a_known_column():
    with pytest.raises(MtlzooError, match="eval="):
        trainer().fit(joint_data(64), epochs=1, early_stopping="price/mse")
    with pytest.raises(MtlzooError, match="'prise/mse'"):
        trainer().fit(joint_data(64), eval=joint_data(64), epochs=1, early_stopping="prise/mse")


def test_named_adam_optimizers_use_the_fused_kernel_and_train_alike():
    """Adam and AdamW step every parameter in one fused kernel (on CPU 5x the per-parameter
    loop); the result is the loop's, to rounding."""
    torch.manual_seed(0)
    tasks = [mtlzoo.Task("a"), mtlzoo.Task("b", kind="regression")]
    x = torch.randn(64, 4)
    data = {"x": x, "a": (x[:, 0] > 0).long(), "b": x[:, 1]}
    trained = {}
    for name in ("adam", "adamw"):
        for fused in (True, False):
            torch.manual_seed(0)
            model = mtlzoo.create_model("mmoe", in_features=4, tasks=tasks, num_experts=3)
            optimizer = name if fused else (
                lambda params, cls=mtlzoo.train.options.OPTIMIZERS[name]: cls(
                    params, lr=1e-2, weight_decay=0.1, foreach=False))
            trainer = mtlzoo.Trainer(model, optimizer=optimizer, lr=1e-2, weight_decay=0.1,
                                     batch_size=16, progress=False)
            assert trainer.optimizer.defaults.get("fused") is (True if fused else None)
            trainer.fit(data, epochs=2)
            trained[fused] = model.state_dict()
        for key, value in trained[True].items():
            torch.testing.assert_close(value, trained[False][key], rtol=1e-5, atol=1e-6)
