"""FSDP2 on 2 CPU processes (gloo): ``strategy="fsdp"`` shards the stacked expert weights
along the expert axis and takes the step DDP takes and one process takes with the global
batch; gradient methods are refused; a checkpoint written under FSDP loads in one process
and one written in one process loads under FSDP.

The ranks run through ``tests.test_distributed.spawn`` (a hang fails at its ``TIMEOUT``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mtlzoo
from mtlzoo.errors import MtlzooError
from mtlzoo.train import distributed
from tests.test_distributed import (
    BATCH,
    WORLD,
    _max_difference,
    joint_data,
    per_task_data,
    spawn,
    tasks,
    trainer,
)

# (method, regime) trained under FSDP and DDP; gradient methods are refused under FSDP
CASES = [("equal", "joint"), ("uncertainty", "joint"), ("dwa", "joint"), ("rlw", "joint"),
         ("uncertainty", "per_task")]
REFUSED = ["pcgrad", "mgda", "cagrad", "gradnorm", "imtl"]
# other architectures, with gradient clipping and early stopping
ARCHITECTURES = {"ple": {"num_levels": 2, "num_shared_experts": 2, "num_task_experts": 1,
                         "expert_dims": (8,)},
                 "shared_bottom": {"bottom_dims": (8,)}}


def data(regime: str, split: int):
    return joint_data(100 if split == 1 else 61, split) if regime == "joint" else \
        per_task_data(split)


def fit(method: str, regime: str, batch_size: int, strategy: str, epochs: int = 3,
        checkpoint: Path | None = None) -> mtlzoo.Trainer:
    run = trainer(method, regime, batch_size, strategy)
    if checkpoint is not None:
        run.load(checkpoint)
    run.fit(data(regime, 1), epochs=epochs)
    return run


def results(run: mtlzoo.Trainer, regime: str) -> dict:
    """The model's and the weighting's whole state (gathered), the history, the metrics."""
    return {"model": distributed.full_state(run.model.state_dict()),
            "weighting": run.weighting.state_dict(),
            "history": run.history.to_dict("list"),
            "eval": run.evaluate(data(regime, 2)).to_dict("index")}


def architecture(name: str, batch_size: int, strategy: str) -> mtlzoo.Trainer:
    torch.manual_seed(0)
    model = mtlzoo.create_model(name, in_features=6, tasks=tasks(), tower_dims=(4,),
                                **ARCHITECTURES[name])
    run = mtlzoo.Trainer(model, lr=1e-2, batch_size=batch_size, seed=3, progress=False,
                         strategy=strategy, grad_clip=0.5)
    run.fit(joint_data(100, 1), eval=joint_data(61, 2), epochs=3, early_stopping="a/auc")
    return run


def _scenario(rank: int, folder: Path) -> dict:
    torch.set_default_dtype(torch.float64)
    found: dict = {}
    for method, regime in CASES:
        for strategy in ("fsdp", "ddp"):
            found[f"{method} {regime} {strategy}"] = results(
                fit(method, regime, BATCH, strategy), regime)
    for method in REFUSED:
        try:
            trainer(method, "joint", BATCH, "fsdp")
        except MtlzooError as error:
            found[f"{method} refused"] = str(error)
    # the expert axis is sharded: each rank holds E / 2 experts of every stacked weight
    torch.manual_seed(0)
    model = mtlzoo.create_model("mmoe", in_features=6, tasks=tasks(), num_experts=4,
                                expert_dims=(8, 8))
    mtlzoo.Trainer(model, strategy="fsdp", progress=False)
    found["shards"] = {name: (tuple(p.shape), tuple(p.to_local().shape))
                       for name, p in model.named_parameters()}
    for name in ARCHITECTURES:
        run = architecture(name, BATCH, "fsdp")
        found[name] = distributed.full_state(run.model.state_dict())
        found[f"{name} shards"] = {key: (tuple(p.shape), tuple(p.to_local().shape))
                                   for key, p in run.model.named_parameters()}
    # compiled (AOTAutograd, no inductor: seconds) and in bf16, under FSDP2
    torch._dynamo.reset()
    compiled = trainer("uncertainty", "joint", BATCH, "fsdp", compile={"backend": "aot_eager"})
    compiled.fit(data("joint", 1), epochs=3)
    found["compiled"] = distributed.full_state(compiled.model.state_dict())
    # checkpoints: FSDP -> file (read by the test in one process); one process -> FSDP
    run = fit("uncertainty", "joint", BATCH, "fsdp", epochs=2)
    run.save(folder / "fsdp.pt")
    found["saved"] = distributed.full_state(run.model.state_dict())
    resumed = fit("uncertainty", "joint", BATCH, "fsdp", epochs=3,
                  checkpoint=folder.parent / "one.pt")
    found["resumed"] = distributed.full_state(resumed.model.state_dict())
    found["resumed optimizer"] = distributed.full_state(resumed.optimizer.state_dict())
    return found


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[Path, list]:
    base = tmp_path_factory.mktemp("fsdp")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:  # one process, one epoch with the global batch, for FSDP to resume from
        fit("uncertainty", "joint", WORLD * BATCH, "none", epochs=1).save(base / "one.pt")
    finally:
        torch.set_default_dtype(previous)
    try:
        return base, spawn(_scenario, base / "ranks")
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(("method", "regime"), CASES)
def test_fsdp_takes_the_step_of_ddp_and_of_one_process(two_ranks, float64, method, regime):
    _, ranks = two_ranks
    expected = results(fit(method, regime, WORLD * BATCH, "none"), regime)
    first, second = (found[f"{method} {regime} fsdp"] for found in ranks)
    ddp = ranks[0][f"{method} {regime} ddp"]
    assert _max_difference(first["model"], second["model"]) == 0  # the ranks agree exactly
    for reference in (ddp, expected):
        assert _max_difference(first["model"], reference["model"]) < 1e-10
        assert _max_difference(first["weighting"], reference["weighting"]) < 1e-10
        for column, values in reference["history"].items():
            tolerance = 1e-9 if column.endswith(("train_loss", "weight")) else 1e-6
            assert first["history"][column] == pytest.approx(values, rel=tolerance,
                                                             nan_ok=True), column
        assert repr({task: (m["rows"], m.get("auc")) for task, m in first["eval"].items()}) \
            == repr({task: (m["rows"], m.get("auc")) for task, m in reference["eval"].items()})


def test_a_compiled_model_takes_the_eager_steps_under_fsdp(two_ranks, float64):
    _, ranks = two_ranks
    for rank in ranks:
        assert _max_difference(rank["compiled"], rank["uncertainty joint fsdp"]["model"]) < 1e-12


def test_gradient_methods_are_refused_under_fsdp(two_ranks):
    _, ranks = two_ranks
    for method in REFUSED:
        message = ranks[0][f"{method} refused"]
        assert "fsdp" in message and "ddp" in message and "per-task gradients" in message, \
            message


def test_the_stacked_weights_are_sharded_on_the_expert_axis(two_ranks):
    _, ranks = two_ranks
    for found in ranks:
        shards = found["shards"]
        for name in ("experts.layers.0.weight", "experts.layers.1.weight"):
            whole, local = shards[name]
            assert whole[0] == 4 and local == (2, *whole[1:]), (name, whole, local)
        whole, local = shards["experts.layers.0.bias"]
        assert local == (2, whole[1])


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_other_architectures_take_the_steps_of_one_process(two_ranks, float64, name):
    _, ranks = two_ranks
    expected = architecture(name, WORLD * BATCH, "none").model.state_dict()
    assert _max_difference(ranks[0][name], expected) < 1e-10
    assert _max_difference(ranks[0][name], ranks[1][name]) == 0
    if name == "shared_bottom":  # one group: split on its longest axis instead
        assert ranks[0][f"{name} shards"]["bottom.layers.0.weight"] == ((1, 6, 8), (1, 6, 4))


def test_checkpoints_cross_between_fsdp_and_one_process(two_ranks, float64):
    base, ranks = two_ranks
    one = trainer("uncertainty", "joint", WORLD * BATCH, "none")
    one.load(base / "ranks" / "fsdp.pt")
    assert _max_difference(one.model.state_dict(), ranks[0]["saved"]) == 0
    # one process's checkpoint resumed under FSDP continues as one process does
    expected = fit("uncertainty", "joint", WORLD * BATCH, "none", epochs=3,
                   checkpoint=base / "one.pt")
    assert _max_difference(ranks[0]["resumed"], expected.model.state_dict()) < 1e-10
    assert _max_difference(ranks[0]["resumed"], ranks[1]["resumed"]) == 0
    optimizer = expected.optimizer.state_dict()["state"]
    for index, state in ranks[0]["resumed optimizer"]["state"].items():
        assert _max_difference(state, optimizer[index]) < 1e-10
