"""Trainer(precision="bf16") and Trainer(compile=...): a bf16 step stays near the fp32 step,
master weights and losses stay fp32, checkpoints resume exactly, a compiled model trains as
the eager one does and does not recompile per batch size."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch
import torch.distributed as dist
from torch._dynamo.testing import CompileCounter

import mtlzoo
from mtlzoo import MtlzooError, Task, Trainer
from tests.test_dynamic_batch import tokens
from tests.test_training import joint_data, model

UPDATE_BOUND = 2e-2  # relative distance of a bf16 step's update from the fp32 step's


def trainer(net=None, **options) -> Trainer:
    options = {"lr": 1e-2, "batch_size": 64, "progress": False, "strategy": "none",
               **options}
    return Trainer(net or model(), **options)


def flat(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def update(method: str, precision: str, strategy: str = "none") -> torch.Tensor:
    """The parameter update of one SGD step (batch 256) under ``precision``."""
    net = model()
    before = flat(net)
    t = trainer(net, weighting=method, optimizer="sgd", precision=precision, batch_size=256,
                strategy=strategy)
    t.fit(joint_data(256), steps=1)
    return flat(net) - before


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture
def one_rank(tmp_path):
    """A process group of one rank (gloo) in this process: strategy="ddp" runs DDP."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0,
                            world_size=1)
    yield
    dist.destroy_process_group()


# --- options -------------------------------------------------------------------------------


@pytest.mark.parametrize(("option", "value", "named"), [
    ("precision", "fp16", "'fp16'"),
    ("precision", "bfloat16", "'bfloat16'"),
    ("compile", "yes", "'yes'"),
    ("compile", 1, "1"),
    ("compile", {"backend": "eager", "fast": True}, "'fast'"),
])
def test_options_are_checked(option, value, named):
    with pytest.raises(MtlzooError, match=f"{option}.*{named}"):
        trainer(**{option: value})


def test_defaults_are_fp32_and_eager():
    t = trainer()
    assert t.options.precision == "fp32" and t.options.compile is False
    assert not hasattr(t.model, "_compiled_call_impl") or t.model._compiled_call_impl is None


# --- bf16 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["equal", "mgda", "pcgrad", "cagrad"])
def test_a_bf16_step_stays_near_the_fp32_step(method):
    assert relative(update(method, "bf16"), update(method, "fp32")) < UPDATE_BOUND


def test_a_bf16_mgda_ub_step_stays_near_the_fp32_step():
    """MGDA-UB: the Gram matrix of the gradients w.r.t. the encoder's output."""
    ids = tokens(256)
    data = {"x": ids, "a": (ids[:, 0] > 25).float(), "b": ids[:, 1] / 50}

    def step(precision: str) -> torch.Tensor:
        torch.manual_seed(0)
        net = mtlzoo.create_model(
            "shared_bottom", tasks=[Task("a"), Task("b", kind="regression")],
            encoder=mtlzoo.encoders.TextEncoder(50, 8, pooling="mean"), bottom_dims=(8,),
            tower_dims=(4,),
        )
        before = flat(net)
        trainer(net, weighting="mgda", optimizer="sgd", precision=precision,
                batch_size=256).fit(data, steps=1)
        return flat(net) - before

    assert relative(step("bf16"), step("fp32")) < UPDATE_BOUND


def test_a_bf16_step_under_ddp_stays_near_the_fp32_step(one_rank):
    for method in ("equal", "mgda"):
        bf16, fp32 = update(method, "bf16", "ddp"), update(method, "fp32", "ddp")
        assert relative(bf16, fp32) < UPDATE_BOUND
        assert relative(fp32, update(method, "fp32")) < 1e-6


def test_bf16_keeps_fp32_weights_and_fp32_losses():
    t = trainer(precision="bf16", weighting="mgda")
    seen = []
    backward = t.weighting.backward

    def recording(losses, *args, **kwargs):
        seen.extend(loss.dtype for loss in losses.values())
        return backward(losses, *args, **kwargs)

    t.weighting.backward = recording
    history = t.fit(joint_data(), epochs=2)
    assert set(seen) == {torch.float32}
    assert {p.dtype for p in t.model.parameters()} == {torch.float32}
    losses = history[[c for c in history if c.endswith("/train_loss")]].to_numpy()
    assert torch.isfinite(torch.tensor(losses)).all()


@pytest.mark.parametrize("regime", ["joint", "per_task"])
def test_a_bf16_run_trains(regime):
    data, held_out = joint_data(), joint_data(256, seed=1)
    if regime == "per_task":
        data = {task: data for task in ("click", "topic", "price")}
        held_out = {task: held_out for task in ("click", "topic", "price")}
    t = trainer(precision="bf16")
    before = t.evaluate(held_out)
    t.fit(data, epochs=6)
    after = t.evaluate(held_out)
    assert (after["loss"] < 0.7 * before["loss"]).all()
    assert after.loc["click", "auc"] > 0.9


def test_bf16_evaluation_is_near_fp32():
    t = trainer()
    t.fit(joint_data(), epochs=2)
    fp32 = t.evaluate(joint_data(256, seed=1))
    t.options = dataclasses.replace(t.options, precision="bf16")
    bf16 = t.evaluate(joint_data(256, seed=1))
    torch.testing.assert_close(torch.tensor(bf16["loss"].to_numpy()),
                               torch.tensor(fp32["loss"].to_numpy()), rtol=2e-2, atol=1e-3)


def test_a_bf16_checkpoint_resumes_exactly_and_records_its_precision(tmp_path):
    data = joint_data()  # 8 steps an epoch
    whole = trainer(precision="bf16")
    whole.fit(data, steps=12)
    first = trainer(precision="bf16")
    first.fit(data, steps=5, checkpoint=tmp_path / "run.ckpt")
    resumed = trainer(precision="bf16")
    resumed.load(tmp_path / "run.ckpt")
    resumed.fit(data, steps=12)
    assert torch.equal(flat(resumed.model), flat(whole.model))
    assert resumed.state.data["precision"] == "bf16"
    other = trainer()
    other.load(tmp_path / "run.ckpt")  # mid-epoch: the precision must be the same
    with pytest.raises(MtlzooError, match="precision 'bf16' -> 'fp32'"):
        other.fit(data, steps=12)


# --- compile -------------------------------------------------------------------------------


def fitted(compile, net=None, data=None, epochs: int = 2, **options) -> Trainer:
    t = trainer(net, compile=compile, **options)
    t.fit(joint_data(200) if data is None else data, epochs=epochs)
    return t


def test_a_compiled_trainer_trains_as_the_eager_one_and_saves_plain_keys(tmp_path):
    torch._dynamo.reset()
    eager = fitted(False, weighting="uncertainty")
    compiled = fitted({"backend": "aot_eager"}, weighting="uncertainty")
    torch.testing.assert_close(flat(compiled.model), flat(eager.model))
    compiled.save(tmp_path / "run.ckpt")
    state = mtlzoo.train.read_checkpoint(tmp_path / "run.ckpt")["model"]["state"]
    assert list(state) == list(eager.model.state_dict())
    plain = trainer(weighting="uncertainty")
    plain.load(tmp_path / "run.ckpt")
    assert torch.equal(flat(plain.model), flat(compiled.model))


def test_a_short_last_batch_compiles_once_more_and_no_more():
    """Batches 64, 64, 64, 8 (200 rows) for 3 epochs: the first graph, then one with a
    symbolic batch (automatic dynamic shapes) serving every later size."""
    torch._dynamo.reset()
    counter = CompileCounter()
    fitted({"backend": counter}, epochs=3)
    assert counter.frame_count == 2


def test_a_compiled_model_with_an_encoder_does_not_recompile_per_step():
    """The trainer hooks the encoder every step (MGDA-UB reads its output)."""
    torch._dynamo.reset()
    counter = CompileCounter()
    torch.manual_seed(0)
    encoder = mtlzoo.encoders.TextEncoder(50, 8, pooling="mean")
    net = mtlzoo.create_model("shared_bottom", tasks=[Task("a")], encoder=encoder,
                              bottom_dims=(8,), tower_dims=(4,))
    fitted({"backend": counter}, net, text_data(200))
    assert counter.frame_count == 2


def text_data(rows: int) -> dict[str, torch.Tensor]:
    ids = tokens(rows)
    return {"x": ids, "a": (ids[:, 0] > 25).float()}


def test_the_lstm_text_encoder_trains_compiled_as_eager():
    def net():
        torch.manual_seed(0)
        return mtlzoo.create_model("shared_bottom", tasks=[Task("a")],
                                   encoder=mtlzoo.encoders.TextEncoder(50, 8, 6),
                                   bottom_dims=(8,), tower_dims=(4,))

    torch._dynamo.reset()
    data = text_data(100)
    eager = fitted(False, net(), data)
    compiled = fitted({"backend": "aot_eager"}, net(), data)
    torch.testing.assert_close(flat(compiled.model), flat(eager.model))
    pd.testing.assert_frame_equal(compiled.evaluate(data), eager.evaluate(data), rtol=1e-5)


@pytest.mark.parametrize("method", ["mgda", "pcgrad", "cagrad", "gradnorm", "imtl"])
def test_a_gradient_method_trains_compiled_as_eager(method):
    """Per-task gradients take one backward per task through the compiled graph (a
    compiled backward cannot be batched over the tasks)."""
    torch._dynamo.reset()
    eager = fitted(False, weighting=method)
    compiled = fitted({"backend": "aot_eager"}, weighting=method)
    torch.testing.assert_close(flat(compiled.model), flat(eager.model))
    assert compiled.weighting.batched_backward is False and eager.weighting.batched_backward


def test_mgda_upper_bound_trains_compiled_as_eager_through_the_lstm():
    """MGDA-UB back-propagates each task to the encoder's output, then the whole graph:
    the compiled LSTM encoder is one graph (no break) that serves both."""
    def net():
        torch.manual_seed(0)
        return mtlzoo.create_model("mmoe", tasks=[Task("a"), Task("b")],
                                   encoder=mtlzoo.encoders.TextEncoder(50, 8, 6),
                                   num_experts=2, expert_dims=(8,), tower_dims=(4,))

    data = text_data(100)
    data["b"] = (data["x"][:, 1] > 25).float()
    options = {"weighting": "mgda", "weighting_options": {"upper_bound": True}}
    torch._dynamo.reset()
    eager = fitted(False, net(), data, **options)
    counter = CompileCounter()
    compiled = fitted({"backend": counter}, net(), data, **options)
    torch.testing.assert_close(flat(compiled.model), flat(eager.model))
    assert counter.frame_count == 2  # one graph, then one with a symbolic batch


def test_a_compiled_trainer_under_ddp_trains_as_the_eager_one(one_rank):
    torch._dynamo.reset()
    eager = fitted(False, strategy="ddp")
    compiled = fitted({"backend": "aot_eager"}, strategy="ddp")
    torch.testing.assert_close(flat(compiled.model), flat(eager.model))


def test_inductor_with_bf16_trains_near_eager():
    """The default backend on a tiny model: one forward and backward compiled (~20 s)."""
    torch._dynamo.reset()
    data = joint_data(128)
    compiled = fitted(True, data=data, epochs=1, precision="bf16")
    eager = fitted(False, data=data, epochs=1, precision="bf16")
    assert relative(flat(compiled.model), flat(eager.model)) < 1e-3
