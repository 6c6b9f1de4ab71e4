"""single_task on an encoder: each task reads through its own copy, nothing is shared."""

from __future__ import annotations

import pytest
import torch

import mtlzoo
from mtlzoo import Task
from mtlzoo.encoders import TabularEncoder
from mtlzoo.models import SingleTask
from tests.test_encoders import ENCODERS, tabular_batch  # the encoders and their inputs

pytestmark = pytest.mark.usefixtures("float64")
TASKS = [Task("a"), Task("b", kind="multiclass", num_classes=4), Task("c", kind="regression")]


def build(encoder_name: str, tasks=TASKS) -> tuple[SingleTask, object]:
    make_encoder, make_batch = ENCODERS[encoder_name]
    torch.manual_seed(0)
    model = mtlzoo.create_model("single_task", tasks=tasks, encoder=make_encoder(),
                                hidden_dims=(8, 6), tower_dims=(4,))
    return model, make_batch()


@pytest.mark.parametrize("encoder_name", sorted(ENCODERS))
def test_each_task_gets_its_own_copy_starting_from_the_given_weights(encoder_name):
    torch.manual_seed(0)
    encoder = ENCODERS[encoder_name][0]()
    model = mtlzoo.create_model("single_task", tasks=TASKS, encoder=encoder)
    assert model.encoder is None and len(model.encoders) == len(TASKS)
    given = encoder.state_dict()
    seen: set[int] = set()
    for copy in model.encoders:
        assert copy is not encoder
        for key, value in copy.state_dict().items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(value, given[key], rtol=0, atol=0)
        ids = {id(p) for p in copy.parameters()}
        assert not ids & seen and not ids & {id(p) for p in encoder.parameters()}
        seen |= ids
    shared = {id(p) for p in model.shared_parameters()}
    task = {id(p) for p in model.task_parameters()}
    assert not seen & shared and seen <= task
    assert shared | task == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("encoder_name", sorted(ENCODERS))
def test_no_parameter_element_is_reached_by_two_tasks(encoder_name):
    model, batch = build(encoder_name)
    out = model(batch).logits
    params = list(model.parameters())
    reached = []
    for name in model.task_names:
        grads = torch.autograd.grad(out[name].sum(), params, retain_graph=True,
                                    allow_unused=True)
        reached.append([None if g is None else g != 0 for g in grads])
    for i in range(len(TASKS)):
        for j in range(i + 1, len(TASKS)):
            for mask_i, mask_j in zip(reached[i], reached[j], strict=True):
                if mask_i is not None and mask_j is not None:
                    assert not (mask_i & mask_j).any()
    # and task t's output does not reach another task's encoder copy at all
    for t, name in enumerate(model.task_names):
        for s, copy in enumerate(model.encoders):
            copy_params = list(copy.parameters())
            if s == t or not copy_params:
                continue
            grads = torch.autograd.grad(out[name].sum(), copy_params, retain_graph=True,
                                        allow_unused=True)
            assert all(g is None or not g.any() for g in grads)


def _narrow_to(full: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    for dim, size in enumerate(shape):
        full = full.narrow(dim, 0, size)
    return full


@pytest.mark.parametrize("encoder_name", sorted(ENCODERS))
def test_each_task_equals_a_model_of_that_task_alone(encoder_name):
    model, batch = build(encoder_name)
    full = model.state_dict()
    out = model(batch).logits
    for t, task in enumerate(TASKS):
        alone = mtlzoo.create_model("single_task", tasks=[task], encoder=model.encoders[t],
                                    hidden_dims=(8, 6), tower_dims=(4,))
        state = {}
        for key, value in alone.state_dict().items():
            if key.startswith("encoders.0."):
                state[key] = full[key.replace("encoders.0.", f"encoders.{t}.", 1)]
            elif isinstance(value, torch.Tensor):
                state[key] = _narrow_to(full[key][t : t + 1], value.shape)
            else:
                state[key] = value
        alone.load_state_dict(state)
        torch.testing.assert_close(alone(batch).logits[task.name], out[task.name])


@pytest.mark.parametrize("encoder_name", sorted(ENCODERS))
def test_selecting_tasks_runs_only_their_encoders(encoder_name):
    model, batch = build(encoder_name)
    calls: list[int] = []
    for t, copy in enumerate(model.encoders):
        copy.register_forward_hook(lambda module, args, output, t=t: calls.append(t))
    full = model(batch).logits
    assert calls == [0, 1, 2]
    calls.clear()
    subset = model(batch, tasks=["c", "a"]).logits
    assert calls == [2, 0] and list(subset) == ["c", "a"]
    for name in ("c", "a"):
        torch.testing.assert_close(subset[name], full[name])


def test_trainer_trains_it_and_a_checkpoint_round_trips(tmp_path):
    batch = tabular_batch(96)
    data = {**batch, "a": (batch["numeric"][:, 0] > 0).long(), "b": batch["categorical"][:, 2] % 4}
    data = {k: v.double() if v.is_floating_point() else v for k, v in data.items()}
    tasks = TASKS[:2]

    def trainer(weighting: str = "pcgrad") -> mtlzoo.Trainer:
        torch.manual_seed(0)
        model = mtlzoo.create_model(
            "single_task", tasks=tasks, encoder=TabularEncoder([3, 1, 5], 2, embedding_dim=3)
        ).double()
        return mtlzoo.Trainer(model, lr=1e-2, batch_size=32, progress=False,
                              weighting=weighting, input_key=("categorical", "numeric"))

    first = trainer()
    before = [p.detach().clone() for p in first.model.encoders.parameters()]
    path = tmp_path / "run.pt"
    first.fit(data, epochs=20, checkpoint=path)
    after = list(first.model.encoders.parameters())
    assert all(not torch.equal(b, a) for b, a in zip(before, after, strict=True))
    table = first.evaluate(data)
    assert table.loc["a", "accuracy"] > 0.9 and table.loc["b", "accuracy"] > 0.9
    fresh = trainer()
    fresh.load(path)
    for key, value in first.model.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(fresh.model.state_dict()[key], value)
    for name, logits in first.model.eval()(batch_double(batch)).logits.items():
        torch.testing.assert_close(fresh.model.eval()(batch_double(batch)).logits[name], logits)


def batch_double(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}


@pytest.mark.parametrize("weighting", ["equal", "mgda", "gradnorm", "cagrad", "imtl"])
def test_weightings_train_the_encoder_copies(weighting):
    batch = tabular_batch(64)
    data = batch_double({**batch, "a": (batch["numeric"][:, 0] > 0).long(),
                         "b": batch["categorical"][:, 2] % 4})
    torch.manual_seed(0)
    model = mtlzoo.create_model(
        "single_task", tasks=TASKS[:2], encoder=TabularEncoder([3, 1, 5], 2, embedding_dim=3)
    ).double()
    before = [p.detach().clone() for p in model.encoders.parameters()]
    trainer = mtlzoo.Trainer(model, lr=1e-2, batch_size=32, progress=False,
                             weighting=weighting, input_key=("categorical", "numeric"))
    trainer.fit(data, steps=2)
    assert all(not torch.equal(b, a)
               for b, a in zip(before, model.encoders.parameters(), strict=True))
