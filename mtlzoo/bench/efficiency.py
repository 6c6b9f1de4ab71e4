"""How close a large MMoE / PLE train step comes to the machine's matmul rate (issue 15).

One train step is: zero the gradients, forward, every task's BCE (with logits) summed and
averaged over the batch, backward, Adam's step (``fused=True``, lr 1e-3): the optimizer is
counted in the step's time. Its FLOPs are those ``torch.utils.flop_counter.FlopCounterMode``
counts in one forward + backward (the optimizer's elementwise work is not counted, only its
time). The yardstick is a ``B x d @ d x B`` fp32 matmul (4096x512 @ 512x4096 at the target's
size), timed in the same process three times after every step; ``efficiency`` is the step's
FLOP/s over the matmul's.

:func:`measure` is one process's run; :func:`benchmark` (``benchmarks/efficiency.py``) runs
it in ``processes`` fresh processes, takes the median per model, checks the target
(:data:`TARGET` of the matmul rate at the target's size, on CPU), and adds a per-op
breakdown of one step of each model (``torch.profiler``, ops by self CPU time), written to
``out/efficiency.{md,csv}`` and ``out/efficiency_runs.csv``.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

import mtlzoo
from mtlzoo.bench.peers import load_average
from mtlzoo.bench.report import RESULTS, markdown_report, stamp, write_result
from mtlzoo.bench.speed import SpeedResult, in_fresh_process, ple_split
from mtlzoo.memory import keep_freed_memory

PROFILE_WARMUP = 6  # steps before the profiled one
PROFILE_TRIES = 5  # profiled steps until one takes at most 1.25x the median of 3 unprofiled
TARGET = 0.85  # of the same-run matmul FLOP/s, MMoE and PLE, median over processes
FAMILIES = ("mmoe", "ple")
# How a process gets memory for large tensors: glibc's default (a fresh mmap for each large
# tensor, faulted in page by page every step) or ``mtlzoo.memory.keep_freed_memory()``
# (freed memory kept in the heap and reused). Each process is started fresh in one of them.
MEMORY = ("default", "kept")
COLUMNS = ["model", "memory", "B", "d", "width", "E", "T", "step_ms", "step_ms_min", "step_ms_max",
           "gflop_per_step", "step_gflops", "matmul_gflops", "efficiency",
           "efficiency_min", "efficiency_max"]
OP_COLUMNS = ["model", "memory", "op", "calls", "self_cpu_ms", "share_of_step"]


@dataclass(frozen=True)
class Size:
    """The model and batch sizes; the defaults are issue 15's target: B=4096, d=512, expert
    width 256, E=64, T=8 binary tasks, towers (64,), PLE 2 levels with E // (2T) experts per
    task and the rest shared."""

    batch_size: int = 4096
    in_features: int = 512
    expert_width: int = 256
    num_experts: int = 64
    num_tasks: int = 8
    tower_width: int = 64
    num_levels: int = 2

    @property
    def is_target(self) -> bool:
        return self == Size()


def build(family: str, size: Size, seed: int = 0) -> nn.Module:
    """``family`` ("mmoe" or "ple") at ``size``, its weights drawn from ``seed``."""
    tasks = [mtlzoo.Task(f"task{t}") for t in range(size.num_tasks)]
    shared, own = ple_split(size.num_experts, size.num_tasks)
    options = {
        "mmoe": {"num_experts": size.num_experts},
        "ple": {"num_levels": size.num_levels, "num_task_experts": own,
                "num_shared_experts": shared},
    }[family]
    torch.manual_seed(seed)
    return mtlzoo.create_model(family, in_features=size.in_features, tasks=tasks,
                               expert_dims=(size.expert_width,),
                               tower_dims=(size.tower_width,), **options)


class TrainStep:
    """Zero the gradients, forward, BCE of every task summed and averaged, backward, Adam."""

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, lr: float = 1e-3) -> None:
        self.model, self.x, self.y = model.train(), x, y
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=True)

    def loss(self) -> Tensor:
        logits = torch.cat(list(self.model(self.x).logits.values()), dim=1)
        return F.binary_cross_entropy_with_logits(logits, self.y, reduction="sum") / self.y.shape[0]

    def __call__(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.loss().backward()
        self.optimizer.step()


def make_step(family: str, size: Size, seed: int = 0) -> TrainStep:
    model = build(family, size, seed)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(size.batch_size, size.in_features, generator=generator)
    y = torch.randint(0, 2, (size.batch_size, size.num_tasks), generator=generator).float()
    return TrainStep(model, x, y)


def step_flops(step: TrainStep) -> int:
    """FLOPs of one forward + backward (FlopCounterMode), gradients dropped afterwards."""
    with FlopCounterMode(display=False) as counter:
        step.loss().backward()
    step.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def _set_up(threads: int, memory: str) -> None:
    if memory not in MEMORY:
        raise ValueError(f"memory must be one of {MEMORY}, got {memory!r}")
    torch.set_num_threads(threads)
    if memory == "kept" and not keep_freed_memory():
        raise RuntimeError("memory='kept' needs glibc (mtlzoo.memory.keep_freed_memory)")


def _seconds(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def measure(size: dict | None = None, repeats: int = 5, warmup: int = 2,
            threads: int = 2, memory: str = "default", matmuls: int = 3) -> list[dict]:
    """One process's run, one record per family: ``warmup`` steps of each, then ``repeats``
    rounds of one step of each family, each step followed by ``matmuls`` timed (B, d) @
    (d, B) matmuls. A family's step time is the median of its steps, the matmul's rate the
    median over every matmul of the run: the yardstick is sampled all along the steps, so
    the drift of a shared machine touches both alike. ``memory``: one of :data:`MEMORY`,
    set first (for the rest of the process)."""
    _set_up(threads, memory)
    size = Size(**(size or {}))
    steps = {family: make_step(family, size) for family in FAMILIES}
    flops = {family: step_flops(step) for family, step in steps.items()}
    a = torch.randn(size.batch_size, size.in_features)
    b = torch.randn(size.in_features, size.batch_size)
    for step in steps.values():
        for _ in range(warmup):
            step()
    for _ in range(2):
        torch.mm(a, b)
    times: dict[str, list[float]] = {family: [] for family in FAMILIES}
    matmul_times = []
    for _ in range(repeats):
        for family, step in steps.items():
            times[family].append(_seconds(step))
            matmul_times += [_seconds(lambda: torch.mm(a, b)) for _ in range(matmuls)]
    matmul = 2 * size.batch_size**2 * size.in_features / statistics.median(matmul_times)
    seconds = {family: statistics.median(times[family]) for family in FAMILIES}
    return [{
        "model": family, "memory": memory, "B": size.batch_size, "d": size.in_features,
        "width": size.expert_width, "E": size.num_experts, "T": size.num_tasks,
        "step_ms": 1e3 * seconds[family], "gflop_per_step": flops[family] / 1e9,
        "step_gflops": flops[family] / seconds[family] / 1e9, "matmul_gflops": matmul / 1e9,
        "efficiency": flops[family] / seconds[family] / matmul,
    } for family in FAMILIES]


def op_breakdown(size: dict | None = None, top: int = 12, threads: int = 2,
                 memory: str = "default", families: tuple[str, ...] = FAMILIES) -> list[dict]:
    """Per family, the ``top`` ops of one typical step by self CPU time: after
    :data:`PROFILE_WARMUP` warm-up steps (kept memory takes a few steps to reach the heap size
    it reuses), the first profiled step that takes at most 1.25x the median of 3 unprofiled
    ones (:data:`PROFILE_TRIES` at most: this VM's page faults slow a step now and then),
    each with its calls, self CPU ms and share of the step's total self CPU time; and a row
    ``(other)`` for the rest."""
    from torch.profiler import ProfilerActivity, profile

    _set_up(threads, memory)
    size = Size(**(size or {}))
    rows = []
    for family in families:
        step = make_step(family, size)
        for _ in range(PROFILE_WARMUP):
            step()
        typical = statistics.median(_seconds(step) for _ in range(3))
        for _ in range(PROFILE_TRIES):  # a step the system slowed (page faults) is retried
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                seconds = _seconds(step)
            if seconds <= 1.25 * typical:
                break
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events) or 1.0
        for event in events[:top]:
            rows.append({"model": family, "memory": memory, "op": event.key, "calls": event.count,
                         "self_cpu_ms": event.self_cpu_time_total / 1e3,
                         "share_of_step": event.self_cpu_time_total / total})
        rest = sum(e.self_cpu_time_total for e in events[top:])
        rows.append({"model": family, "memory": memory, "op": "(other)",
                     "calls": sum(e.count for e in events[top:]),
                     "self_cpu_ms": rest / 1e3, "share_of_step": rest / total})
    return rows


def median_over_processes(runs: pd.DataFrame) -> pd.DataFrame:
    """Median per model over processes, with the range of the step time and efficiency."""
    keys = ["model", "memory", "B", "d", "width", "E", "T"]
    grouped = runs.groupby(keys, sort=False)
    table = grouped[["step_ms", "gflop_per_step", "step_gflops", "matmul_gflops",
                     "efficiency"]].median()
    table["step_ms_min"], table["step_ms_max"] = grouped.step_ms.min(), grouped.step_ms.max()
    table["efficiency_min"] = grouped.efficiency.min()
    table["efficiency_max"] = grouped.efficiency.max()
    return table.reset_index()[COLUMNS]


def check_target(table: pd.DataFrame, processes: int) -> list[str]:
    """Each model's median efficiency against :data:`TARGET`, ``met`` or ``MISSED``."""
    return [
        f"{row.model.upper()}, {row.memory} memory: {row.efficiency:.2f} of the matmul rate, "
        f"median over {processes} processes "
        f"(range {row.efficiency_min:.2f}-{row.efficiency_max:.2f}; "
        f"target {TARGET}): {'met' if row.efficiency >= TARGET else 'MISSED'}"
        for row in table.itertuples()
    ]


def benchmark(out: Path = RESULTS, processes: int = 3, repeats: int = 5, warmup: int = 2,
              threads: int = 2, size: Size | None = None, top: int = 12,
              command: str | None = None) -> SpeedResult:
    """:func:`measure` in ``processes`` fresh processes, the median, the target checked (at
    the target's size only), and :func:`op_breakdown` in one more fresh process per model
    and memory setting (so that one model's heap does not shape the other's); written
    to ``out/efficiency.{md,csv}`` (and ``efficiency_runs.csv``)."""
    size = size or Size()
    out.mkdir(parents=True, exist_ok=True)
    command = command or f"mtlzoo.bench.efficiency.benchmark(processes={processes})"
    load_before = load_average()
    runs = []
    for i in range(processes):  # the settings alternate, so that drift touches both alike
        for memory in MEMORY:
            print(f"process {i + 1}/{processes}, memory {memory}", file=sys.stderr)
            runs += in_fresh_process(measure, asdict(size), repeats, warmup, threads, memory)
    runs = pd.DataFrame(runs)
    table = median_over_processes(runs)
    ops = pd.DataFrame([row for memory in MEMORY
                        for family in FAMILIES
                        for row in in_fresh_process(op_breakdown, asdict(size), top, threads,
                                                    memory, [family])], columns=OP_COLUMNS)
    load = f"{load_before} / {load_average()}"
    checks = check_target(table, processes) if size.is_target else []
    own = max(1, size.num_experts // (2 * size.num_tasks))
    about = [
        f"CPU fp32, {threads} threads. B={size.batch_size}, d={size.in_features}, expert "
        f"width {size.expert_width}, E={size.num_experts}, T={size.num_tasks} binary tasks, "
        f"towers ({size.tower_width},); PLE {size.num_levels} levels with {own} experts per "
        f"task and {max(1, size.num_experts - size.num_tasks * own)} shared. One train step: "
        "zero the gradients, forward, BCE of every task summed and averaged, backward, "
        "Adam (fused) step; the optimizer is in the time. `gflop_per_step`: FlopCounterMode's "
        "count of one forward + backward. `efficiency`: the step's FLOP/s over a "
        f"{size.batch_size}x{size.in_features} @ {size.in_features}x{size.batch_size} fp32 "
        "matmul's, timed three times after every step in the same process (its rate the median "
        "of all of them); a step time is the median of "
        f"{repeats} steps after {warmup} warm-up steps, then the median over {processes} fresh "
        "processes (`_min`/`_max`: their range). `memory`: `default` is glibc's malloc as "
        "torch uses it, where every fresh large tensor is a new mapping faulted in 4 KiB page "
        "by page; `kept` the same code in processes that first call "
        "`mtlzoo.memory.keep_freed_memory()`, so a step reuses the heap pages the one before "
        "freed (the matmul yardstick of those processes too); the two settings alternate "
        "process by process. "
        f"Load average (1, 5, 15 min) before / after the run: {load}; on a shared machine "
        "other jobs take cores from the step and the yardstick alike, but not evenly.",
    ]
    after = [f"* {line}" for line in checks]
    after += ["", "## Where a step's time goes",
              "", f"One typical step of each model after {PROFILE_WARMUP} warm-up steps (the "
              "first profiled step within 1.25x the median of 3 unprofiled ones), in one more "
              "fresh process per model and "
              "setting (`torch.profiler`, CPU): the top ops by self CPU time, their share of the "
              "step's total self CPU time, and the rest as `(other)`. `aten::addmm`, "
              "`aten::mm`, `aten::bmm` and `aten::baddbmm` are the matmuls.",
              "", markdown_table_ops(ops)]
    markdown = markdown_report("MMoE and PLE train step: FLOP/s as a share of a matmul's (cpu)",
                               stamp(command), about, table, digits=3, after=after)
    return SpeedResult(table, write_result(out / "efficiency", table, markdown, runs),
                       markdown, checks)


def markdown_table_ops(ops: pd.DataFrame) -> str:
    from mtlzoo.bench.report import markdown_table

    return markdown_table(ops, digits=3)
