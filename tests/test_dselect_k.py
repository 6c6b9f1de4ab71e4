"""DSelect-k: its gate on hand-computed values, the identities it must satisfy, its options."""

from __future__ import annotations

import math

import pytest
import torch

import mtlzoo
from mtlzoo.layers import DSelectGates
from mtlzoo.reference import LoopDSelectGates
from tests.conftest import IN_FEATURES, build, mixed_tasks

pytestmark = pytest.mark.usefixtures("float64")


def bias_only(gates: DSelectGates, bias: list[float]) -> DSelectGates:
    """The gates' logits set to ``bias`` whatever the input (the weight zeroed)."""
    with torch.no_grad():
        gates.logits.weight.zero_()
        gates.logits.bias.copy_(torch.tensor(bias).expand_as(gates.logits.bias))
    return gates


@pytest.mark.parametrize("gamma", [1.0, 0.3, 4.0])
def test_smooth_step_at_and_between_its_breakpoints(gamma):
    # one selector over 2 experts (m = 1) whose code logit is x: expert 1 gets S(x)
    gates = DSelectGates(1, 1, 2, num_selectors=1, gamma=gamma)
    with torch.no_grad():
        gates.logits.weight.copy_(torch.tensor([[[1.0, 0.0]]]))
        gates.logits.bias.zero_()
    z = torch.tensor([-2 * gamma, -gamma / 2, -gamma / 4, 0.0, gamma / 4, gamma / 2, 2 * gamma])
    z.requires_grad_()
    step = gates.weights(z.unsqueeze(1))[0][:, 0, 1]
    # the cubic at -+gamma/4: 1 - 0.84375 and -2/64 + 3/8 + 1/2 = 0.84375
    assert step.tolist() == pytest.approx([0, 0, 0.15625, 0.5, 0.84375, 1, 1], abs=1e-15)
    assert step[[0, 1]].tolist() == [0.0, 0.0] and step[[5, 6]].tolist() == [1.0, 1.0]
    # continuously differentiable: the slope is 0 at -+gamma/2 and 3 / (2 gamma) at 0
    grad = torch.autograd.grad(step.sum(), z)[0]
    assert grad.tolist() == pytest.approx([0, 0, 1.125 / gamma, 1.5 / gamma, 1.125 / gamma, 0, 0])


def test_a_hand_computed_gate_on_two_experts():
    # one input feature, one gate, k = 2 selectors over E = 2 experts (m = 1 code bit); the
    # logits are (z_1, z_2, w_1, w_2) = x * (0.5, -0.2, 0, 2 ln 3)
    gates = DSelectGates(1, 1, 2, num_selectors=2, gamma=1.0)
    with torch.no_grad():
        gates.logits.weight.copy_(torch.tensor([[[0.5, -0.2, 0.0, 2 * math.log(3)]]]))
        gates.logits.bias.zero_()
    x = torch.tensor([[0.5], [-2.0]])
    experts = torch.tensor([[[0.0], [1.0]]]).expand(2, 2, 1)  # expert 0 says 0, expert 1 says 1
    mixed, weights, _ = gates(x, experts)
    # row 0: z = (0.25, -0.1): S = 0.84375 and 2 (0.001) - 0.15 + 0.5 = 0.352; softmax
    # (0, ln 3) = (1/4, 3/4); expert 1: 0.84375 / 4 + 0.352 * 3/4 = 0.4749375
    # row 1: z = (-1, 0.4): S = 0 and -2 (0.064) + 0.6 + 0.5 = 0.972; softmax (0, -4 ln 3) =
    # (81/82, 1/82); expert 1: 0.972 / 82
    expected = torch.tensor([[1 - 0.4749375, 0.4749375], [1 - 0.972 / 82, 0.972 / 82]])
    torch.testing.assert_close(weights[:, 0], expected, rtol=0, atol=1e-14)
    torch.testing.assert_close(mixed[:, 0, 0], expected[:, 1], rtol=0, atol=1e-14)


def test_the_regulariser_is_entropy_reg_times_the_selectors_entropy():
    gates = DSelectGates(1, 1, 2, num_selectors=2, gamma=1.0, entropy_reg=0.01)
    with torch.no_grad():
        gates.logits.weight.copy_(torch.tensor([[[0.5, -0.2, 0.0, 1.0]]]))
        gates.logits.bias.zero_()
    _, regulariser = gates.weights(torch.tensor([[0.5], [-2.0]]))

    def entropy(*probs: float) -> float:
        return -sum(p * math.log(p) for p in probs if p > 0)

    rows = [entropy(0.84375, 0.15625) + entropy(0.352, 0.648),
            entropy(1.0, 0.0) + entropy(0.972, 0.028)]  # row 1's first selector: one expert
    assert regulariser.item() == pytest.approx(0.01 * sum(rows) / 2, rel=1e-12)


def test_saturated_selectors_pick_exactly_one_expert_each_and_cost_no_entropy():
    gamma = 0.5
    # E = 8 (m = 3), k = 2: selector 1 saturated on code 101 (expert 5), selector 2 on 010
    codes = [gamma, -gamma, gamma, -gamma, gamma, -gamma]
    gates = bias_only(DSelectGates(3, 4, 8, num_selectors=2, gamma=gamma, entropy_reg=1.0),
                      [*codes, 0.0, math.log(3)])
    weights, regulariser = gates.weights(torch.randn(5, 4))
    expected = torch.zeros(8)
    expected[5], expected[2] = 0.25, 0.75
    torch.testing.assert_close(weights, expected.expand(5, 3, 8), rtol=0, atol=1e-15)
    assert (weights[..., [0, 1, 3, 4, 6, 7]] == 0).all()  # exact zeros: two experts only
    assert regulariser.item() == 0.0
    # one selector: the gate is that expert alone, exactly
    gates = bias_only(DSelectGates(1, 4, 8, num_selectors=1, gamma=gamma, entropy_reg=1.0),
                      [gamma, gamma, -gamma, 0.0])
    weights, regulariser = gates.weights(torch.randn(2, 4))
    assert torch.equal(weights[:, 0], torch.eye(8)[6].expand(2, 8))
    assert regulariser.item() == 0.0


def test_experts_not_a_power_of_two_renormalised_and_penalised_off_the_missing_codes():
    # E = 3: codes 00, 01, 10 are experts 0, 1, 2; code 11 is none
    gates = bias_only(DSelectGates(1, 2, 3, num_selectors=1, entropy_reg=0.0), [0.0, 0.0, 0.0])
    weights, regulariser = gates.weights(torch.randn(4, 2))
    # every code 1/4, mass on the experts 3/4: each expert 1/3, penalty 1 / (3/4) - 1 = 1/3
    torch.testing.assert_close(weights, torch.full((4, 1, 3), 1 / 3), rtol=0, atol=1e-15)
    assert regulariser.item() == pytest.approx(1 / 3, rel=1e-14)
    # z = (0.25, -0.1) (gamma = 1): S = 0.84375, 0.352; codes 00 .. 11 get
    # (1 - a)(1 - b), (1 - a) b, a (1 - b), a b; the experts keep the first three
    gates = bias_only(DSelectGates(1, 2, 3, num_selectors=1, entropy_reg=0.0),
                      [0.25, -0.1, 0.0])
    weights, regulariser = gates.weights(torch.randn(2, 2))
    a, b = 0.84375, 0.352
    codes = torch.tensor([(1 - a) * (1 - b), (1 - a) * b, a * (1 - b)])
    torch.testing.assert_close(weights[0, 0], codes / codes.sum(), rtol=0, atol=1e-15)
    assert regulariser.item() == pytest.approx(1 / codes.sum().item() - 1, rel=1e-14)
    # saturated on the missing code 11: no mass on any expert; spread evenly, finite
    gates = bias_only(DSelectGates(1, 2, 3, num_selectors=1), [1.0, 1.0, 0.0])
    x = torch.randn(2, 2, requires_grad=True)
    mixed, weights, regulariser = gates(x, torch.randn(2, 3, 4))
    torch.testing.assert_close(weights, torch.full((2, 1, 3), 1 / 3), rtol=0, atol=1e-15)
    (mixed.sum() + regulariser).backward()
    assert torch.isfinite(regulariser) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("num_experts", [1, 2, 3, 6, 8])
def test_gate_rows_sum_to_one_and_match_the_loop_version(num_experts):
    gates = DSelectGates(4, 6, num_experts, num_selectors=3, gamma=0.7, entropy_reg=0.05)
    with torch.no_grad():  # larger logits than at initialisation: many steps saturate
        gates.logits.weight.normal_()
        gates.logits.bias.normal_()
    loop = LoopDSelectGates(gates)
    x, experts = torch.randn(9, 6), torch.randn(9, num_experts, 5)
    for index in (None, [3, 1]):
        ours, theirs = gates(x, experts, index), loop(x, experts, index)
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        weights = ours[1]
        assert (weights >= 0).all()
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:2]))


def test_one_expert_is_shared_bottom():
    tasks = mixed_tasks()
    model = build("dselect_k", num_experts=1, k=3, expert_dims=(10, 8)).eval()
    bottom = build("shared_bottom", bottom_dims=(10, 8)).eval()
    bottom.load_state_dict({
        key.replace("experts.", "bottom.", 1): value
        for key, value in model.state_dict().items()
        if not key.startswith("gates.")
    })
    x = torch.randn(6, IN_FEATURES)
    out, expected = model(x), bottom(x)
    for task in tasks:
        torch.testing.assert_close(out.logits[task.name], expected.logits[task.name],
                                   rtol=0, atol=1e-14)
    torch.testing.assert_close(out.gate_weights["gates"], torch.ones(6, 3, 1), rtol=0, atol=1e-15)
    assert out.aux_loss.item() == 0.0


def test_aux_loss_is_the_selected_gates_regulariser():
    torch.manual_seed(1)
    model = build("dselect_k", num_experts=6, k=2, entropy_reg=0.1)
    with torch.no_grad():
        model.gates.logits.weight.normal_()
    x = torch.randn(7, IN_FEATURES)
    full = model(x)
    _, by_gate = model.gates.weights(x)
    assert full.aux_loss.item() == by_gate.item() > 0
    parts = [model(x, tasks=name).aux_loss for name in ("income", "topic", "score")]
    torch.testing.assert_close(sum(parts), full.aux_loss, rtol=0, atol=1e-14)
    full.aux_loss.backward()  # the regulariser alone trains the gates
    assert model.gates.logits.weight.grad.abs().sum() > 0
    assert model.experts.layers[0].weight.grad is None


def test_each_row_has_its_own_gate():
    model = build("dselect_k", num_experts=4)
    with torch.no_grad():
        model.gates.logits.weight.normal_()
    weights = model(torch.randn(2, IN_FEATURES)).gate_weights["gates"]
    assert not torch.allclose(weights[0], weights[1])


def test_defaults_match_the_paper_and_official_code():
    model = mtlzoo.create_model("dselect_k", in_features=IN_FEATURES, tasks=mixed_tasks())
    gates = model.gates
    assert (gates.num_experts, gates.num_selectors, gates.num_bits) == (8, 2, 3)
    assert (gates.gamma, gates.entropy_reg) == (1.0, 1e-6)
    # the code logits start within gamma / 100: every smooth-step starts near 1/2
    assert gates.logits.weight[..., :6].abs().max() <= 0.01
    assert gates.logits.weight[..., 6:].abs().max() <= 0.05


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"k": 0}, "k must be a positive integer, got 0"),
        ({"k": 1.5}, "k must be a positive integer, got 1.5"),
        ({"k": True}, "k must be a positive integer, got True"),
        ({"gamma": 0}, "gamma must be > 0, got 0"),
        ({"gamma": -1.0}, "gamma must be > 0, got -1.0"),
        ({"gamma": float("inf")}, "gamma must be a finite number, got inf"),
        ({"gamma": "1"}, "gamma must be a finite number, got '1'"),
        ({"entropy_reg": -1e-6}, "entropy_reg must be >= 0, got -1e-06"),
        ({"entropy_reg": float("nan")}, "entropy_reg must be a finite number, got nan"),
        ({"num_experts": 0}, "num_experts must be a positive integer, got 0"),
        ({"expert_dims": ()}, "expert_dims needs at least one layer"),
    ],
)
def test_bad_options_are_refused(options, match):
    with pytest.raises(mtlzoo.MtlzooError, match=match):
        mtlzoo.create_model("dselect_k", in_features=4, tasks=mixed_tasks(), **options)


def test_bad_gate_arguments_are_refused():
    with pytest.raises(mtlzoo.MtlzooError, match="num_selectors must be a positive integer"):
        DSelectGates(2, 3, 4, num_selectors=0)
    gates = DSelectGates(2, 3, 4)
    with pytest.raises(mtlzoo.MtlzooError, match=r"experts must have shape \(batch, 4, width\)"):
        gates(torch.randn(5, 3), torch.randn(5, 3, 2))
