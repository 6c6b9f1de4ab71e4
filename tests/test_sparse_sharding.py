"""TorchRec tables sharded over 2 gloo ranks (``shard_tables``), the rest of the model
data-parallel (DDP that ignores the tables and sums the ranks' gradients, as the trainer's
does): the steps equal one process's steps with the global batch. Skipped without
``mtlzoo[torchrec]``; the ranks run through ``tests.test_distributed.spawn``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

import mtlzoo
from mtlzoo import MtlzooError
from mtlzoo.encoders import SparseEncoder
from mtlzoo.encoders.sharding import (
    CPU_SHARDING_TYPES,
    gather_tables,
    load_tables,
    shard_tables,
    table_parameter_names,
    table_state_names,
)
from tests.test_distributed import WORLD, spawn

pytest.importorskip("torchrec")

FEATURES = {"user": 13, "item": 8, "tags": 6}
DIM = 8
ROWS = 8  # per rank; one process takes WORLD * ROWS
LR = 0.05
# (optimizer, steps, placements the planner may choose): Adagrad and SGD (what fbgemm's CPU
# kernels offer; both equal torch's step for step), each placement forced once
# (row-wise sharding needs CUDA in TorchRec 1.8)
RUNS = {"adagrad planner": ("adagrad", 3, None),
        "sgd table_wise": ("sgd", 3, ("table_wise",)),
        "adagrad column_wise": ("adagrad", 2, ("column_wise",), {"min_partition": DIM // 2})}
OPTIMIZERS = {"adagrad": lambda params: torch.optim.Adagrad(params, lr=LR, eps=1e-8),
              "sgd": lambda params: torch.optim.SGD(params, lr=LR)}


def model() -> mtlzoo.MultiTaskModel:
    torch.manual_seed(0)
    encoder = SparseEncoder(FEATURES, 2, embedding_dim=DIM, pooling={"tags": "mean"},
                            backend="torchrec")
    return mtlzoo.create_model("mmoe", tasks=[mtlzoo.Task("a"), mtlzoo.Task("b")],
                               encoder=encoder, num_experts=3, expert_dims=(8,),
                               tower_dims=(4,))


def batches(steps: int) -> list[dict[str, torch.Tensor]]:
    """``steps`` global batches (WORLD * ROWS rows): ids, a multi-hot column, labels."""
    g = torch.Generator().manual_seed(1)
    rows = WORLD * ROWS
    found = []
    for _ in range(steps):
        tags = torch.randint(0, 6, (rows, 3), generator=g)
        tags[torch.arange(3) >= torch.randint(0, 4, (rows, 1), generator=g)] = -1
        found.append({"user": torch.randint(0, 13, (rows,), generator=g),
                      "item": torch.randint(0, 8, (rows,), generator=g), "tags": tags,
                      "dense": torch.randn(rows, 2, generator=g),
                      "a": torch.randint(0, 2, (rows,), generator=g).float(),
                      "b": torch.randint(0, 2, (rows,), generator=g).float()})
    return found


def loss(net: nn.Module, batch: dict, rows: int) -> torch.Tensor:
    """The summed binary cross-entropy of both tasks over ``batch``, divided by the global
    number of rows: the ranks' losses add up to the one-process loss."""
    inputs = {key: batch[key] for key in ("user", "item", "tags", "dense")}
    logits = net(inputs).logits
    return sum(nn.functional.binary_cross_entropy_with_logits(
        logits[task][:, 0], batch[task], reduction="sum") for task in ("a", "b")) / rows


def one_process(optimizer: str, steps: int) -> dict:
    net = model()
    opt = OPTIMIZERS[optimizer](net.parameters())
    for batch in batches(steps):
        opt.zero_grad()
        loss(net, batch, WORLD * ROWS).backward()
        opt.step()
    dense = {k: v for k, v in net.state_dict().items() if "collection" not in k}
    return {"tables": {name: net.encoder.table(name).detach().clone() for name in FEATURES},
            "dense": dense}


def _sum_hook(state, bucket):  # DDP's all-reduce, summing (no division by the world size)
    future = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
    return future.then(lambda done: done.value()[0])


def sharded(rank: int, optimizer: str, steps: int, placements, constraints=None) -> dict:
    net = model()
    if rank == 1:  # rank 0's weights reach every rank: its tables by shard_tables, the
        with torch.no_grad():  # rest by DDP
            for p in net.parameters():
                p.add_(1.0)
    parallel = shard_tables(net, lr=LR, optimizer=optimizer, sharding_types=placements,
                            constraints=constraints)
    assert parallel.module is net
    ignored = table_parameter_names(net)
    assert set(ignored) <= set(table_state_names(net))
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        net, table_state_names(net))
    ddp = nn.parallel.DistributedDataParallel(net)
    ddp.register_comm_hook(None, _sum_hook)
    dense_params = [p for name, p in net.named_parameters() if name not in ignored]
    opt = OPTIMIZERS[optimizer](dense_params)
    for batch in batches(steps):
        mine = {key: value[rank * ROWS: (rank + 1) * ROWS] for key, value in batch.items()}
        opt.zero_grad()
        loss(ddp, mine, WORLD * ROWS).backward()
        opt.step()
    empty = {key: value[:0] for key, value in batches(1)[0].items()}  # the trainer's idle
    no_rows = tuple(net.encoder(  # tasks run on no rows: the all-to-alls still happen
        {key: empty[key] for key in ("user", "item", "tags", "dense")}).shape)
    table_grads = [net.get_parameter(name).grad for name in ignored]
    dense = {k: v.clone() for k, v in net.state_dict().items() if "collection" not in k}
    return {"tables": gather_tables(net.encoder), "dense": dense, "ignored": ignored,
            "no rows": no_rows,
            "table grads": [None if g is None else float(g.abs().sum()) for g in table_grads],
            "plan": {name: (placement.sharding_type, placement.ranks) for name, placement
                     in parallel.plan.plan["encoder.collection"].items()}}


def scenario(rank: int, folder: Path) -> dict:
    return {name: sharded(rank, *run) for name, run in RUNS.items()}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list:
    return spawn(scenario, tmp_path_factory.mktemp("torchrec") / "ranks")


@pytest.mark.parametrize("run", sorted(RUNS))
def test_sharded_tables_take_the_step_of_one_process(two_ranks, run):
    optimizer, steps, placements, *_ = RUNS[run]
    expected = one_process(optimizer, steps)
    first, second = (ranks[run] for ranks in two_ranks)
    assert first["plan"] == second["plan"] and set(first["plan"]) == set(FEATURES)
    assert {kind for kind, _ in first["plan"].values()} <= set(placements or CPU_SHARDING_TYPES)
    assert {rank for _, ranks in first["plan"].values() for rank in ranks} == {0, 1}, \
        first["plan"]  # both ranks hold tables
    if run == "adagrad column_wise":  # every table split over both ranks
        assert all(ranks == [0, 1] for _, ranks in first["plan"].values()), first["plan"]
    assert len(first["ignored"]) == len(FEATURES), first["ignored"]
    assert first["table grads"] == [None] * len(FEATURES)  # fused: the update in backward
    assert first["no rows"] == second["no rows"] == (0, len(FEATURES) * DIM + 2)
    for name in FEATURES:
        assert torch.equal(first["tables"][name], second["tables"][name])
        moved = (expected["tables"][name] - model().encoder.table(name)).abs().max()
        assert moved > 1e-5, name  # the steps changed the table
        torch.testing.assert_close(first["tables"][name], expected["tables"][name],
                                   rtol=1e-5, atol=1e-6)
    for key, value in expected["dense"].items():
        torch.testing.assert_close(first["dense"][key], value, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(second["dense"][key], value, rtol=1e-5, atol=1e-6)


def test_tables_gather_and_load_unsharded():
    net = model()
    tables = gather_tables(net.encoder)
    assert all(torch.equal(tables[name], net.encoder.table(name)) for name in FEATURES)
    load_tables(net.encoder, {name: torch.zeros_like(t) for name, t in tables.items()})
    assert all(net.encoder.table(name).abs().sum() == 0 for name in FEATURES)
    names = [f"encoder.collection.embedding_bags.{name}.weight" for name in FEATURES]
    assert table_parameter_names(net) == table_state_names(net) == names


@pytest.mark.parametrize(("options", "fragment"), [
    ({"optimizer": "adam"}, r"optimizer='adam' for tables on cpu: fbgemm's CPU kernels"),
    ({"optimizer": "lamb"}, r"optimizer must be one of 'sgd', 'adagrad' or 'adam'"),
    ({"sharding_types": ["row_wise"]}, r"'row_wise' on cpu: .*table_wise or column_wise"),
    ({"sharding_types": []}, r"at least one of"),
    ({"lr": 0}, r"lr must be > 0"),
    ({}, r"needs a process group"),
])
def test_shard_tables_checks_its_options(options, fragment):
    with pytest.raises(MtlzooError, match=fragment):
        shard_tables(model(), **options)


def test_shard_tables_refuses_a_model_without_torchrec_tables():
    net = mtlzoo.create_model("mmoe", tasks=[mtlzoo.Task("a")],
                              encoder=SparseEncoder(FEATURES, 2, embedding_dim=4))
    with pytest.raises(MtlzooError, match=r"no SparseEncoder\(backend='torchrec'\)"):
        shard_tables(net)


# --- the Trainer shards the tables itself under DDP --------------------------------------

# weighting -> (the tables' and the rest's optimizer, lr schedule, regime): the one-process
# trainer trains everything with the optimizer named, the sharded one the tables with the
# fused kernel of that name and the rest with the same torch optimizer. Per task: one
# task's batch a step (proportional), or every task's (round robin, which the fused
# kernels update once per pass: exact with SGD alone)
TRAINER_RUNS = {"equal": ("sgd", "constant", "joint"),
                "uncertainty": ("adagrad", "cosine", "joint"),
                "equal per_task proportional": ("adagrad", "constant", "proportional"),
                "uncertainty per_task round_robin": ("sgd", "constant", "round_robin")}
EPOCHS = 2
CUT, STEPS = 2, 5  # the checkpoint is saved after step CUT of 3 a epoch; resumed to STEPS


def table_data() -> dict[str, torch.Tensor]:
    """48 rows: 3 steps of 2 ranks x ROWS an epoch."""
    return {key: torch.cat([batch[key] for batch in batches(3)]) for key in batches(1)[0]}


def run_trainer(weighting: str, optimizer: str, schedule: str, regime: str,
                strategy: str, batch_size: int) -> tuple:
    net = model()
    run = mtlzoo.Trainer(net, weighting.split()[0], OPTIMIZERS[optimizer], lr=LR,
                         lr_schedule=schedule, table_optimizer=optimizer,
                         sampling="round_robin" if regime == "joint" else regime,
                         batch_size=batch_size, input_key=net.encoder.input_keys,
                         progress=False, strategy=strategy)
    data = table_data()
    train = data if regime == "joint" else {
        task: {key: value for key, value in data.items() if key != other}
        for task, other in (("a", "b"), ("b", "a"))}
    # early stopping keeps the best epoch's weights (the tables gathered whole) and restores
    # them at the end (each rank its shards)
    history = run.fit(train, eval=data, epochs=EPOCHS, early_stopping="b/auc", patience=2)
    return run, history


def trained(run: mtlzoo.Trainer, history) -> dict:
    from mtlzoo.encoders.sharding import gather_tables as gather

    net = run.model
    return {"tables": gather(net.encoder),
            "dense": {k: v.clone() for k, v in net.state_dict().items() if "collection" not in k},
            "weighting": {k: v.clone() for k, v in run.weighting.state_dict().items()},
            "history": history, "evaluate": run.evaluate(table_data()),
            "best epoch": run.best_epoch,
            "table grads": [net.get_parameter(name).grad
                            for name in table_parameter_names(net)]}


def resume_run(folder: Path, steps: int, load: bool = False, save: bool = False) -> dict:
    net = model()
    run = mtlzoo.Trainer(net, "uncertainty", OPTIMIZERS["adagrad"], lr=LR,
                         table_optimizer="adagrad", batch_size=ROWS,
                         input_key=net.encoder.input_keys, progress=False, strategy="ddp")
    if load:
        run.load(folder / "cut.ckpt")
    run.fit(table_data(), steps=steps, checkpoint=folder / "cut.ckpt" if save else None)
    return {"tables": gather_tables(net.encoder), "step": run.step,
            "dense": {k: v.clone() for k, v in net.state_dict().items() if "collection" not in k}}


REFUSED = {"fsdp": {"strategy": "fsdp"}, "pcgrad": {"weighting": "pcgrad"},
           "grad_clip": {"grad_clip": 1.0}, "compile": {"compile": True}}


def trainer_scenario(rank: int, folder: Path) -> dict:
    results = {name: trained(*run_trainer(name, *run, "ddp", ROWS))
               for name, run in TRAINER_RUNS.items()}
    results["uninterrupted"] = resume_run(folder, STEPS)
    resume_run(folder, CUT, save=True)
    results["resumed"] = resume_run(folder, STEPS, load=True)
    try:  # round robin with Adagrad's tables: two updates a step, not one
        run_trainer("equal", "adagrad", "constant", "round_robin", "ddp", ROWS)
        results["refused round_robin"] = None
    except MtlzooError as error:
        results["refused round_robin"] = str(error)
    alone = model()  # a one-process checkpoint: no fused optimizer state to resume
    mtlzoo.Trainer(alone, strategy="none", progress=False).save(folder / f"alone{rank}.ckpt")
    try:
        mtlzoo.Trainer(model(), strategy="ddp", progress=False).load(folder / "alone0.ckpt")
        results["refused one-process checkpoint"] = None
    except MtlzooError as error:
        results["refused one-process checkpoint"] = str(error)
    for name, options in REFUSED.items():
        net = model()
        try:
            mtlzoo.Trainer(net, **{"strategy": "ddp", "progress": False, **options})
            results[f"refused {name}"] = None
        except MtlzooError as error:
            results[f"refused {name}"] = str(error)
    return results


@pytest.fixture(scope="module")
def trainer_ranks(tmp_path_factory) -> tuple[list, Path]:
    folder = tmp_path_factory.mktemp("torchrec_trainer") / "ranks"
    return spawn(trainer_scenario, folder), folder


@pytest.mark.parametrize("name", sorted(TRAINER_RUNS))
def test_trainer_shards_tables_and_takes_the_steps_of_one_process(trainer_ranks, name):
    optimizer, schedule, regime = TRAINER_RUNS[name]
    expected = trained(*run_trainer(name, optimizer, schedule, regime, "none", WORLD * ROWS))
    first, second = (ranks[name] for ranks in trainer_ranks[0])
    assert first["table grads"] == [None] * len(FEATURES)  # sharded: the fused update
    assert expected["table grads"][0] is not None  # one process: the trainer's optimizer
    for name_ in FEATURES:
        assert torch.equal(first["tables"][name_], second["tables"][name_])
        moved = (expected["tables"][name_] - model().encoder.table(name_)).abs().max()
        assert moved > 1e-4, name_
        torch.testing.assert_close(first["tables"][name_], expected["tables"][name_],
                                   rtol=1e-5, atol=1e-6)
    for part in ("dense", "weighting"):
        for key, value in expected[part].items():
            for rank in (first, second):
                torch.testing.assert_close(rank[part][key], value, rtol=1e-5, atol=1e-6)
    for table in ("history", "evaluate"):  # evaluation under DDP: every rank's forward
        for rank in (first, second):
            assert list(rank[table].columns) == list(expected[table].columns)
            numeric = expected[table].select_dtypes("number").columns
            assert (rank[table][numeric] - expected[table][numeric]).abs().max().max() < 1e-5
    assert "a/auc" in expected["history"] and expected["evaluate"]["rows"].tolist() == [48, 48]
    assert first["best epoch"] == second["best epoch"] == expected["best epoch"]


def test_sharded_checkpoint_resumes_exactly_and_loads_whole(trainer_ranks):
    ranks, folder = trainer_ranks
    for rank in ranks:
        whole, resumed = rank["uninterrupted"], rank["resumed"]
        assert whole["step"] == resumed["step"] == STEPS
        for name in FEATURES:
            torch.testing.assert_close(resumed["tables"][name], whole["tables"][name],
                                       rtol=0, atol=1e-7)
        for key, value in whole["dense"].items():
            torch.testing.assert_close(resumed["dense"][key], value, rtol=0, atol=1e-7)
    from mtlzoo.train.checkpoint import read_checkpoint

    payload = read_checkpoint(folder / "cut.ckpt")
    tables = payload["optimizer"]["state"]["tables"]  # Adagrad's sums, whole
    assert {k: tuple(v["momentum1"].shape) for k, v in tables.items()} == {
        f"encoder.collection.embedding_bags.{name}.weight": (rows, DIM)
        for name, rows in FEATURES.items()}
    assert all(float(v["momentum1"].abs().sum()) > 0 for v in tables.values())
    net = model()  # the tables whole: the weights load into one process's model
    net.load_state_dict(payload["model"]["state"])
    assert not torch.equal(net.encoder.table("user"), model().encoder.table("user"))
    run = mtlzoo.Trainer(net, "uncertainty", OPTIMIZERS["adagrad"], lr=LR, strategy="none",
                         input_key=net.encoder.input_keys, progress=False)
    with pytest.raises(MtlzooError, match=r"saved with TorchRec tables sharded over ranks"):
        run.load(folder / "cut.ckpt")


@pytest.mark.parametrize(("name", "fragment"), [
    ("fsdp", r"strategy='fsdp': FSDP2 would shard the tables a second time"),
    ("pcgrad", r"weighting PCGrad combines per-task gradients"),
    ("grad_clip", r"grad_clip: the tables' gradients never reach .grad"),
    ("compile", r"compile: torch.compile of TorchRec's sharded collection"),
    ("round_robin", r"sampling='round_robin' with the TorchRec tables sharded and trained by "
                    r"the fused 'adagrad'"),
    ("one-process checkpoint", r"does not fit this trainer: this trainer shards TorchRec "
                               r"tables .* the checkpoint has no state of it"),
])
def test_trainer_refuses_what_sharded_tables_cannot_make_exact(trainer_ranks, name, fragment):
    for rank in trainer_ranks[0]:
        message = rank[f"refused {name}"]
        assert message is not None, name
        assert re.search(fragment, message), message
        if name in REFUSED:
            assert "TorchRec tables (SparseEncoder(backend='torchrec'))" in message


@pytest.mark.parametrize(("options", "fragment"), [
    ({"table_optimizer": "lamb"}, r"table_optimizer must be one of .*, got 'lamb'"),
    ({"table_lr": 0}, r"table_lr must be > 0, got 0"),
])
def test_trainer_checks_the_table_options(options, fragment):
    with pytest.raises(MtlzooError, match=fragment):
        mtlzoo.Trainer(model(), strategy="none", **options)
