"""The trainer's lr schedule: the lr of every step is the schedule's, a resumed run follows
it exactly, and ``constant`` leaves the optimizer's lr alone."""

from __future__ import annotations

import math

import pytest
import torch

import mtlzoo
from mtlzoo import Task, Trainer

D = 5
TASKS = [Task("a"), Task("b", kind="regression")]


def data(rows: int = 96) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, D, generator=g)
    return {"x": x, "a": (x[:, 0] > 0).long(), "b": x[:, 1] - x[:, 2]}


def trainer(**options) -> Trainer:
    torch.manual_seed(0)
    model = mtlzoo.create_model("mmoe", in_features=D, tasks=TASKS, num_experts=3)
    return Trainer(model, lr=0.1, batch_size=32, progress=False, **options)


def recorded_lrs(t: Trainer) -> list[float]:
    """The lr of each optimizer step taken from now on (the first group's)."""
    lrs: list[float] = []
    t.optimizer.register_step_pre_hook(
        lambda optimizer, args, kwargs: lrs.append(optimizer.param_groups[0]["lr"])
    )
    return lrs


@pytest.mark.parametrize(("fit", "planned"), [({"epochs": 2}, 6), ({"steps": 5}, 5)])
def test_cosine_decays_the_lr_over_the_planned_steps(fit, planned):
    t = trainer(lr_schedule="cosine")
    lrs = recorded_lrs(t)
    t.fit(data(), **fit)  # 96 rows in batches of 32: 3 steps an epoch
    expected = [0.1 * (1 + math.cos(math.pi * s / planned)) / 2 for s in range(planned)]
    assert lrs == pytest.approx(expected)


def test_constant_leaves_the_optimizers_lr_alone():
    t = trainer()
    for group in t.optimizer.param_groups:
        group["lr"] = 0.05  # e.g. set by the user's own scheduler
    lrs = recorded_lrs(t)
    t.fit(data(), epochs=1)
    assert lrs == [0.05] * 3


def test_a_resumed_cosine_run_ends_where_an_uninterrupted_one_does(tmp_path):
    straight = trainer(lr_schedule="cosine")
    straight.fit(data(), epochs=3)

    path = tmp_path / "run.pt"
    first = trainer(lr_schedule="cosine")
    step = first._step

    def dying_step(batches, number):
        if number == 5:
            raise KeyboardInterrupt  # after the checkpoint of step 4
        return step(batches, number)

    first._step = dying_step
    with pytest.raises(KeyboardInterrupt):
        first.fit(data(), epochs=3, checkpoint=path, checkpoint_every=2)
    resumed = trainer(lr_schedule="cosine")
    resumed.load(path)
    assert resumed.step == 4
    lrs = recorded_lrs(resumed)
    resumed.fit(data(), epochs=3)
    assert lrs == pytest.approx([0.1 * (1 + math.cos(math.pi * s / 9)) / 2 for s in range(4, 9)])
    for name, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=0, atol=0)
