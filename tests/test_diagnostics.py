"""mtlzoo.diagnostics and Trainer(diagnostics_every=N): gate statistics on hand-computed
weights, the collapse warning, gradient cosines against a naive per-task autograd loop,
and training that logs them taking exactly the steps of training that does not."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.distributed as dist

import mtlzoo
from mtlzoo import diagnostics
from mtlzoo.diagnostics import ExpertCollapseWarning
from mtlzoo.errors import MtlzooError
from tests.conftest import IN_FEATURES, build

TASKS = ["income", "topic", "score"]

# (b=2, g=2, e=3): gate 0 sure then split 1:3, gate 1 uniform
WEIGHTS = torch.tensor([[[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]],
                        [[0.25, 0.75, 0.0], [1 / 3, 1 / 3, 1 / 3]]], dtype=torch.float64)
SPLIT_ENTROPY = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))


def test_entropy_load_and_top_share_match_hand_computed_values():
    assert diagnostics.gate_entropy(WEIGHTS).tolist() == pytest.approx(
        [SPLIT_ENTROPY / 2, math.log(3)])
    load = diagnostics.expert_load(WEIGHTS)
    torch.testing.assert_close(load, torch.tensor([[0.625, 0.375, 0.0], [1 / 3, 1 / 3, 1 / 3]],
                                                  dtype=torch.float64))
    assert diagnostics.top_expert_share(WEIGHTS)[0].tolist() == [0.5, 0.5, 0.0]
    load_entropy = -(0.625 * math.log(0.625) + 0.375 * math.log(0.375))
    assert diagnostics.effective_experts(load).tolist() == pytest.approx(
        [math.exp(load_entropy), 3.0])


def test_gate_statistics_name_the_rows_by_task_and_shared_gate():
    stats = diagnostics.gate_statistics({"level1": WEIGHTS}, ["income"])  # 2 rows: PLE's
    assert stats["gate entropy/level1/income"] == pytest.approx(SPLIT_ENTROPY / 2)
    # income's gate gives expert 2 no weight: normalised by log 2, the experts it reaches
    assert stats["normalised entropy/level1/income"] == pytest.approx(
        SPLIT_ENTROPY / 2 / math.log(2))
    assert stats["normalised entropy/level1/shared"] == pytest.approx(1.0)
    assert stats["expert load/level1/income/1"] == pytest.approx(0.375)
    assert stats["top expert/level1/shared/0"] == 1.0  # ties go to the first expert
    assert stats["effective experts/level1/shared"] == pytest.approx(3.0)
    assert diagnostics.gate_statistics({}, TASKS) == {}


@pytest.mark.parametrize(("rows", "selected", "gate", "expected"), [
    (3, TASKS, "gates", TASKS),                           # MMoE, PLE's last level
    (4, TASKS, "level1", [*TASKS, "shared"]),             # PLE's levels before the last
    (1, TASKS, "gates", ["shared"]),                      # OMoE's one gate
    (1, ["topic"], "gates", ["topic"]),                   # a forward of topic's batch alone
    (4, ["topic"], "level1", [*TASKS, "shared"]),         # PLE's first level on topic's batch
    (2, TASKS, "transfer", ["topic", "score"]),           # AITM: the tasks after the first
    (1, ["score"], "transfer", ["score"]),
    (6, TASKS, "gates", ["0", "1", "2", "3", "4", "5"]),  # anything else: by position
])
def test_gate_rows(rows, selected, gate, expected):
    assert diagnostics.gate_rows(rows, selected, TASKS, gate) == expected


def test_gate_statistics_average_over_the_forwards_of_a_step():
    sums = diagnostics.GateSums(["a", "b"])
    sums.add({"gates": WEIGHTS[:, :1]}, ["a"])      # rows: a's batch
    sums.add({"gates": WEIGHTS[:1, 1:]}, ["b"])     # b's batch, one row
    sums.add({"gates": WEIGHTS[1:, :1]}, ["a"])     # a's again
    columns = sums.columns()
    assert columns["expert load/gates/a/0"] == pytest.approx((1.0 + 0.25 + 0.25) / 3)
    assert columns["expert load/gates/b/2"] == pytest.approx(1 / 3)


def test_bad_gate_weights_are_refused():
    with pytest.raises(MtlzooError, match="gate_weights\\['gates'\\]"):
        diagnostics.gate_statistics({"gates": torch.ones(2, 3)}, TASKS)
    with pytest.raises(MtlzooError, match="gate_weights"):
        diagnostics.gate_statistics([WEIGHTS], TASKS)


def test_collapse_warning_on_a_collapsed_gate_not_on_a_uniform_one():
    collapsed = torch.tensor([[[0.96, 0.02, 0.02]], [[0.92, 0.04, 0.04]]])
    uniform = torch.full((2, 1, 3), 1 / 3)
    row = diagnostics.gate_statistics({"gates": collapsed, "other": uniform}, ["a"])
    assert diagnostics.collapsed_gates(row) == ["gates/a"]
    # AITM's transfer weights weigh two inputs, not experts: no collapse looked for
    assert diagnostics.collapsed_gates(
        diagnostics.gate_statistics({"transfer": collapsed}, ["z", "a"])) == []
    with pytest.warns(ExpertCollapseWarning, match="'gates/a' has collapsed.*expert 0"):
        assert diagnostics.warn_collapse(row) == ["gates/a"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert diagnostics.warn_collapse(row, skip=["gates/a"]) == []
        assert diagnostics.warn_collapse(
            diagnostics.gate_statistics({"gates": uniform}, ["a"])) == []
    # max_load is the criterion: 0.6 of the load on one expert is collapse at 0.5
    split = torch.tensor([[[0.6, 0.4]]])
    assert diagnostics.collapsed_gates(diagnostics.gate_statistics({"g": split}, ["a"])) == []
    assert diagnostics.collapsed_gates(diagnostics.gate_statistics({"g": split}, ["a"]),
                                       max_load=0.5) == ["g/a"]
    for bad in (0, 1.5, "0.9", None):
        with pytest.raises(MtlzooError, match="max_load"):
            diagnostics.collapsed_gates(row, max_load=bad)


def _losses(model, x, labels):
    out = model(x)
    return {name: torch.nn.functional.mse_loss(logits[:, 0], labels[:, t])
            for t, (name, logits) in enumerate(out.logits.items())}


def _naive_cosine(losses, params):
    grads = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        loss, params, retain_graph=True, allow_unused=True, materialize_grads=True)])
        for loss in losses.values()]
    return torch.tensor([[torch.nn.functional.cosine_similarity(a, b, dim=0).item()
                          for b in grads] for a in grads], dtype=torch.float64)


@pytest.mark.parametrize("batched", [True, False])
def test_gradient_cosine_equals_a_naive_per_task_loop(float64, batched):
    tasks = [mtlzoo.Task(name, kind="regression") for name in TASKS]
    model = build("mmoe", tasks)
    x, labels = torch.randn(16, IN_FEATURES), torch.randn(16, 3)
    losses = _losses(model, x, labels)
    shared = model.shared_parameters()
    cosine = diagnostics.gradient_cosine(losses, shared, batched=batched, retain_graph=True)
    assert cosine.dtype == torch.float64
    torch.testing.assert_close(cosine, _naive_cosine(losses, shared), rtol=1e-12, atol=1e-12)
    assert all(p.grad is None for p in model.parameters())  # nothing added to .grad


def test_gradient_cosine_is_one_for_identical_tasks_and_minus_one_for_opposed(float64):
    model = build("mmoe", [mtlzoo.Task(name, kind="regression") for name in TASKS])
    loss = _losses(model, torch.randn(8, IN_FEATURES), torch.randn(8, 3))["income"]
    cosine = diagnostics.gradient_cosine({"a": loss, "b": loss, "c": -loss},
                                         model.shared_parameters())
    torch.testing.assert_close(cosine, torch.tensor([[1.0, 1, -1], [1, 1, -1], [-1, -1, 1]],
                                                    dtype=torch.float64))


def test_gradient_cosine_refuses_bad_input():
    model = build("mmoe")
    with pytest.raises(MtlzooError, match="losses"):
        diagnostics.gradient_cosine({}, model.shared_parameters())
    with pytest.raises(MtlzooError, match="require grad"):
        diagnostics.gradient_cosine(torch.ones(2, requires_grad=True), [torch.ones(3)])


def test_loss_ratios():
    assert diagnostics.loss_ratios({"a": 0.5, "b": 1.0}, {"a": 2.0}) == pytest.approx(
        {"loss ratio/a": 0.25, "loss ratio/b": math.nan}, nan_ok=True)


# --- the trainer ---------------------------------------------------------------------------

def _joint_data(rows=48):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(rows, IN_FEATURES, generator=g)
    return {"x": x, "income": (x[:, 0] > 0).long(), "topic": x[:, 1:5].argmax(dim=1),
            "score": x[:, 2], "income_mask": torch.arange(rows) % 3 != 0}


def _per_task_data():
    data = _joint_data(60)
    return {"income": {"x": data["x"][:20], "label": data["income"][:20]},
            "topic": {"x": data["x"][20:40], "label": data["topic"][20:40]},
            "score": {"x": data["x"][40:], "label": data["score"][40:]}}


def _train(name="mmoe", weighting="equal", regime="joint", steps=6, **options):
    torch.manual_seed(0)
    model = build(name, dropout=0.1)
    trainer = mtlzoo.Trainer(model, weighting=weighting, lr=1e-2, batch_size=16,
                             progress=False, **options)
    trainer.fit(_joint_data() if regime == "joint" else _per_task_data(), steps=steps)
    return trainer


@pytest.mark.parametrize(("name", "weighting", "regime"), [
    ("mmoe", "equal", "joint"), ("ple", "pcgrad", "joint"), ("omoe", "uncertainty", "per_task"),
])
def test_training_with_diagnostics_equals_training_without(name, weighting, regime):
    plain = _train(name, weighting, regime)
    rng = torch.get_rng_state()
    logged = _train(name, weighting, regime, diagnostics_every=2)
    assert torch.equal(torch.get_rng_state(), rng)  # no random number drawn
    for key, value in plain.model.state_dict().items():
        assert torch.equal(value, logged.model.state_dict()[key]), key
    for key, value in plain.optimizer.state_dict()["state"].items():
        assert all(torch.equal(v, logged.optimizer.state_dict()["state"][key][k])
                   for k, v in value.items() if isinstance(v, torch.Tensor))
    assert plain.history.equals(logged.history[plain.history.columns])
    assert plain.diagnostics.empty and logged.diagnostics.step.tolist() == [2, 4, 6]


def test_the_history_holds_each_epochs_mean_of_the_per_row_diagnostics():
    trainer = _train("ple", diagnostics_every=2)  # 3 steps an epoch: steps 2 | 4, 6 logged
    history, frame = trainer.history, trainer.diagnostics
    summary = [c for c in frame.columns if c.startswith(diagnostics.SUMMARY_COLUMNS)]
    per_expert = [c for c in frame.columns if c.startswith(("expert load/", "top expert/"))]
    assert summary and per_expert
    assert {"gate entropy/level1/income", "grad cosine/income~topic",
            "loss ratio/score"} <= set(summary)
    assert set(summary) <= set(history.columns) and not set(per_expert) & set(history.columns)
    for epoch, steps in ((1, [2]), (2, [4, 6])):
        expected = frame[frame.step.isin(steps)][summary].mean()  # pandas skips NaN
        got = history[history.epoch == epoch][summary].iloc[0]
        torch.testing.assert_close(torch.tensor(got.to_numpy(dtype=float)),
                                   torch.tensor(expected.to_numpy(dtype=float)),
                                   equal_nan=True, rtol=1e-12, atol=0)
    assert diagnostics.epoch_summary([]) == {}
    nan_then_one = diagnostics.epoch_summary([{"loss ratio/a": math.nan, "step": 1},
                                              {"loss ratio/a": 1.0, "step": 2}])
    assert nan_then_one == {"loss ratio/a": 1.0}
    assert math.isnan(diagnostics.epoch_summary([{"loss ratio/a": math.nan}])["loss ratio/a"])


def test_a_logged_step_hands_the_optimizer_the_gradients_of_a_step_that_is_not():
    seen = {}
    for every in (None, 1):
        torch.manual_seed(0)
        trainer = mtlzoo.Trainer(build("ple", dropout=0.1), batch_size=16, progress=False,
                                 diagnostics_every=every)
        step, params = trainer.optimizer.step, list(trainer.model.parameters())

        def recording_step(step=step, params=params, every=every):
            seen.setdefault(every, []).append([p.grad.clone() for p in params])
            step()

        trainer.optimizer.step = recording_step
        trainer.fit(_joint_data(), steps=2)
    for plain, logged in zip(seen[None], seen[1], strict=True):
        assert all(torch.equal(a, b) for a, b in zip(plain, logged, strict=True))


def test_the_diagnostics_frame_has_a_row_per_logged_step_and_its_columns():
    frame = _train("ple", steps=7, diagnostics_every=3).diagnostics
    assert frame.step.tolist() == [3, 6] and frame.epoch.tolist() == [1, 2]
    assert {"gate entropy/level1/income", "normalised entropy/level1/shared",
            "effective experts/level3/score", "expert load/level1/shared/7",
            "top expert/level2/topic/0", "grad cosine/income~topic",
            "grad cosine/topic~score", "loss ratio/score"} <= set(frame.columns)
    assert "expert load/level3/shared/0" not in frame  # the last level has no shared gate
    loads = frame.filter(like="expert load/level1/income/")
    assert loads.sum(axis=1).tolist() == pytest.approx([1.0, 1.0])
    assert (frame.filter(like="grad cosine").abs() <= 1).all().all()


def test_the_per_task_regime_logs_the_tasks_of_each_step():
    frame = _train("mmoe", regime="per_task", steps=4, diagnostics_every=1,
                   sampling="proportional").diagnostics
    # one task's batch a step: its gate row and loss ratio, no pair to take a cosine of
    assert frame.filter(like="grad cosine").empty
    ratios, entropies = frame.filter(like="loss ratio/"), frame.filter(like="gate entropy/")
    assert (ratios.notna().sum(axis=1) == 1).all()
    for (_, ratio), (_, entropy) in zip(ratios.iterrows(), entropies.iterrows(), strict=True):
        assert ({c.split("/")[-1] for c in ratio.dropna().index}
                == {c.split("/")[-1] for c in entropy.dropna().index})
    for column in ratios:  # 1 at each task's first step
        assert ratios[column].dropna().iloc[0] == 1.0


def test_diagnostics_are_checkpointed_and_resume_exactly(tmp_path):
    whole = _train("mmoe", steps=6, diagnostics_every=2)
    first = _train("mmoe", steps=3, diagnostics_every=2)
    first.save(tmp_path / "run.pt")
    torch.manual_seed(5)  # the resumed run must not depend on it
    resumed = mtlzoo.Trainer(build("mmoe", dropout=0.1), lr=1e-2, batch_size=16,
                             progress=False, diagnostics_every=2)
    resumed.load(tmp_path / "run.pt")
    assert resumed.diagnostics.step.tolist() == [2]
    resumed.fit(_joint_data(), steps=6)
    assert resumed.diagnostics.equals(whole.diagnostics)
    # a state written before diagnostics existed loads with none
    state = first.state.to_dict()
    del state["diagnostics"], state["first_losses"]
    loaded = mtlzoo.train.TrainerState.from_dict(state)
    assert loaded.diagnostics == [] and loaded.first_losses == {}


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "3"])
def test_bad_diagnostics_every_is_refused(bad):
    with pytest.raises(MtlzooError, match="diagnostics_every"):
        mtlzoo.Trainer(build("mmoe"), diagnostics_every=bad)


def test_diagnostics_are_refused_under_ddp(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0,
                            world_size=1)
    try:
        with pytest.raises(MtlzooError, match=r"diagnostics_every=2: .* one process only"):
            mtlzoo.Trainer(build("mmoe"), strategy="ddp", diagnostics_every=2)
    finally:
        dist.destroy_process_group()


def test_the_trainer_warns_once_when_a_gate_collapses():
    torch.manual_seed(0)
    model = build("mmoe")
    data = _joint_data()
    data["x"][:, -1] = 1.0
    with torch.no_grad():  # income's gate: expert 3 wins on every row
        model.gates.logits.weight[0].zero_()
        model.gates.logits.weight[0, -1, 3] = 20.0
    trainer = mtlzoo.Trainer(model, lr=1e-4, batch_size=16, progress=False,
                             diagnostics_every=1)
    with pytest.warns(ExpertCollapseWarning, match="'gates/income' has collapsed at step 1"
                      ) as caught:
        trainer.fit(data, steps=3)
    assert len([w for w in caught if w.category is ExpertCollapseWarning]) == 1
    assert trainer.diagnostics["expert load/gates/income/3"].min() > 0.99


def test_the_expert_load_figure_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    from mtlzoo.bench.figures import expert_load_figure

    frame = _train("ple", steps=2, diagnostics_every=2).diagnostics
    path = expert_load_figure(frame, tmp_path / "load.png")
    assert path == tmp_path / "load.png" and path.stat().st_size > 0
    with pytest.raises(MtlzooError, match="no row of step 5"):
        expert_load_figure(frame, tmp_path / "x.png", step=5)
    with pytest.raises(MtlzooError, match="no gates"):
        expert_load_figure(_train("shared_bottom", steps=2, diagnostics_every=2).diagnostics,
                           tmp_path / "x.png")


def test_the_command_line_draws_the_expert_load(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from mtlzoo.cli import main

    path = tmp_path / "load.png"
    assert main(["train", "--model", "omoe", "--rows", "60", "--epochs", "1", "--quiet",
                 "--batch-size", "16", "--diagnostics-every", "2",
                 "--diagnostics-plot", str(path)]) == 0
    assert path.stat().st_size > 0 and str(path) in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--model", "omoe", "--diagnostics-plot", str(path)])
    assert "give both" in capsys.readouterr().err
