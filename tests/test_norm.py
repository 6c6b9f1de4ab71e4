"""The ``norm`` option (batch or layer normalisation in every MLP layer), batched against one
``nn.BatchNorm1d`` / ``nn.LayerNorm`` per group in float64, and the model contracts with it."""

from __future__ import annotations

import inspect
import io

import pytest
import torch
from torch import nn

import mtlzoo
from mtlzoo.layers import StackedMLP, TaskHeads
from mtlzoo.reference import LoopMLP, loop_version
from tests.conftest import IN_FEATURES, build, mixed_tasks

NORMS = ("batch", "layer")
GROUPS, IN, DIMS = 4, 5, (6, 3)


def models_with_norm() -> list[str]:
    """Every registered architecture whose builder takes ``norm=``."""
    return [name for name in mtlzoo.list_models()
            if "norm" in inspect.signature(mtlzoo.get_model_builder(name)).parameters]


def stacked_with_state(norm: str) -> StackedMLP:
    """A float64 StackedMLP whose norm weights, biases and running statistics are random (not
    their initial ones, so a wrong group or a missed update shows)."""
    torch.manual_seed(0)
    mlp = StackedMLP(GROUPS, IN, DIMS, norm=norm).double()
    with torch.no_grad():
        for stacked_norm in mlp.norms:
            for tensor in stacked_norm.parameters():
                tensor.uniform_(0.5, 1.5)
            if norm == "batch":
                stacked_norm.running_mean.normal_()
                stacked_norm.running_var.uniform_(0.5, 2.0)
    return mlp


def loop_parts(loop: LoopMLP, kind: type) -> list[list[nn.Module]]:
    """Per group, its modules of type ``kind`` in layer order."""
    return [[m for m in sequential if isinstance(m, kind)] for sequential in loop.per_group]


NORM_CLASS = {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm}


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("index", [None, [3, 1]])
@pytest.mark.parametrize("shared_input", [True, False])
def test_batched_norm_equals_one_norm_module_per_group_in_train_mode(norm, index, shared_input):
    mlp = stacked_with_state(norm)
    loop = LoopMLP(mlp)
    groups = list(range(GROUPS)) if index is None else index
    shape = (7, IN) if shared_input else (7, len(groups), IN)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    before = [(n.running_mean.clone(), n.running_var.clone()) for n in mlp.norms
              if norm == "batch"]

    ours, theirs = mlp(x, index), loop(x, index)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    weights = torch.randn_like(ours)
    (ours * weights).sum().backward()
    x_grad_ours, x.grad = x.grad, None
    (theirs * weights).sum().backward()
    torch.testing.assert_close(x_grad_ours, x.grad, rtol=0, atol=1e-12)
    linears, norms = loop_parts(loop, nn.Linear), loop_parts(loop, NORM_CLASS[norm])
    for g in range(GROUPS):
        for depth, layer in enumerate(mlp.layers):
            selected = g in groups
            expected = linears[g][depth].weight.grad
            expected = expected.T if selected else torch.zeros_like(layer.weight[g])
            torch.testing.assert_close(layer.weight.grad[g], expected, rtol=0, atol=1e-12)
            stacked_norm, own = mlp.norms[depth], norms[g][depth]
            for name in ("weight", "bias"):
                expected = (getattr(own, name).grad if selected
                            else torch.zeros(DIMS[depth], dtype=torch.float64))
                torch.testing.assert_close(getattr(stacked_norm, name).grad[g], expected,
                                           rtol=0, atol=1e-12)
            if norm == "batch":  # updated for the selected groups only, like their modules
                torch.testing.assert_close(stacked_norm.running_mean[g], own.running_mean,
                                           rtol=0, atol=1e-12)
                torch.testing.assert_close(stacked_norm.running_var[g], own.running_var,
                                           rtol=0, atol=1e-12)
                changed = not torch.equal(stacked_norm.running_mean[g], before[depth][0][g])
                assert changed == selected


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("index", [None, [2, 0, 3]])
def test_batched_norm_equals_one_norm_module_per_group_in_eval_mode(norm, index):
    mlp = stacked_with_state(norm).eval()
    loop = LoopMLP(mlp).eval()
    state = {name: tensor.clone() for name, tensor in mlp.state_dict().items()}
    x = torch.randn(5, IN, dtype=torch.float64)
    torch.testing.assert_close(mlp(x, index), loop(x, index), rtol=0, atol=1e-12)
    # eval mode reads the running statistics and leaves them as they were
    for name, tensor in mlp.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_batch_norm_in_train_mode_reads_the_running_statistics_for_a_batch_of_one_row():
    mlp = StackedMLP(3, IN, (4,), norm="batch")
    mlp(torch.randn(8, IN))  # running statistics that are not the initial ones
    state = {name: tensor.clone() for name, tensor in mlp.state_dict().items()}
    row = torch.randn(1, IN)
    torch.testing.assert_close(mlp(row), mlp.eval()(row), rtol=0, atol=0)
    for name, tensor in mlp.state_dict().items():  # and leaves them as they were
        assert torch.equal(tensor, state[name]), name
    assert StackedMLP(3, IN, (4,), norm="layer")(torch.randn(1, IN)).shape == (1, 3, 4)


def test_an_epoch_whose_last_batch_is_one_row_trains_with_batch_norm():
    torch.manual_seed(0)
    model = mtlzoo.create_model("mmoe", in_features=IN, tasks=[mtlzoo.Task("y")],
                                num_experts=3, expert_dims=(4,), tower_dims=(3,),
                                norm="batch")
    data = {"x": torch.randn(9, IN), "y": torch.randint(0, 2, (9,))}
    history = mtlzoo.Trainer(model, batch_size=4, progress=False).fit(data, epochs=2)
    assert len(history) == 2 and history["y/train_loss"].notna().all()


def test_a_bad_norm_is_an_error_naming_it():
    with pytest.raises(mtlzoo.MtlzooError, match="'group'"):
        StackedMLP(3, IN, (4,), norm="group")
    with pytest.raises(mtlzoo.MtlzooError, match="'group'"):
        TaskHeads(mixed_tasks(), IN, (4,), norm="group")
    for name in models_with_norm():
        with pytest.raises(mtlzoo.MtlzooError, match="'group'"):
            build(name, norm="group")


def test_without_norm_there_are_no_new_state_dict_keys():
    keys = set(StackedMLP(3, IN, DIMS).state_dict())
    assert keys == {f"layers.{i}.{p}" for i in range(2) for p in ("weight", "bias")}
    for name in models_with_norm():
        assert not any("norms." in key for key in build(name).state_dict()), name


def test_towers_norm_and_task_subsets_update_only_those_towers():
    torch.manual_seed(0)
    heads = TaskHeads(mixed_tasks(), IN, (4,), norm="batch")
    heads(torch.randn(6, 2, IN), [2, 0])
    moved = heads.towers.norms[0].running_mean.abs().sum(1) > 0
    assert moved.tolist() == [True, False, True]


def test_run_jointly_with_norm_runs_each_mlp_on_its_own():
    from mtlzoo.layers import run_jointly

    torch.manual_seed(0)
    mlps = [StackedMLP(g, IN, DIMS, norm="batch").double() for g in (2, 3)]
    x = torch.randn(6, IN, dtype=torch.float64)
    separate = torch.cat([mlp(x) for mlp in mlps], dim=1)
    stats = [n.running_mean.clone() for mlp in mlps for n in mlp.norms]
    jointly = run_jointly(mlps, x)
    torch.testing.assert_close(jointly, separate, rtol=0, atol=1e-12)
    # the second pass saw the same batch: each running mean moved on from the first pass
    for before, after in zip(stats, (n.running_mean for mlp in mlps for n in mlp.norms),
                             strict=True):
        assert not torch.equal(before, after)


# the key contract checks (tests/test_models.py) with a norm, for every model that takes one

@pytest.fixture(params=models_with_norm())
def norm_model(request) -> str:
    return request.param


def seeded(name: str, norm: str, seed: int = 0, **overrides) -> mtlzoo.MultiTaskModel:
    torch.manual_seed(seed)
    return build(name, norm=norm, **overrides)


def trained_a_step(model: mtlzoo.MultiTaskModel) -> mtlzoo.MultiTaskModel:
    """The model after one train-mode forward (its running statistics moved), in eval mode."""
    with torch.no_grad():
        model.train()(torch.randn(8, IN_FEATURES, dtype=next(model.parameters()).dtype))
    return model.eval()


@pytest.mark.parametrize("norm", NORMS)
def test_contract_shapes_and_gradients_with_norm(norm_model, norm):
    model = seeded(norm_model, norm)
    out = model(torch.randn(9, IN_FEATURES))
    assert {name: tuple(v.shape) for name, v in out.logits.items()} == {
        "income": (9, 1), "topic": (9, 4), "score": (9, 1)
    }
    loss = sum(logits.pow(2).mean() for logits in out.logits.values()) + out.aux_loss
    loss.backward()
    norm_names = {name for name, _ in model.named_parameters() if ".norms." in name}
    assert norm_names, "the model has no norm parameters"
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        if ".norms." in name:
            assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("norm", NORMS)
def test_contract_matches_its_loop_version_with_norm_in_train_and_eval_mode(norm_model, norm):
    model = seeded(norm_model, norm).double()
    loop = loop_version(model)
    x = torch.randn(6, IN_FEATURES, dtype=torch.float64)
    for tasks in (None, ["score", "topic"]):
        for mode in (True, False):  # train (updating the running statistics), then eval
            ours, theirs = model.train(mode)(x, tasks=tasks), loop.train(mode)(x, tasks=tasks)
            for name in ours.logits:
                torch.testing.assert_close(ours.logits[name], theirs.logits[name],
                                           rtol=0, atol=1e-10)
            for name in ours.gate_weights:
                torch.testing.assert_close(ours.gate_weights[name], theirs.gate_weights[name],
                                           rtol=0, atol=1e-10)


@pytest.mark.parametrize("norm", NORMS)
def test_contract_state_dict_round_trip_and_eval_rows_with_norm(norm_model, norm):
    model = trained_a_step(seeded(norm_model, norm, seed=1).double())
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    restored = seeded(norm_model, norm, seed=2).double().eval()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(5, IN_FEATURES, dtype=torch.float64)
    full = model(x)
    for name, logits in full.logits.items():
        torch.testing.assert_close(restored(x).logits[name], logits, rtol=0, atol=0)
        alone = model(x[2:3]).logits[name]  # eval mode: a row does not depend on its batch
        torch.testing.assert_close(alone, logits[2:3])
    part = model(x, tasks=["score", "income"])
    for name in part.logits:
        torch.testing.assert_close(part.logits[name], full.logits[name], rtol=0, atol=1e-12)


@pytest.mark.parametrize("norm", NORMS)
def test_contract_bf16_autocast_with_norm(norm_model, norm):
    model = seeded(norm_model, norm)
    x = torch.randn(6, IN_FEATURES)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trained = model(x)  # train mode runs (a batch of 6's statistics amplify bf16's error)
    assert all(torch.isfinite(logits).all() for logits in trained.logits.values())
    model = trained_a_step(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x)
    full = model(x)
    for name, logits in full.logits.items():
        assert low.logits[name].dtype == torch.bfloat16
        torch.testing.assert_close(low.logits[name].float(), logits, atol=2e-2, rtol=2e-2)


def census_cli(tmp_path, monkeypatch, *options: str) -> tuple[list, list[str]]:
    """The census suite's command line on a tiny written data set, with ``options``, one seed
    of the demo size, its training replaced (not tested here): the models it builds are
    appended to the list returned beside the argv."""
    from mtlzoo.bench import census
    from tests.test_census_income import write_pair

    built = []

    def fit_and_score(model, data, weighting, seed, **budget):
        built.append(model)
        return {"main_auc": 0.9, "aux_auc": 0.99, "best_epoch": 1, "train_s": 0.0}

    monkeypatch.setattr(census, "fit_and_score", fit_and_score)
    write_pair(tmp_path / "census")
    return built, ["bench", "quality", "--suite", "census", "--size", "demo", "--census-path",
                   str(tmp_path / "census"), "--out", str(tmp_path), "--quiet", "--seeds", "1",
                   *options]


def test_census_suite_runs_a_norm_and_a_subset_and_says_so(tmp_path, monkeypatch, capsys):
    import pandas as pd

    from mtlzoo import cli

    built, argv = census_cli(tmp_path, monkeypatch, "--norm", "batch",
                             "--models", "mmoe,single_task")
    assert cli.main(argv) == 0
    assert len(built) == 4 and all(
        {module.norm for module in model.modules() if isinstance(module, StackedMLP)}
        == {"batch"} for model in built)
    runs = pd.read_csv(tmp_path / "quality_census_norm_batch_demo_runs.csv")
    assert sorted(set(runs.model)) == ["mmoe", "single_task"] and set(runs.seed) == {0}
    report = (tmp_path / "quality_census_norm_batch_demo.md").read_text()
    assert "norm='batch'" in report and f"`mtlzoo {' '.join(argv)}`" in report
    assert not (tmp_path / "quality_census_demo_runs.csv").exists()
    capsys.readouterr()
    assert cli.main([*argv[:-1], "mmo"]) == 1
    assert "unknown model(s) ['mmo']" in capsys.readouterr().err
    assert cli.main(["bench", "quality", "--suite", "synthetic", "--norm", "batch"]) == 1
    assert "--norm, --gate-norm and --models are for --suite census" in capsys.readouterr().err


def test_batch_norm_is_refused_with_top_k_gates_and_layer_norm_matches_the_loop():
    with_gate = [name for name in models_with_norm()
                 if "gate" in inspect.signature(mtlzoo.get_model_builder(name)).parameters]
    assert with_gate, "no model takes both gate= and norm="
    x = torch.randn(16, IN_FEATURES, dtype=torch.float64)
    for name in with_gate:
        with pytest.raises(mtlzoo.MtlzooError, match="gate='topk'"):
            build(name, norm="batch", gate="topk")
        model = seeded(name, "layer", gate="topk", gate_noise=False).double()
        ours, theirs = model(x), loop_version(model)(x)
        for task in ours.logits:
            torch.testing.assert_close(ours.logits[task], theirs.logits[task], rtol=0,
                                       atol=1e-10)


# gate_norm: the softmax gates' logits normalised before the softmax (torch-rechub's gates)

def models_with_gate_norm() -> list[str]:
    """Every registered architecture whose builder takes ``gate_norm=``."""
    return [name for name in mtlzoo.list_models()
            if "gate_norm" in inspect.signature(mtlzoo.get_model_builder(name)).parameters]


def test_the_softmax_gated_models_take_gate_norm():
    assert set(models_with_gate_norm()) == {"mmoe", "omoe", "cgc", "ple"}


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("index", [None, [2, 0]])
@pytest.mark.parametrize("restricted", [False, True])
def test_gate_norm_equals_one_norm_module_per_gate_in_train_and_eval_mode(norm, index,
                                                                          restricted):
    from mtlzoo.layers import SoftmaxGates
    from mtlzoo.reference import LoopGates

    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 0, 1]], dtype=torch.bool)
    gates = SoftmaxGates(3, IN, 4, mask=mask if restricted else None, norm=norm).double()
    with torch.no_grad():  # not the initial affine and statistics: a wrong gate shows
        for tensor in gates.norm.parameters():
            tensor.uniform_(0.5, 1.5)
        if norm == "batch":
            gates.norm.running_mean.normal_()
            gates.norm.running_var.uniform_(0.5, 2.0)
    loop = LoopGates(gates)
    unselected_before = gates.norm.running_mean[1].clone() if norm == "batch" else None
    selected = [0, 1, 2] if index is None else index
    experts = torch.randn(7, 4, 3, dtype=torch.float64)
    for shape in ((7, IN), (7, len(selected), IN)):
        x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
        for mode in (True, False):  # train (updating the running statistics), then eval
            (mixed, weights), (loop_mixed, loop_weights) = (
                gates.train(mode)(x, experts, index), loop.train(mode)(x, experts, index))
            torch.testing.assert_close(weights, loop_weights, rtol=0, atol=1e-12)
            torch.testing.assert_close(mixed, loop_mixed, rtol=0, atol=1e-12)
            ours = torch.autograd.grad(mixed.square().sum(), x)[0]
            theirs = torch.autograd.grad(loop_mixed.square().sum(), x)[0]
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
            if norm == "batch":  # each gate's statistics, the unselected ones untouched
                for g, own in enumerate(loop.norms):
                    torch.testing.assert_close(gates.norm.running_mean[g], own.running_mean,
                                               rtol=0, atol=1e-12)
                    torch.testing.assert_close(gates.norm.running_var[g], own.running_var,
                                               rtol=0, atol=1e-12)
    if index is not None and norm == "batch":  # gate 1 never ran
        assert torch.equal(gates.norm.running_mean[1], unselected_before)


@pytest.mark.parametrize("name", models_with_gate_norm())
@pytest.mark.parametrize("gate_norm", NORMS)
def test_gate_norm_models_match_their_loop_version_in_train_and_eval_mode(name, gate_norm):
    torch.manual_seed(0)
    model = build(name, norm="batch", gate_norm=gate_norm).double()
    loop = loop_version(model)
    gate_norms = [m for m in model.modules() if getattr(m, "norm", None) is not None
                  and type(m).__name__ == "SoftmaxGates"]
    assert gate_norms, "no gate has a norm"
    x = torch.randn(6, IN_FEATURES, dtype=torch.float64)
    for tasks in (None, ["score", "topic"]):
        for mode in (True, False):
            ours, theirs = model.train(mode)(x, tasks=tasks), loop.train(mode)(x, tasks=tasks)
            for key in ours.logits:
                torch.testing.assert_close(ours.logits[key], theirs.logits[key], rtol=0,
                                           atol=1e-10)
            for key in ours.gate_weights:
                torch.testing.assert_close(ours.gate_weights[key], theirs.gate_weights[key],
                                           rtol=0, atol=1e-10)
    loss = sum(logits.square().mean() for logits in model.train()(x).logits.values())
    loss.backward()
    for gates in gate_norms:
        assert gates.norm.weight.grad.abs().sum() > 0


def test_gate_norm_is_checked_and_refused_with_top_k_gates():
    for name in models_with_gate_norm():
        with pytest.raises(mtlzoo.MtlzooError, match="'group'"):
            build(name, gate_norm="group")
        with pytest.raises(mtlzoo.MtlzooError, match=r"gate_norm='batch'.*gate='topk'"):
            build(name, gate_norm="batch", gate="topk")
        assert not any(".norm." in key for key in build(name).state_dict()), name


def test_census_suite_builds_the_gated_models_with_gate_norm_and_names_its_tables(
        tmp_path, monkeypatch):
    from mtlzoo import cli
    from mtlzoo.layers import SoftmaxGates

    built, argv = census_cli(tmp_path, monkeypatch, "--norm", "batch", "--gate-norm", "layer",
                             "--models", "mmoe,ple,shared_bottom")
    assert cli.main(argv) == 0
    gate_norms = {type(model).__name__: {type(gates.norm).__name__ for gates in model.modules()
                                         if isinstance(gates, SoftmaxGates)}
                  for model in built}
    assert gate_norms == {"MMoE": {"_StackedLayerNorm"}, "PLE": {"_StackedLayerNorm"},
                          "SharedBottom": set()}
    report = (tmp_path / "quality_census_norm_batch_gate_norm_layer_demo.md").read_text()
    assert "gate_norm='layer'" in report and "norm='batch'" in report
    assert cli.main(["bench", "quality", "--suite", "synthetic", "--gate-norm", "batch"]) == 1
