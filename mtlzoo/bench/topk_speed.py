"""Sparse top-k gates against dense softmax gates: MMoE's train step at E in (8, 16, 64, 256).

One process times, interleaved, the forward and backward of the same MMoE (same experts,
towers and batch) with ``gate="softmax"`` (every expert runs for every row) and with
``gate="topk"`` (only the chosen (row, expert) pairs run, :func:`mtlzoo.layers.sparse_mixture`),
and counts each step's FLOPs with torch's FlopCounterMode. :func:`benchmark` runs that in
``processes`` fresh processes and takes the median, recording the load average before and
after (``benchmarks/topk_speed.py``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

import mtlzoo
from mtlzoo.bench import peers
from mtlzoo.bench.report import RESULTS, markdown_report, stamp, write_result
from mtlzoo.bench.speed import SpeedResult, in_fresh_process, median_seconds

EXPERTS = (8, 16, 64, 256)
THREADS = (1, 2)
KEYS = ["threads", "E", "k"]
COLUMNS = [*KEYS, "dense_ms", "topk_ms", "speedup", "speedup_min", "speedup_max",
           "rows_run", "dense_gflop", "topk_gflop", "processes"]


@dataclass(frozen=True)
class Size:
    """The benchmark's MMoE: experts that dominate the step (one wide layer each), small
    gates and towers."""

    batch_size: int = 512
    in_features: int = 128
    expert_width: int = 256
    num_tasks: int = 2
    tower_width: int = 16
    top_k: int = 2


class ForwardBackward:
    """Forward, every task's logits averaged plus the aux_loss, backward; the gradients then
    set to None (no optimizer: its step touches every expert's parameters either way)."""

    def __init__(self, model: nn.Module, x: Tensor) -> None:
        self.model, self.x = model, x

    def loss(self) -> Tensor:
        out = self.model(self.x)
        return sum(logits.mean() for logits in out.logits.values()) + out.aux_loss

    def __call__(self) -> None:
        self.loss().backward()
        for param in self.model.parameters():
            param.grad = None


def models(num_experts: int, size: Size) -> tuple[nn.Module, nn.Module]:
    """The dense and the top-k MMoE, the top-k one holding the dense one's experts, towers
    and clean gate weights (its noise weights its own)."""
    tasks = [mtlzoo.Task(f"task{t}") for t in range(size.num_tasks)]
    options = {"in_features": size.in_features, "tasks": tasks, "num_experts": num_experts,
               "expert_dims": (size.expert_width,), "tower_dims": (size.tower_width,)}
    dense = mtlzoo.create_model("mmoe", **options)
    topk = mtlzoo.create_model("mmoe", gate="topk", top_k=size.top_k, **options)
    state = dense.state_dict()
    noisy_weight = topk.gates.logits.weight.detach().clone()
    noisy_weight[..., :num_experts] = state.pop("gates.logits.weight")
    topk.load_state_dict({**state, "gates.logits.weight": noisy_weight})
    return dense, topk


def busiest_expert_rows(experts: Tensor, num_experts: int) -> int:
    """n: the most rows any expert runs, given the chosen ids (b, g, k) (a pair two gates
    chose runs once)."""
    batch = experts.shape[0]
    used = torch.zeros(batch, num_experts, dtype=torch.bool)
    return int(used.scatter(1, experts.flatten(1), True).sum(0).max())


def step_flops(step: ForwardBackward) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def measure(experts: Sequence[int] = EXPERTS, repeats: int = 10, warmup: int = 2,
            size: dict | None = None, threads: Sequence[int] = THREADS,
            seed: int = 0) -> list[dict]:
    """One process's run: for each torch thread count in ``threads`` (set for the rest of
    the process) and each E, the dense and the top-k step timed interleaved (``repeats``
    rounds after ``warmup``), their FLOPs, and the rows the top-k experts ran (E n, n the
    busiest expert's count, over the dense B E)."""
    size = Size(**(size or {}))
    records = []
    for num_threads, num_experts in [(t, e) for t in threads for e in experts]:
        torch.set_num_threads(num_threads)
        torch.manual_seed(seed)
        dense, topk = models(num_experts, size)
        x = torch.randn(size.batch_size, size.in_features)
        steps = {"dense": ForwardBackward(dense, x), "topk": ForwardBackward(topk, x)}
        seconds = median_seconds(steps, repeats=repeats, warmup=warmup, rotate=True)
        with torch.no_grad():
            busiest = busiest_expert_rows(topk.gates(x).experts, num_experts)
        records.append({
            "threads": num_threads, "E": num_experts, "k": size.top_k,
            "dense_ms": 1e3 * seconds["dense"], "topk_ms": 1e3 * seconds["topk"],
            "speedup": seconds["dense"] / seconds["topk"],
            "rows_run": busiest / size.batch_size,
            "dense_gflop": step_flops(steps["dense"]) / 1e9,
            "topk_gflop": step_flops(steps["topk"]) / 1e9,
        })
        print(f"{num_threads} threads, E={num_experts}: top-k {records[-1]['speedup']:.2f}x "
              "dense", file=sys.stderr)
    return records


def median_over_processes(runs: pd.DataFrame) -> pd.DataFrame:
    """Per E, the median over processes of every figure, the speed-up's range, the count."""
    grouped = runs.groupby(KEYS, sort=False)
    table = grouped[["dense_ms", "topk_ms", "speedup", "rows_run", "dense_gflop",
                     "topk_gflop"]].median()
    table["speedup_min"] = grouped.speedup.min()
    table["speedup_max"] = grouped.speedup.max()
    table["processes"] = grouped.size()
    return table.reset_index().reindex(columns=COLUMNS)


def benchmark(out: Path = RESULTS, processes: int = 3, repeats: int = 10, warmup: int = 2,
              experts: Sequence[int] = EXPERTS, size: Size | None = None,
              threads: Sequence[int] = THREADS, command: str | None = None) -> SpeedResult:
    """:func:`measure` in ``processes`` fresh processes, the median per E, written to
    ``out/topk_speed.{md,csv}`` and ``out/topk_speed_runs.csv``."""
    size = size or Size()
    out.mkdir(parents=True, exist_ok=True)
    command = command or f"mtlzoo.bench.topk_speed.benchmark(processes={processes})"
    load_before = peers.load_average()
    runs = []
    for i in range(processes):
        print(f"process {i + 1}/{processes}", file=sys.stderr)
        records = in_fresh_process(measure, list(experts), repeats, warmup, asdict(size),
                                   list(threads))
        runs += [{"process": i + 1, **record} for record in records]
    runs = pd.DataFrame(runs)
    table = median_over_processes(runs)
    load = f"{load_before} / {peers.load_average()}"
    markdown = report(table, command, load, size, processes, repeats, warmup, threads)
    return SpeedResult(table, write_result(out / "topk_speed", table, markdown, runs),
                       markdown)


def report(table: pd.DataFrame, command: str, load: str, size: Size, processes: int,
           repeats: int, warmup: int, threads: Sequence[int]) -> str:
    about = [
        f"CPU fp32, {' and '.join(map(str, threads))} torch threads (`threads`). MMoE, "
        f"B={size.batch_size}, {size.in_features} features, T={size.num_tasks} binary "
        f"tasks, experts of one ReLU layer of width {size.expert_width}, towers "
        f"({size.tower_width},): the experts dominate the step. `dense`: "
        "`gate=\"softmax\"`, every expert runs every row. `topk`: "
        f"`gate=\"topk\", top_k={size.top_k}` (training mode: noisy gates and the "
        "load-balancing aux_loss), the same experts, towers and clean gate weights; only the "
        "(row, expert) pairs some gate chose run, padded to the busiest expert's count n "
        "(`rows_run` = E n / (B E) = n / B: the fraction of the dense expert rows the top-k "
        "step ran). A step: forward, the tasks' mean logits plus aux_loss, backward (no "
        "optimizer). `*_gflop`: FlopCounterMode's count of one step.",
        f"In each process the two steps are timed interleaved, {repeats} rounds after "
        f"{warmup} warm-up rounds (each round starting with the other side), and "
        "`speedup` (dense time over top-k time, above 1: top-k is faster) is that "
        f"process's ratio; the table shows the median over {processes} fresh processes "
        "(`speedup_min`/`_max`: its range). The machine is shared and was loaded by other "
        f"jobs: load average (1, 5, 15 min) before / after the run: {load}.",
    ]
    head = stamp(command).split(" | ")
    head[2] = head[2].split(",")[0]  # the thread counts are the table's
    return markdown_report("Sparse top-k gates vs dense softmax gates: MMoE train step (cpu)",
                           " | ".join(head), about, table)
