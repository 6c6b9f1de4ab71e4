"""The data path against the model: rows/s of ``Trainer.fit`` fed a dict of tensors, a
``datasets.Dataset`` (and a stream, once ``mtlzoo.data.streams`` exists) beside a bare loop
of the same model steps, and the trainer's own per-step overhead.

The case is issue 14's census-sized MMoE: batch 1024, 128 float features, 8 experts of
width 16, towers of 8, two binary tasks (``income``, ``marital``), 200,000 rows, Adam (the
trainer's own optimizer object), equal weighting. The bare loop runs the same steps on
batches cut before the clock starts (one shuffled pass, ``x`` and labels gathered up
front): forward, ``mtlzoo.losses.task_loss`` per task, their sum, backward, Adam. Every
fit side trains one epoch per round through ``Trainer.fit`` (its set-up, the data fetched
and the trainer's bookkeeping all timed), on its own trainer and model.

Each fresh process (``speed.in_fresh_process``) runs a warm-up round and then ``rounds``
rounds, each timing every side once, the order rotating; a side's ratio in a round is its
rows/s over the bare loop's in that round, and the process keeps the median ratio. The
table holds the median over processes (``benchmarks/data_path.py``).

Where a fit's time goes, per step, as a percentage of the bare loop's step: ``data_pct``,
waiting for the batch (the source's ``passes``: indexing, conversion); ``loop_pct``, the
rest of ``fit`` outside the train step (the loop, bookkeeping, progress, the set-up and end
of the epoch); ``step_extra_pct``, the train step's time beyond the bare step's (the
``.tolist()`` sync and finiteness check, hooks, the weighting's bookkeeping);
``overhead_pct`` = ``loop_pct`` + ``step_extra_pct``, the trainer's own overhead, whose
target is under 5%.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import pandas as pd
import torch

import mtlzoo
from mtlzoo.bench.report import RESULTS, markdown_report, stamp, write_result
from mtlzoo.bench.speed import SpeedResult, in_fresh_process
from mtlzoo.data import batches as batches_module
from mtlzoo.losses import task_loss

ROWS, BATCH, FEATURES = 200_000, 1024, 128
EXPERTS, EXPERT_DIMS, TOWER_DIMS = 8, (16,), (8,)
TASKS = ("income", "marital")
BARE, DICT, DATASET, STREAM = ("bare loop", "fit: dict of tensors", "fit: datasets.Dataset",
                               "fit: stream")
TARGETS = {DICT: 0.90, DATASET: 0.80}  # of the bare loop's rows/s
OVERHEAD_TARGET = 5.0  # % of a step
PARTS = ("data_pct", "loop_pct", "step_extra_pct", "overhead_pct")


def has_streams() -> bool:
    """Whether streaming input (``mtlzoo.data.streams``) exists, so that the stream row runs."""
    return importlib.util.find_spec("mtlzoo.data.streams") is not None


def sides() -> list[str]:
    return [BARE, DICT, DATASET, *([STREAM] if has_streams() else [])]


def census_like(rows: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """``rows`` rows of 128 standard-normal float32 features under ``x`` and two binary
    float labels that depend on them (``income``, ``marital``)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, FEATURES, generator=g)
    return {"x": x, "income": (x[:, 0] + x[:, 1] > 0).float(),
            "marital": (x[:, 2] > 0.5).float()}


def _trainer(seed: int = 0) -> mtlzoo.Trainer:
    torch.manual_seed(seed)
    tasks = [mtlzoo.Task(name) for name in TASKS]
    model = mtlzoo.create_model("mmoe", in_features=FEATURES, tasks=tasks,
                                num_experts=EXPERTS, expert_dims=EXPERT_DIMS,
                                tower_dims=TOWER_DIMS)
    return mtlzoo.Trainer(model, batch_size=BATCH, progress=False, seed=seed)


def _bare_pass(trainer: mtlzoo.Trainer, cut: list[dict[str, torch.Tensor]]) -> float:
    """Seconds of one pass of the bare loop over the batches ``cut``."""
    model, optimizer = trainer.model, trainer.optimizer
    tasks = [trainer.tasks[name] for name in TASKS]
    model.train()
    start = time.perf_counter()
    for batch in cut:
        out = model(batch["x"])
        loss = sum(task_loss(task, out.logits[task.name], batch[task.name]) for task in tasks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


class _Clock:
    """Seconds a fit spends in the train step and waiting for batches."""

    def __init__(self) -> None:
        self.step = self.data = 0.0

    def timed_step(self, step):
        def run(batches, number):
            start = time.perf_counter()
            try:
                return step(batches, number)
            finally:
                self.step += time.perf_counter() - start
        return run

    def timed_passes(self, passes):
        clock = self

        def run(source, *args, **kwargs):
            iterator = passes(source, *args, **kwargs)
            while True:
                start = time.perf_counter()
                batch = next(iterator, None)
                clock.data += time.perf_counter() - start
                if batch is None:
                    return
                yield batch
        return run


def _sources() -> list[type]:
    """The trainer's kinds of data source, whose ``passes`` the data clock times."""
    kinds = [batches_module.IndexedBatches, batches_module.IterableBatches]
    if has_streams():
        from mtlzoo.data.streams import StreamBatches

        kinds.append(StreamBatches)
    return kinds


def _stream_of(dataset):
    """The stream the stream row trains on: the same rows as a ``datasets.IterableDataset``
    in torch format (``mtlzoo.data.streams`` takes it)."""
    return dataset.to_iterable_dataset(num_shards=8).with_format("torch")


def time_process(rows: int = ROWS, rounds: int = 5, threads: int = 2) -> list[dict]:
    """In this process, on ``threads`` threads: a warm-up round, then ``rounds`` rounds
    timing one pass of every side (the order rotating); per side, the median over rounds of
    its rows/s, its ratio to the bare loop's in the same round, and where its time went."""
    import datasets

    torch.set_num_threads(threads)
    data = census_like(rows)
    dataset = datasets.Dataset.from_dict({key: value.numpy() for key, value in data.items()})
    names = sides()
    sources = {DICT: data, DATASET: dataset}
    if STREAM in names:
        sources[STREAM] = _stream_of(dataset)
    trainers = {name: _trainer() for name in names}
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(1))
    cut = [{key: value[index] for key, value in data.items()} for index in order.split(BATCH)]
    steps = len(cut)
    clocks = {name: _Clock() for name in names}
    for name in names[1:]:
        trainers[name]._step = clocks[name].timed_step(trainers[name]._step)
    measured: dict[str, list[dict]] = {name: [] for name in names}
    for round_ in range(rounds + 1):  # round 0 warms up
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            clock = clocks[name]
            clock.step = clock.data = 0.0
            if name == BARE:
                seconds = _bare_pass(trainers[BARE], cut)
            else:
                with ExitStack() as stack:
                    for kind in _sources():
                        stack.enter_context(mock.patch.object(
                            kind, "passes", clock.timed_passes(kind.passes)))
                    start = time.perf_counter()
                    trainers[name].fit(sources[name], epochs=round_ + 1)
                    seconds = time.perf_counter() - start
            measured[name].append({"seconds": seconds, "step": clock.step,
                                   "data": clock.data})
    results = []
    for name in names:
        kept = measured[name][1:]
        bare = [m["seconds"] for m in measured[BARE][1:]]
        ratios = [b / m["seconds"] for b, m in zip(bare, kept, strict=True)]
        row = {"side": name, "rows_per_s": statistics.median(rows / m["seconds"] for m in kept),
               "ratio": statistics.median(ratios),
               "ms_per_step": 1000 * statistics.median(m["seconds"] for m in kept) / steps}
        if name != BARE:
            parts = [_parts(m, b) for m, b in zip(kept, bare, strict=True)]
            row.update({part: statistics.median(p[part] for p in parts) for part in PARTS})
        results.append(row)
    return results


def _parts(m: dict, bare_seconds: float) -> dict[str, float]:
    """A fit's time beyond the bare pass's, split (percent of the bare pass)."""
    loop = m["seconds"] - m["step"] - m["data"]
    extra = m["step"] - bare_seconds
    return {"data_pct": 100 * m["data"] / bare_seconds, "loop_pct": 100 * loop / bare_seconds,
            "step_extra_pct": 100 * extra / bare_seconds,
            "overhead_pct": 100 * (loop + extra) / bare_seconds}


def benchmark(out: Path = RESULTS, processes: int = 3, rounds: int = 5, rows: int = ROWS,
              threads: int = 2, command: str | None = None) -> SpeedResult:
    """``processes`` fresh processes, each running :func:`time_process`; the median over
    processes written to ``out/data_path{.md,.csv,_runs.csv}`` (on 2 threads, the target's;
    else ``out/data_path_<n>thread...``), with the targets checked (``result.checks``)."""
    command = command or f"mtlzoo.bench.data_path.benchmark(processes={processes})"
    torch.set_num_threads(threads)  # here too, for the stamp
    load_before = os.getloadavg()
    runs = []
    for i in range(processes):
        print(f"process {i + 1}/{processes}", file=sys.stderr)
        for row in in_fresh_process(time_process, rows, rounds, threads):
            runs.append({"process": i + 1, **row})
    load_after = os.getloadavg()
    runs = pd.DataFrame(runs)
    names = list(dict.fromkeys(runs.side))
    columns = ["rows_per_s", "ratio", "ms_per_step", *PARTS]
    grouped = runs.groupby("side", sort=False)
    table = grouped[columns].median().reindex(names)
    table["ratio_min"], table["ratio_max"] = grouped.ratio.min(), grouped.ratio.max()
    table = table[["rows_per_s", "ratio", "ratio_min", "ratio_max", "ms_per_step", *PARTS]]
    table = table.reset_index()
    table["target"] = [TARGETS.get(name, float("nan")) for name in table.side]
    checks = check_targets(table, processes)
    steps = -(-rows // BATCH)
    streams = ("a stream (`mtlzoo.data.streams`)" if STREAM in names else
               "no stream row: `mtlzoo.data.streams` does not exist yet")
    about = [
        f"Issue 14's census-sized case: MMoE, {EXPERTS} experts of width {EXPERT_DIMS[0]}, "
        f"towers {TOWER_DIMS}, {FEATURES} float features, two binary tasks, batch {BATCH}, "
        f"{rows:,} rows ({steps} steps a pass), Adam, equal weighting, one process, "
        f"{threads} threads. Sides: the bare loop (the same forward, `task_loss` per task, "
        "backward and Adam on batches cut before the clock starts), and `Trainer.fit` "
        f"fed a dict of tensors, a `datasets.Dataset` of the same rows, {streams}.",
        f"Each of {processes} fresh processes times one pass of every side per round, "
        f"{rounds} rounds after a warm-up round, the order rotating; `ratio`: rows/s over the "
        "bare loop's in the same round, the process's median, then the median over "
        "processes (`ratio_min`, `ratio_max`: over processes). `ms_per_step`, `rows_per_s`: "
        "medians, which move with the machine's load; the ratios are the measure.",
        "Per step, as % of the bare loop's step: `data_pct`, waiting for the batch "
        "(indexing, conversion); `loop_pct`, the rest of `fit` outside the train step "
        "(its loop and bookkeeping, the epoch's set-up and end); `step_extra_pct`, the "
        "train step beyond the bare step (the loss sync and finiteness check, hooks, the "
        f"weighting); `overhead_pct`, their sum, the trainer's own overhead (target under "
        f"{OVERHEAD_TARGET:.0f}%). Differences of timings: noisy, and negative when the "
        "trainer's round ran faster than the bare loop's.",
        f"Load average (1, 5, 15 min) of this shared machine: {_load(load_before)} before, "
        f"{_load(load_after)} after.",
    ]
    markdown = markdown_report("Data path: Trainer.fit against a bare loop", stamp(command),
                               about, table, after=[f"* {check}" for check in checks])
    stem = out / ("data_path" if threads == 2 else f"data_path_{threads}thread")
    return SpeedResult(table, write_result(stem, table, markdown, runs), markdown, checks)


def check_targets(table: pd.DataFrame, processes: int) -> list[str]:
    """Each target of :data:`TARGETS` and the overhead's, ``met`` or ``MISSED``."""
    checks = []
    by_side = table.set_index("side")
    for name, target in TARGETS.items():
        row = by_side.loc[name]
        checks.append(f"{name}: {row.ratio:.2f} of the bare loop's rows/s, median over "
                      f"{processes} processes (range {row.ratio_min:.2f}-{row.ratio_max:.2f}; "
                      f"target {target:.2f}): {'met' if row.ratio >= target else 'MISSED'}")
    overhead = by_side.loc[DICT, "overhead_pct"]
    checks.append(f"the trainer's own overhead, dict of tensors: {overhead:.1f}% of a step "
                  f"(target under {OVERHEAD_TARGET:.0f}%): "
                  f"{'met' if overhead < OVERHEAD_TARGET else 'MISSED'}")
    return checks


def _load(load: tuple[float, float, float]) -> str:
    return ", ".join(f"{value:.2f}" for value in load)
