"""One test per contract, parametrized over every registered architecture."""

from __future__ import annotations

import io

import pytest
import torch

import mtlzoo
from mtlzoo.reference import loop_version
from tests.conftest import IN_FEATURES, build, mixed_tasks


def seeded(name: str, seed: int = 0, **overrides) -> mtlzoo.MultiTaskModel:
    torch.manual_seed(seed)
    return build(name, **overrides)


def test_output_keys_and_shapes_with_mixed_task_kinds(model_name):
    out = seeded(model_name)(torch.randn(7, IN_FEATURES))
    assert isinstance(out, mtlzoo.ModelOutput)
    assert list(out.logits) == ["income", "topic", "score"]
    assert {name: tuple(v.shape) for name, v in out.logits.items()} == {
        "income": (7, 1), "topic": (7, 4), "score": (7, 1)
    }
    assert out.aux_loss.shape == () and torch.isfinite(out.aux_loss)
    for weights in out.gate_weights.values():
        assert weights.dim() == 3 and weights.shape[0] == 7


def test_every_parameter_receives_a_finite_gradient(model_name):
    model = seeded(model_name)
    out = model(torch.randn(9, IN_FEATURES))
    loss = sum(logits.pow(2).mean() for logits in out.logits.values()) + out.aux_loss
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
    # every parameter is used: all but TaskHeads' padding columns get a non-zero gradient
    for name, param in model.named_parameters():
        if name != "heads.output.weight" and name != "heads.output.bias":
            assert param.grad.abs().sum() > 0, name


def test_a_batch_of_one_row_works(model_name):
    model = seeded(model_name).eval()
    out = model(torch.randn(1, IN_FEATURES))
    assert {name: tuple(v.shape) for name, v in out.logits.items()} == {
        "income": (1, 1), "topic": (1, 4), "score": (1, 1)
    }
    out.logits["topic"].sum().backward()


def test_a_batch_of_no_rows_works(model_name):
    """DDP runs the tasks a per-task step has no batch of on no rows."""
    model = seeded(model_name)
    out = model(torch.randn(0, IN_FEATURES))
    assert {name: tuple(v.shape) for name, v in out.logits.items()} == {
        "income": (0, 1), "topic": (0, 4), "score": (0, 1)
    }
    assert torch.isfinite(out.aux_loss)
    (sum(logits.sum() for logits in out.logits.values()) + out.aux_loss).backward()


def test_in_eval_mode_a_row_does_not_depend_on_its_batch(model_name):
    model = seeded(model_name, dropout=0.3).eval()
    x = torch.randn(6, IN_FEATURES, dtype=torch.float64)
    model = model.double()
    batch = model(x)
    for i in (0, 3, 5):
        alone = model(x[i : i + 1])
        for name in batch.logits:
            torch.testing.assert_close(alone.logits[name], batch.logits[name][i : i + 1])


def test_gate_rows_sum_to_one(model_name):
    out = seeded(model_name)(torch.randn(5, IN_FEATURES))
    for weights in out.gate_weights.values():
        assert (weights >= 0).all()
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:2]))


def test_state_dict_round_trip(model_name):
    model = seeded(model_name, seed=1).eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    restored = seeded(model_name, seed=2).eval()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(4, IN_FEATURES)
    for name, logits in model(x).logits.items():
        torch.testing.assert_close(restored(x).logits[name], logits, rtol=0, atol=0)


def test_same_seed_same_output_other_seed_other_output(model_name):
    x = torch.randn(4, IN_FEATURES)
    first, second, other = (seeded(model_name, seed)(x) for seed in (3, 3, 4))
    for name in first.logits:
        torch.testing.assert_close(first.logits[name], second.logits[name], rtol=0, atol=0)
    assert not torch.equal(first.logits["topic"], other.logits["topic"])


def test_float64_works(model_name):
    model = seeded(model_name).double()
    out = model(torch.randn(3, IN_FEATURES, dtype=torch.float64))
    for logits in [*out.logits.values(), *out.gate_weights.values()]:
        assert logits.dtype == torch.float64


@pytest.mark.parametrize("subset", [["topic"], ["score", "income"], ["income", "topic", "score"]])
def test_a_task_subset_returns_the_full_calls_values(model_name, subset):
    model = seeded(model_name).double().eval()
    x = torch.randn(5, IN_FEATURES, dtype=torch.float64)
    full = model(x)
    part = model(x, tasks=subset)
    assert list(part.logits) == subset
    for name in subset:
        torch.testing.assert_close(part.logits[name], full.logits[name], rtol=0, atol=1e-12)


def test_a_task_subset_computes_only_those_heads(model_name):
    model = seeded(model_name, tower_dims=(32,))
    model(torch.randn(32, IN_FEATURES), tasks=["topic"]).logits["topic"].sum().backward()
    grad = model.heads.output.weight.grad
    assert grad[1].abs().sum() > 0
    assert torch.all(grad[0] == 0) and torch.all(grad[2] == 0)


def test_matches_its_loop_version_in_float64(model_name):
    model = seeded(model_name).double().eval()
    loop = loop_version(model)
    x = torch.randn(6, IN_FEATURES, dtype=torch.float64)
    for tasks in (None, ["score", "topic"]):
        ours, theirs = model(x, tasks=tasks), loop(x, tasks=tasks)
        for name in ours.logits:
            torch.testing.assert_close(ours.logits[name], theirs.logits[name], rtol=0, atol=1e-10)
        for name in ours.gate_weights:
            torch.testing.assert_close(
                ours.gate_weights[name], theirs.gate_weights[name], rtol=0, atol=1e-10
            )
        torch.testing.assert_close(ours.aux_loss, theirs.aux_loss, rtol=0, atol=1e-10)


def test_dropout_is_active_in_training_mode(model_name):
    model = seeded(model_name, dropout=0.5).train()
    x = torch.randn(8, IN_FEATURES)
    assert not torch.equal(model(x).logits["topic"], model(x).logits["topic"])


def test_builds_with_only_in_features_and_tasks(model_name):
    model = mtlzoo.create_model(model_name, in_features=IN_FEATURES, tasks=mixed_tasks())
    assert set(model(torch.randn(2, IN_FEATURES)).logits) == {"income", "topic", "score"}


def test_a_single_task_model_works(model_name):
    model = seeded(model_name, tasks=[mtlzoo.Task("only", kind="regression")])
    out = model(torch.randn(3, IN_FEATURES))
    assert out.logits["only"].shape == (3, 1)


def test_bf16_autocast_works_and_stays_close(model_name):
    model = seeded(model_name)
    x = torch.randn(6, IN_FEATURES)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, from_bf16_input = model(x), model(x.bfloat16())
    full = model(x)
    for name, logits in full.logits.items():
        assert low.logits[name].dtype == torch.bfloat16
        torch.testing.assert_close(low.logits[name].float(), logits, atol=2e-2, rtol=2e-2)
        assert from_bf16_input.logits[name].shape == logits.shape
    sum(v.float().sum() for v in low.logits.values()).backward()
