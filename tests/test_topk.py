"""Sparse top-k gates (``gate="topk"``): FLOPs, identities, the loop reference, the loss."""

from __future__ import annotations

import inspect
import math
from functools import partial

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import mtlzoo
from mtlzoo.layers import NoisyTopKGates, StackedMLP, mix_experts, sparse_mixture
from mtlzoo.layers.topk import _dispatch
from mtlzoo.reference import loop_version
from tests import test_models as contracts
from tests.conftest import IN_FEATURES, build

GATED = ["mmoe", "omoe", "cgc", "ple"]


def step_flops(run) -> int:
    """FLOPs of ``run()``'s forward and of the backward of its sum."""
    with FlopCounterMode(display=False) as counter:
        run().sum().backward()
    return counter.get_total_flops()


# ---- FLOPs: a step's expert work scales with k, not E -------------------------------------

def balanced_gate(num_experts: int = 64, width: int = 32) -> tuple[NoisyTopKGates, torch.Tensor]:
    """One top-2 gate over 64 experts and a batch of 64 one-hot rows: row r reads feature
    j = r mod 32, whose logits are 1 at experts 2j and 2j+1 and 0 elsewhere, so every expert
    is chosen by exactly 64 * 2 / 64 = 2 rows (no padding)."""
    gates = NoisyTopKGates(1, width, num_experts, top_k=2, noise=False).eval()
    with torch.no_grad():
        gates.logits.weight.zero_()
        features = torch.arange(width)
        gates.logits.weight[0, features, 2 * features] = 1.0
        gates.logits.weight[0, features, 2 * features + 1] = 1.0
    x = torch.eye(width).repeat(num_experts // width, 1)
    return gates, x


def test_top2_of_64_experts_costs_2_64ths_of_the_dense_expert_flops():
    """Padded to the busiest expert's count c, the experts run E * c rows instead of the
    dense B * E: a ratio of c / B, which is k / E = 2/64 when the routing is balanced
    (c = B k / E), as here; the mixture reads k outputs a gate instead of E, also k / E. So
    experts and mixture, forward and backward, cost 2/64 of the dense ones, up to the bias:
    the dense first layer folds it into its matmul as an extra input feature (d + 1 = 33,
    counted), the padded bmm adds it apart (not counted), so the ratio lies in
    [2/64 * 32/33, 2/64]. The whole layer adds the gate's logits (clean and noise, 2E
    columns a row, ~1% of the dense experts at d = 32, widths (64, 64)): below 2/64 + 0.015."""
    torch.manual_seed(0)
    gates, x = balanced_gate()
    experts = StackedMLP(64, 32, (64, 64))
    with torch.no_grad():
        routing = gates(x)
    assert torch.equal(torch.bincount(routing.experts.flatten(), minlength=64),
                       torch.full((64,), 2))
    dense = step_flops(lambda: mix_experts(routing.weights, experts(x)))
    sparse = step_flops(
        lambda: sparse_mixture(routing.experts, routing.expert_weights, [experts], [x]))
    assert 2 / 64 * 32 / 33 <= sparse / dense <= 2 / 64

    dense_gates = mtlzoo.layers.SoftmaxGates(1, 32, 64)
    whole_dense = step_flops(lambda: dense_gates(x, experts(x))[0])
    whole_sparse = step_flops(lambda: gates.mix(gates(x), [experts], [x]))
    assert whole_sparse < (2 / 64 + 0.015) * whole_dense


def test_with_several_gates_the_experts_run_the_union_of_their_choices():
    """T gates choose at most T k (row, expert) pairs a row, run once each however many
    gates chose them: the experts run E * c rows, c the busiest expert's count (padding
    included), forward and weight gradient 2 * 2 E c d h FLOPs, at most T k / E of the
    dense ones when balanced and never more than the dense B * E rows."""
    torch.manual_seed(0)
    b, t, k, e, d, h = 96, 4, 2, 32, 16, 24
    gates = NoisyTopKGates(t, d, e, top_k=k).eval()
    experts = StackedMLP(e, d, (h,))
    x = torch.randn(b, d)
    with torch.no_grad():
        routing = gates(x)
    rows, _ = _dispatch(routing.experts, e)
    busiest = rows.shape[1]
    with FlopCounterMode(display=False) as counter:
        sparse_mixture(routing.experts, routing.expert_weights, [experts], [x]).sum().backward()
    counts = {str(op): flops for op, flops in counter.get_flop_counts()["Global"].items()}
    mixing = 2 * (2 * b * t * k * h)  # (1, k) @ (k, h) a (row, gate), and its input gradient
    assert counts == {"aten.baddbmm": 2 * e * busiest * d * h,
                      "aten.bmm": 2 * e * busiest * d * h + mixing}
    assert busiest < b


# ---- identities in float64 ----------------------------------------------------------------

@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize(("name", "options", "k"), [
    ("mmoe", {}, 5), ("omoe", {}, 5), ("cgc", {}, 4),
    ("ple", {"num_task_experts": 0, "num_shared_experts": 3}, 3),  # every gate sees all 3
])
def test_k_equal_to_the_experts_is_the_dense_softmax_model(name, options, k):
    dense = build(name, **options).eval()
    topk = build(name, gate="topk", top_k=k, gate_noise=False, **options).eval()
    topk.load_state_dict(dense.state_dict())
    x = torch.randn(7, IN_FEATURES)
    ours, theirs = topk(x), dense(x)
    for key in theirs.logits:
        torch.testing.assert_close(ours.logits[key], theirs.logits[key], rtol=0, atol=1e-12)
    for key in theirs.gate_weights:
        torch.testing.assert_close(ours.gate_weights[key], theirs.gate_weights[key],
                                   rtol=0, atol=1e-12)


def loop_gradients(model: nn.Module, loop: nn.Module) -> dict[str, torch.Tensor]:
    """The loop version's gradients, stacked like ``model``'s parameters (one nn.Linear per
    group there: its weight is the transposed slice)."""
    loops = dict(loop.named_modules())
    grads = {}
    for path, module in model.named_modules():
        twin = loops.get(path)  # None inside a replaced module (handled with it)
        if twin is None:
            continue
        if isinstance(module, StackedMLP):
            linears = [[m for m in mlp if isinstance(m, nn.Linear)] for mlp in twin.per_group]
            stacked = [f"{path}.layers.{i}" for i in range(len(module.layers))]
        elif isinstance(module, NoisyTopKGates | mtlzoo.layers.StackedLinear):
            per_group = twin.linears if isinstance(module, NoisyTopKGates) else twin.per_group
            linears = [[linear] for linear in per_group]
            stacked = [f"{path}.logits" if isinstance(module, NoisyTopKGates) else path]
        else:
            continue
        for i, prefix in enumerate(stacked):
            grads[f"{prefix}.weight"] = torch.stack([grad(g[i].weight).T for g in linears])
            if linears[0][i].bias is not None:
                grads[f"{prefix}.bias"] = torch.stack([grad(g[i].bias) for g in linears])
    return grads


def grad(param: nn.Parameter) -> torch.Tensor:
    """The gradient, zeros where the parameter was not used (an unselected task's)."""
    return torch.zeros_like(param) if param.grad is None else param.grad


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("tasks", [None, ["score", "topic"]])
@pytest.mark.parametrize("name", GATED)
def test_sparse_path_equals_the_loop_reference_with_noise(name, tasks):
    """Training mode, noise on: both draw the same noise; forward, gate weights, aux_loss
    (with the smooth load estimate) and every parameter's gradient agree."""
    model = build(name, gate="topk").train()
    loop = loop_version(model)
    x = torch.randn(11, IN_FEATURES)
    outputs = []
    for module in (model, loop):
        torch.manual_seed(3)
        out = module(x, tasks=tasks)
        (sum(v.pow(2).sum() for v in out.logits.values()) + 10 * out.aux_loss).backward()
        outputs.append(out)
    ours, theirs = outputs
    assert ours.aux_loss > 0
    for key in ours.logits:
        torch.testing.assert_close(ours.logits[key], theirs.logits[key], rtol=0, atol=1e-10)
    for key in ours.gate_weights:
        torch.testing.assert_close(ours.gate_weights[key], theirs.gate_weights[key],
                                   rtol=0, atol=1e-12)
    torch.testing.assert_close(ours.aux_loss, theirs.aux_loss, rtol=0, atol=1e-12)
    reference = loop_gradients(model, loop)
    params = dict(model.named_parameters())
    assert set(reference) == set(params)
    for key, param in params.items():
        torch.testing.assert_close(param.grad, reference[key], rtol=0, atol=1e-10, msg=key)


# ---- the load-balancing loss ----------------------------------------------------------------

def test_load_balancing_loss_by_hand():
    """Two rows, three experts, top 2, no noise: logits (2, 1, 0) and (0, 1, 2) keep experts
    {0, 1} and {2, 1} with weights p = sigmoid(1) and q = 1 - p. Importance (p, 2q, p), mean
    2/3, population variance 2 (p - 2/3)^2: CV^2 = 4.5 (p - 2/3)^2. Load (1, 2, 1), mean
    4/3, variance 2/9: CV^2 = 1/8. aux = 0.1 CV^2(importance) + 0.1 CV^2(load)."""
    gates = NoisyTopKGates(1, 2, 3, top_k=2, noise=False)
    with torch.no_grad():
        gates.logits.weight.copy_(torch.tensor([[[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]]]))
    routing = gates(torch.eye(2))
    p = 1 / (1 + math.exp(-1))
    assert routing.experts.tolist() == [[[0, 1]], [[2, 1]]]
    torch.testing.assert_close(routing.weights, torch.tensor([[[p, 1 - p, 0]], [[0, 1 - p, p]]]))
    expected = 0.1 * 4.5 * (p - 2 / 3) ** 2 + 0.1 / 8
    assert routing.aux_loss.item() == pytest.approx(expected, rel=1e-6)


def test_smooth_load_by_hand():
    """One row, two experts, top 1, noisy training: P(x, i) = Phi((clean_i - H_j) / s_i),
    H_j the other expert's noisy logit (the k-th largest of the others), s = softplus of the
    noise logits. Importance is (1, 0): CV^2 = 1. Load (P_0, P_1): CV^2 = ((P_0 - P_1) /
    (P_0 + P_1))^2."""
    gates = NoisyTopKGates(1, 1, 2, top_k=1).train()
    with torch.no_grad():
        gates.logits.weight.copy_(torch.tensor([[[0.5, -0.25, 0.3, -1.0]]]))
    torch.manual_seed(7)
    routing = gates(torch.ones(1, 1))
    torch.manual_seed(7)
    noise = torch.randn(1, 1, 2)[0, 0].tolist()
    clean, scale = (0.5, -0.25), [math.log1p(math.exp(v)) for v in (0.3, -1.0)]
    noisy = [c + n * s for c, n, s in zip(clean, noise, scale, strict=True)]
    phi = [0.5 * (1 + math.erf((clean[i] - noisy[1 - i]) / scale[i] / math.sqrt(2)))
           for i in (0, 1)]
    top = 0 if noisy[0] > noisy[1] else 1
    assert routing.experts.item() == top
    expected = 0.1 * 1.0 + 0.1 * ((phi[0] - phi[1]) / (phi[0] + phi[1])) ** 2
    assert routing.aux_loss.item() == pytest.approx(expected, rel=1e-5)


def test_training_adds_noise_and_eval_does_not():
    torch.manual_seed(0)
    model = build("mmoe", gate="topk")
    quiet = build("mmoe", gate="topk", gate_noise=False)
    with torch.no_grad():
        quiet.gates.logits.weight.copy_(model.gates.logits.weight[..., :5])
    quiet.load_state_dict({k: v for k, v in model.state_dict().items()
                           if not k.startswith("gates.")}, strict=False)
    x = torch.randn(16, IN_FEATURES)
    first, second = model(x).gate_weights["gates"], model(x).gate_weights["gates"]
    assert not torch.equal(first, second)
    model.eval()
    quiet.train()  # no noise to add: training mode changes nothing
    for out in (model(x), model(x)):
        torch.testing.assert_close(out.gate_weights["gates"], quiet(x).gate_weights["gates"],
                                   rtol=0, atol=0)
        for key, logits in quiet(x).logits.items():
            torch.testing.assert_close(out.logits[key], logits, rtol=0, atol=0)


# ---- bad options ------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "options", "message"), [
    ("mmoe", {"top_k": 0}, "top_k must be an integer from 1 to 5 .*got 0"),
    ("omoe", {"top_k": 6}, "top_k must be an integer from 1 to 5 .*got 6"),
    ("mmoe", {"top_k": 2.0}, "top_k .*got 2.0"),
    ("cgc", {"top_k": 5}, r"top_k must be an integer from 1 to 4 \(the experts a gate may use\)"
                          ", got 5"),
    ("ple", {"top_k": -1}, "got -1"),
    ("mmoe", {"gate_noise": "yes"}, "noise must be True or False, got 'yes'"),
])
def test_bad_top_k_options_are_refused(name, options, message):
    with pytest.raises(mtlzoo.MtlzooError, match=message):
        build(name, gate="topk", **options)


@pytest.mark.parametrize("name", GATED)
def test_an_unknown_gate_is_refused(name):
    with pytest.raises(mtlzoo.MtlzooError, match="gate must be 'softmax' or 'topk', got 'top2'"):
        build(name, gate="top2")


# ---- the model contract with gate="topk" -----------------------------------------------------

# every contract test of test_models.py taking only the model's name runs on gate="topk",
# but these (with the reason)
NOT_CONTRACTS = {
    "test_builds_with_only_in_features_and_tasks": "builds the default gate, softmax",
    "test_bf16_autocast_works_and_stays_close": "training mode draws new noise each call: "
                                                "test_topk_models_under_bf16_autocast_in_eval",
}
CONTRACTS = [
    test for name, test in vars(contracts).items()
    if name.startswith("test_") and name not in NOT_CONTRACTS
    and list(inspect.signature(test).parameters) == ["model_name"]
]


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda test: test.__name__[5:])
@pytest.mark.parametrize("name", GATED)
def test_topk_models_keep_the_model_contract(name, contract, monkeypatch):
    """test_models.py's contract tests, their models built with gate="topk"."""
    monkeypatch.setattr(contracts, "build", partial(build, gate="topk"))
    contract(name)


@pytest.mark.parametrize("name", GATED)
def test_topk_models_task_subsets_return_the_full_calls_values(name, monkeypatch):
    monkeypatch.setattr(contracts, "build", partial(build, gate="topk"))
    for subset in (["topic"], ["score", "income"]):
        contracts.test_a_task_subset_returns_the_full_calls_values(name, subset)


@pytest.mark.parametrize("name", GATED)
def test_topk_models_under_bf16_autocast_in_eval(name):
    """The contract's bf16 check in eval mode (training draws fresh noise each call)."""
    torch.manual_seed(0)
    model = build(name, gate="topk").eval()
    x = torch.randn(6, IN_FEATURES)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x)
    for key, logits in model(x).logits.items():
        assert low.logits[key].dtype == torch.bfloat16
        torch.testing.assert_close(low.logits[key].float(), logits, atol=2e-2, rtol=2e-2)


# ---- the speed harness (mtlzoo.bench.topk_speed), on a tiny size in this process ---------------

def test_topk_speed_benchmark_writes_its_tables(tmp_path, monkeypatch):
    import pandas as pd

    from mtlzoo.bench import topk_speed

    monkeypatch.setattr(topk_speed, "in_fresh_process", lambda function, *args: function(*args))
    tiny = topk_speed.Size(batch_size=16, in_features=8, expert_width=8, tower_width=4)
    previous = torch.get_num_threads()
    try:
        result = topk_speed.benchmark(tmp_path, processes=2, repeats=1, warmup=1,
                                      experts=[4, 8], size=tiny, threads=[1])
    finally:
        torch.set_num_threads(previous)
    table = pd.read_csv(tmp_path / "topk_speed.csv")
    assert list(table.columns) == topk_speed.COLUMNS
    assert table.E.tolist() == [4, 8] and table.processes.tolist() == [2, 2]
    assert (table.rows_run <= 1).all() and (table.speedup > 0).all()
    eight = table[table.E == 8].iloc[0]
    assert eight.topk_gflop < eight.dense_gflop  # 2 gates x top 2 of 8: fewer rows run
    assert len(pd.read_csv(tmp_path / "topk_speed_runs.csv")) == 4
    assert "load average (1, 5, 15 min) before / after the run" in result.markdown
    assert result.report == tmp_path / "topk_speed.md"


def test_topk_speed_models_share_the_dense_weights():
    from mtlzoo.bench import topk_speed

    dense, topk = topk_speed.models(6, topk_speed.Size(in_features=8, expert_width=8))
    assert torch.equal(topk.experts.layers[0].weight, dense.experts.layers[0].weight)
    assert torch.equal(topk.gates.logits.weight[..., :6], dense.gates.logits.weight)
    assert torch.equal(topk.heads.output.weight, dense.heads.output.weight)
