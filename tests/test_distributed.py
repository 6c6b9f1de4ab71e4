"""DDP on 2 CPU processes (gloo): 2 ranks x batch B take the steps 1 rank x batch 2B takes,
whatever the masks, for every weighting; evaluation gathers the whole set; a killed 2-rank
run resumes bit-identically; the torchrun command runs.

Each spawned run batches many checks; a hang fails the test at ``TIMEOUT`` seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import mtlzoo
from mtlzoo.data.batches import IndexedBatches
from mtlzoo.encoders import TextEncoder
from mtlzoo.errors import MtlzooError

WORLD = 2
BATCH = 8  # per rank; the one-process reference takes WORLD * BATCH
TIMEOUT = 120
METHODS = ["equal", "uncertainty", "dwa", "rlw", "pcgrad", "mgda", "cagrad", "gradnorm",
           "imtl"]
# (method, regime): the joint regime with masks, NaN labels and row weights; one dataset
# per task, round robin and sampled; MGDA-UB through an encoder with parameters; task b
# labelled so rarely that most steps have no b row on any rank (its head idle)
CASES = ([(method, "joint") for method in METHODS]
         + [(method, "per_task") for method in METHODS]
         + [("equal", "per_task_sampled"), ("uncertainty", "per_task_sampled"),
            ("mgda", "joint_encoder"), ("uncertainty", "joint_by_length"),
            ("pcgrad", "joint_by_length"), ("equal", "joint_rare"),
            ("uncertainty", "joint_rare"), ("pcgrad", "per_task_sampled")])


def tasks() -> list[mtlzoo.Task]:
    return [mtlzoo.Task("a"), mtlzoo.Task("b", kind="multiclass", num_classes=3),
            mtlzoo.Task("c", kind="regression")]


def joint_data(rows: int, seed: int, b_labelled: float = 0.3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 6, generator=g, dtype=torch.float64)
    c = x[:, 2] + 0.1 * torch.randn(rows, generator=g, dtype=torch.float64)
    c[torch.rand(rows, generator=g) < 0.2] = float("nan")  # NaN: unlabelled
    return {
        "x": x, "a": (x[:, 0] > 0).long(), "c": c,
        "b": torch.bucketize(x[:, 1].contiguous(), torch.tensor([-.5, .5])),
        "a_mask": torch.rand(rows, generator=g) < 0.6,  # False: unlabelled
        "b_mask": torch.rand(rows, generator=g) < b_labelled,
        "weight": torch.rand(rows, generator=g, dtype=torch.float64) * 2,
    }


def token_data(rows: int, seed: int) -> dict[str, torch.Tensor]:
    """``joint_data`` with token ids (rows, 12) of lengths 1..12, right-padded, as ``x``."""
    g = torch.Generator().manual_seed(seed + 10)
    lengths = torch.randint(1, 13, (rows,), generator=g)
    ids = torch.randint(1, 20, (rows, 12), generator=g)
    ids[torch.arange(12) >= lengths[:, None]] = 0
    return {**joint_data(rows, seed), "x": ids}


def per_task_data(seed: int) -> dict[str, dict[str, torch.Tensor]]:
    data = joint_data(170, seed)
    return {"a": {"x": data["x"][:60], "label": data["a"][:60]},
            "b": {"x": data["x"][60:130], "label": data["b"][60:130]},
            "c": {"x": data["x"][130:], "label": data["x"][130:, 2] * 2}}


def trainer(method: str, regime: str, batch_size: int, strategy: str,
            dropout: float = 0.0, **options) -> mtlzoo.Trainer:
    torch.manual_seed(0)
    encoders = {"joint_encoder": lambda: nn.Linear(6, 5, dtype=torch.float64),
                "joint_by_length": lambda: TextEncoder(20, 5, pooling="mean")}
    encoder = encoders[regime]() if regime in encoders else None
    features = {"encoder": encoder} if encoder else {"in_features": 6}
    model = mtlzoo.create_model("mmoe", tasks=tasks(), num_experts=3, expert_dims=(8,),
                                tower_dims=(4,), dropout=dropout, **features).double()
    method_options = {"seed": 1} if method in ("pcgrad", "rlw") else None
    sampling = "proportional" if regime == "per_task_sampled" else "round_robin"
    return mtlzoo.Trainer(model, weighting=method, weighting_options=method_options, lr=1e-2,
                          batch_size=batch_size, seed=3, progress=False, sampling=sampling,
                          strategy=strategy,
                          batching="by_length" if regime == "joint_by_length" else "shuffle",
                          **options)


def train(method: str, regime: str, batch_size: int, strategy: str) -> dict:
    """Three epochs (DWA's weights move from the third on); the weights, history, metrics."""
    run = trainer(method, regime, batch_size, strategy)
    if regime == "joint_by_length":
        train_data, eval_data = token_data(100, 1), token_data(61, 2)
    elif regime == "joint_rare":
        train_data, eval_data = joint_data(100, 1, b_labelled=0.04), joint_data(61, 2)
    elif regime.startswith("joint"):
        train_data, eval_data = joint_data(100, 1), joint_data(61, 2)
    else:
        train_data, eval_data = per_task_data(1), per_task_data(2)
    run.fit(train_data, eval=eval_data, epochs=3)
    return {"model": run.model.state_dict(), "weighting": run.weighting.state_dict(),
            "history": run.history.to_dict("list"),
            "eval": run.evaluate(eval_data).to_dict("index")}


# --- spawning 2 ranks ----------------------------------------------------------------------


def _worker(rank: int, scenario, folder: str) -> None:
    torch.set_num_threads(1)  # two ranks on two cores: more threads only contend
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank,
                            world_size=WORLD, timeout=timedelta(seconds=TIMEOUT / 2))
    try:
        run = SCENARIOS[scenario] if isinstance(scenario, str) else scenario
        results = run(rank, Path(folder))
        torch.save(results, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def spawn(scenario, folder: Path, killed: bool = False) -> list:
    """Run ``scenario`` (a name of ``SCENARIOS``, or a module-level function ``(rank,
    folder) -> results`` of another test module) on ``WORLD`` ranks; each rank's results.
    ``killed``: the ranks must end by SIGKILL."""
    folder.mkdir(exist_ok=True)
    context = mp.start_processes(_worker, args=(scenario, str(folder)), nprocs=WORLD,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"{scenario}: the ranks did not finish in {TIMEOUT} s")
    except mp.ProcessExitedException as error:
        if killed and error.signal_name == "SIGKILL":
            return []
        raise
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    assert not killed, f"{scenario}: the ranks were meant to be killed"
    return [torch.load(folder / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]


def _steps(rank: int, folder: Path) -> dict:
    torch.set_default_dtype(torch.float64)
    results = {f"{method} {regime}": train(method, regime, BATCH, "auto")
               for method, regime in CASES}
    loader = torch.utils.data.DataLoader(
        torch.utils.data.StackDataset(**joint_data(40, 1)), batch_size=BATCH)
    try:
        trainer("equal", "joint", BATCH, "ddp").fit(loader, epochs=1)
    except MtlzooError as error:
        results["loader refused"] = str(error)
    results["uninterrupted"] = _resume("full", rank, folder)  # for the resume test
    for method in PENALTY_METHODS:
        results[f"penalty {method}"] = penalty_run(method, BATCH, "ddp")
    for name in mtlzoo.list_models():  # DDP, which needs every parameter in every step
        for regime in ("joint", "per_task_sampled"):
            torch.manual_seed(0)
            model = mtlzoo.create_model(name, in_features=6, tasks=tasks()).double()
            run = mtlzoo.Trainer(model, batch_size=BATCH, progress=False, strategy="ddp",
                                 sampling="proportional")
            run.fit(joint_data(40, 1) if regime == "joint" else per_task_data(1), epochs=1)
            results[f"{name} {regime}"] = run.model.state_dict()
    return results


PENALTY_METHODS = ("equal", "pcgrad")


def penalty_run(method: str, batch_size: int, strategy: str) -> dict:
    """Two epochs of a model whose aux_loss (an L2 penalty between its task columns) has a
    gradient; the weights."""
    torch.manual_seed(0)
    model = mtlzoo.create_model("l2_constrained", in_features=6, tasks=tasks(),
                                column_dims=(5,), penalty=0.5).double()
    run = mtlzoo.Trainer(model, weighting=method, lr=1e-2, batch_size=batch_size, seed=3,
                         progress=False, strategy=strategy,
                         weighting_options={"seed": 1} if method == "pcgrad" else None)
    run.fit(joint_data(100, 1), epochs=2)
    return run.model.state_dict()


KILL_AT = 9  # the step whose ranks are killed; the checkpoint of step 8 is the last one


def dies_after(run: mtlzoo.Trainer, number: int) -> None:
    """Make ``run``'s process end by SIGKILL right after its train step ``number``."""
    step = run._step

    def dying_step(batches, at):
        result = step(batches, at)
        if at == number:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    run._step = dying_step


def _resume(mode: str, rank: int, folder: Path) -> dict:
    torch.set_default_dtype(torch.float64)
    run = trainer("uncertainty", "joint", BATCH, "ddp", dropout=0.2)
    torch.manual_seed(100 + rank)  # every rank's dropout draws its own masks
    checkpoint = folder.parent / "run.pt"
    data = joint_data(100, 1)
    if mode == "killed":
        dies_after(run, KILL_AT)
        run.fit(data, epochs=3, checkpoint=checkpoint, checkpoint_every=4)
    if mode == "resumed":
        run.load(checkpoint)
        assert run.step == KILL_AT - 1, run.step
    run.fit(data, epochs=3)
    return {"model": run.model.state_dict(), "weighting": run.weighting.state_dict()}


MID_EPOCH_STEP = 9  # of 7 steps an epoch (100 rows, global batch 16)


def _mid_epoch(rank: int, folder: Path) -> dict:
    torch.set_default_dtype(torch.float64)
    run = trainer("uncertainty", "joint", BATCH, "ddp")
    data = joint_data(100, 1)
    run.fit(data, steps=MID_EPOCH_STEP, checkpoint=folder.parent / "mid_epoch.pt")
    run.fit(data, epochs=3)
    return {"model": run.model.state_dict(), "weighting": run.weighting.state_dict()}


SCENARIOS = {
    "mid_epoch": _mid_epoch,
    "steps": _steps,
    "killed": lambda rank, folder: _resume("killed", rank, folder),
    "resumed": lambda rank, folder: _resume("resumed", rank, folder),
}


# --- the tests -----------------------------------------------------------------------------


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    for key, value in a.items():  # a generator's state: equal
        if not isinstance(value, torch.Tensor):
            assert str(value) == str(b[key]), key
    return max(((a[k].double() - b[k].double()).abs().max().item() for k in a
                if isinstance(a[k], torch.Tensor) and a[k].numel()), default=0.0)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models on a shared 2-core machine: threads only contend (several times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """The folder of the module's runs; the resume test's checkpoint is ``run.pt`` there."""
    return tmp_path_factory.mktemp("ddp")


@pytest.fixture(scope="module")
def two_ranks(base) -> list:
    return spawn("steps", base / "steps")


@pytest.mark.parametrize(("method", "regime"), CASES)
def test_two_ranks_take_the_steps_of_one_rank_with_the_global_batch(two_ranks, float64,
                                                                    method, regime):
    expected = train(method, regime, WORLD * BATCH, "none")
    first, second = (ranks[f"{method} {regime}"] for ranks in two_ranks)
    assert _max_difference(first["model"], second["model"]) == 0  # the ranks agree exactly
    assert _max_difference(first["weighting"], second["weighting"]) == 0
    assert _max_difference(first["model"], expected["model"]) < 1e-10
    assert _max_difference(first["weighting"], expected["weighting"]) < 1e-10
    assert first["history"].keys() == expected["history"].keys()
    for column, values in expected["history"].items():  # evaluation runs in float32
        tolerance = 1e-9 if column.endswith(("train_loss", "weight")) else 1e-6
        assert first["history"][column] == pytest.approx(values, rel=tolerance, nan_ok=True), \
            column
    # metrics of the whole eval set, gathered: equal on both ranks, AUC exactly as one process
    assert str(first["eval"]) == str(second["eval"])  # NaN included
    for task, metrics in expected["eval"].items():
        for name, value in metrics.items():
            got = first["eval"][task][name]
            if name in ("auc", "rows"):
                assert repr(got) == repr(value), (task, name)  # NaN too
            else:
                assert got == pytest.approx(value, rel=1e-6, nan_ok=True), (task, name)


@pytest.mark.parametrize("method", PENALTY_METHODS)
def test_an_aux_loss_on_the_parameters_takes_one_process_steps(two_ranks, float64, method):
    """Each rank back-propagates its aux_loss over the ranks, once with the losses: a
    penalty on the parameters (the same on every rank) is then exactly one process's."""
    expected = penalty_run(method, WORLD * BATCH, "none")
    first, second = (ranks[f"penalty {method}"] for ranks in two_ranks)
    assert _max_difference(first, second) == 0
    assert _max_difference(first, expected) < 1e-10


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("by_length", [False, True])
def test_the_ranks_slices_make_up_the_global_batches(shuffle, by_length):
    data = token_data(203, 0)
    data["row"] = torch.arange(203)
    key = "x" if by_length else None

    def batches(rank: int, world: int, batch_size: int) -> list:
        source = IndexedBatches(data, batch_size, shuffle, 5, key, rank=rank, world=world)
        return [batch for batch in source.passes(2)]

    whole = batches(0, 1, 3 * 7)
    shards = [batches(rank, 3, 7) for rank in range(3)]
    assert all(len(shard) == len(whole) for shard in shards)
    for step, batch in enumerate(whole):
        rows = torch.cat([shard[step]["row"] for shard in shards])
        assert torch.equal(rows, batch["row"])
        if by_length:  # each slice trimmed to its own longest row
            for shard in shards:
                assert shard[step]["x"].shape[1] <= batch["x"].shape[1]


@pytest.mark.parametrize("name", mtlzoo.list_models())
def test_every_model_trains_under_ddp_in_both_regimes(two_ranks, name):
    """DDP searches for no unused parameter: a task absent from a step runs on no rows."""
    for regime in ("joint", "per_task_sampled"):
        first, second = (ranks[f"{name} {regime}"] for ranks in two_ranks)
        assert _max_difference(first, second) == 0, regime


def test_a_loader_is_refused_under_ddp(two_ranks):
    message = two_ranks[0]["loader refused"]
    assert "DistributedSampler" in message and "DataLoader" in message


def test_strategy_is_checked():
    model = mtlzoo.create_model("mmoe", in_features=6, tasks=tasks())
    with pytest.raises(MtlzooError, match="strategy"):
        mtlzoo.Trainer(model, strategy="horovod")
    with pytest.raises(MtlzooError, match="process group"):
        mtlzoo.Trainer(model, strategy="ddp")


def test_a_killed_two_rank_run_resumes_bit_identically(two_ranks, base, float64):
    spawn("killed", base / "killed", killed=True)
    resumed = spawn("resumed", base / "resumed")
    for rank in range(WORLD):
        for part in ("model", "weighting"):
            for key, value in two_ranks[rank]["uninterrupted"][part].items():
                assert torch.equal(resumed[rank][part][key], value), (rank, part, key)
    # another global batch mid-epoch is refused, naming both
    one = trainer("uncertainty", "joint", BATCH, "none", dropout=0.2)
    one.load(base / "run.pt")
    with pytest.raises(MtlzooError, match=r"batch_size x ranks 16 -> 8"):
        one.fit(joint_data(100, 1), epochs=3)


def test_a_two_rank_checkpoint_resumes_exactly_in_one_process_of_the_global_batch(base,
                                                                                   float64):
    """Saved mid-epoch by 2 ranks x 8 rows, resumed by one process of 16 rows: the steps of
    the uninterrupted 2-rank run (no dropout: the ranks' RNG streams cannot be remapped)."""
    ranks = spawn("mid_epoch", base / "mid_epoch")
    one = trainer("uncertainty", "joint", WORLD * BATCH, "none")
    one.load(base / "mid_epoch.pt")
    assert one.step == MID_EPOCH_STEP and one.state.mid_epoch
    one.fit(joint_data(100, 1), epochs=3)
    for part, state in (("model", one.model.state_dict()),
                        ("weighting", one.weighting.state_dict())):
        assert _max_difference(state, ranks[0][part]) < 1e-12, part


@pytest.mark.parametrize("engine", [[], ["--strategy", "fsdp", "--precision", "bf16"]])
def test_torchrun_trains_from_the_command_line(tmp_path, engine):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "-m", "mtlzoo", "train", "--model", "ple", "--data",
               "synthetic", "--epochs", "1", "--rows", "1000", *engine]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT,
                          cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("y1") == 1, done.stdout  # rank 0 alone prints the table
    assert done.stderr.count("epoch 1/1") == 1, done.stderr[-3000:]
    assert "2 ranks (FSDP2), bf16 autocast." in done.stderr if engine else "(DDP)" in done.stderr
    assert "Warning" not in done.stderr, done.stderr[-3000:]
