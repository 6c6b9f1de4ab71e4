"""The trainer's step eager, compiled (``Trainer(compile=True)``, inductor) and in bf16
(``Trainer(precision="bf16")``), for MMoE and PLE at the speed suite's sizes.

A step is ``Trainer``'s own: forward, the per-task losses, backward, Adam. Each of
``processes`` fresh processes (one thread, its own empty inductor cache, so every compile is
cold) times every variant of every model, the variants' steps interleaved
(``speed.median_seconds``): the median of ``repeats`` steps after ``warmup``; the compile
time is the first compiled step's time less that median, kept out of the step time. The
table holds the median over processes.
"""

from __future__ import annotations

import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from mtlzoo.bench.report import RESULTS, markdown_report, stamp, write_result
from mtlzoo.bench.speed import SpeedResult, expert_grid, in_fresh_process, median_seconds

# variant -> the Trainer options it sets
VARIANTS = {
    "eager": {},
    "compiled": {"compile": True},
    "bf16": {"precision": "bf16"},
}
KEYS = ["model", "E", "T"]


def time_variants(batch_size: int, repeats: int, warmup: int,
                  settings: list[list[int]]) -> list[dict]:
    """One process's timing: for each model of :func:`expert_grid` at ``settings`` (E, T),
    every variant's median step seconds and, compiled, the compile seconds (one thread)."""
    import torch._inductor.config

    torch.set_num_threads(1)
    torch._inductor.config.compile_threads = 1
    with tempfile.TemporaryDirectory(prefix="inductor-") as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        return _time_variants(batch_size, repeats, warmup, settings)


def _time_variants(batch_size: int, repeats: int, warmup: int,
                   settings: list[list[int]]) -> list[dict]:
    from mtlzoo import Trainer
    from mtlzoo.data.schedule import JOINT

    rows = []
    for (experts, tasks) in settings:
        for description, model in expert_grid(experts=(experts,), tasks=(tasks,)):
            generator = torch.Generator().manual_seed(0)
            x = torch.randn(batch_size, model.in_features, generator=generator)
            batch = {JOINT: {"x": x, **{task.name: torch.randint(0, 2, (batch_size,),
                                                                 generator=generator).float()
                                        for task in model.tasks}}}
            steps, first = {}, {}
            for variant, options in VARIANTS.items():  # each on a copy of the same weights
                trainer = Trainer(copy.deepcopy(model), progress=False, strategy="none",
                                  **options)
                start = time.perf_counter()
                trainer._step(batch, 1)  # compiles, for the compiled variant
                first[variant] = time.perf_counter() - start
                steps[variant] = lambda trainer=trainer, batch=batch: trainer._step(batch, 2)
            seconds = median_seconds(steps, repeats=repeats, warmup=warmup, rotate=True)
            row = {**description, **{f"{variant}_ms": 1e3 * value
                                     for variant, value in seconds.items()},
                   "compile_s": first["compiled"] - seconds["compiled"]}
            print(f"{description}: {row}", file=sys.stderr)
            rows.append(row)
            torch._dynamo.reset()
    return rows


def benchmark(out: Path = RESULTS, batch_size: int = 1024, repeats: int = 20,
              warmup: int = 3, processes: int = 3,
              settings: tuple[tuple[int, int], ...] = ((8, 2),),
              command: str | None = None) -> SpeedResult:
    """Time the variants in ``processes`` fresh processes (:func:`time_variants`); write the
    median over processes to ``out/compile_speed.{md,csv}`` and the runs to
    ``compile_speed_runs.csv``."""
    command = command or f"mtlzoo.bench.compile_speed.benchmark(batch_size={batch_size})"
    torch.set_num_threads(1)  # as in the timing processes, for the stamp
    runs = []
    for i in range(processes):
        print(f"process {i + 1}/{processes}", file=sys.stderr)
        runs += in_fresh_process(time_variants, batch_size, repeats, warmup,
                                 [list(point) for point in settings])
    runs = pd.DataFrame(runs)
    table = runs.groupby(KEYS, sort=False)[
        ["eager_ms", "compiled_ms", "bf16_ms", "compile_s"]].median().reset_index()
    table["compiled_speedup"] = table.eager_ms / table.compiled_ms
    table["bf16_speedup"] = table.eager_ms / table.bf16_ms
    about = (
        f"Batch {batch_size}, 128 features, expert width 64, towers (32,), binary tasks, "
        "weighting `equal`, Adam; one thread. A step is the trainer's: forward, losses, "
        "backward, optimizer step. `eager_ms`: `Trainer()`; `compiled_ms`: "
        "`Trainer(compile=True)` (inductor, the compile time `compile_s` excluded: the first "
        "step's time over the median step's, with an empty inductor cache); `bf16_ms`: "
        "`Trainer(precision=\"bf16\")`, eager. Each figure is the median over "
        f"{processes} fresh processes of the median of {repeats} steps; `*_speedup` is "
        "eager over the variant. PLE has 2 levels; E is its experts per level."
    )
    markdown = markdown_report(
        "Train step: eager, compiled, bf16 (cpu)",
        stamp(command), [about],
        table[[*KEYS, "eager_ms", "compiled_ms", "compiled_speedup", "compile_s", "bf16_ms",
               "bf16_speedup"]],
    )
    report = write_result(out / "compile_speed", table, markdown, runs)
    return SpeedResult(table, report, markdown)
