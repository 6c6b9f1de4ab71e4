"""Per-task gradients of the shared parameters: one vectorised backward vs T backward passes.

``mtlzoo.weighting.gradients.task_gradients`` runs one backward batched over the tasks
(``torch.autograd.grad(..., is_grads_batched=True)``); the loop runs
``torch.autograd.grad(L_t, params, retain_graph=True)`` once per task. Both give the same
(t, p) Jacobian (checked here). Time: medians of interleaved runs, forward included (each
method needs a fresh graph). Peak memory: the growth of the resident set while a fresh
process computes the gradients for the first time (after its forward pass), sampled every
0.2 ms. ``benchmarks/task_gradients.py`` runs :func:`benchmark`.
"""

from __future__ import annotations

import resource
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import torch

import mtlzoo
from mtlzoo.bench import speed
from mtlzoo.bench.report import RESULTS, markdown_report, stamp, write_result
from mtlzoo.weighting.gradients import task_gradients

GRID = [  # model, experts, tasks, batch size
    ("mmoe", 8, 8, 32), ("mmoe", 8, 16, 32), ("mmoe", 8, 2, 1024), ("mmoe", 8, 8, 1024),
    ("mmoe", 64, 8, 1024), ("ple", 16, 8, 1024),
]


def setup(name: str, experts: int, tasks: int, batch_size: int = 1024):
    """The model (E experts; PLE split as :func:`mtlzoo.bench.speed.ple_split`), a batch of
    128 standard normal features and 0/1 labels, one per task."""
    torch.manual_seed(0)
    task_list = [mtlzoo.Task(f"task{t}") for t in range(tasks)]
    if name == "mmoe":
        options = {"num_experts": experts}
    else:
        shared, own = speed.ple_split(experts, tasks)
        options = {"num_task_experts": own, "num_shared_experts": shared}
    model = mtlzoo.create_model(name, in_features=128, tasks=task_list, expert_dims=(64,),
                                tower_dims=(32,), **options)
    x = torch.randn(batch_size, 128)
    labels = (torch.rand(batch_size, tasks) > 0.5).float()
    return model, x, labels


def losses(model, x, labels) -> torch.Tensor:
    out = model(x)
    return torch.stack([
        torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], labels[:, t])
        for t, logits in enumerate(out.logits.values())
    ])


def vectorised(model, x, labels) -> torch.Tensor:
    return task_gradients(losses(model, x, labels), model.shared_parameters())[0]


def looped(model, x, labels) -> torch.Tensor:
    values, params = losses(model, x, labels), model.shared_parameters()
    rows = []
    for t in range(len(values)):
        grads = torch.autograd.grad(values[t], params, retain_graph=t < len(values) - 1,
                                    allow_unused=True, materialize_grads=True)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


METHODS = {"vectorised": vectorised, "loop": looped}


def peak_growth_mb(method: str, name: str, experts: int, tasks: int, batch: int) -> float:
    """Resident-set growth while ``method`` computes the gradients; meant for a fresh
    process (:func:`mtlzoo.bench.speed.in_fresh_process`)."""
    model, x, labels = setup(name, experts, tasks, batch)
    values = losses(model, x, labels)  # no warm-up: freed blocks it left would hide the peak
    params = model.shared_parameters()
    page = resource.getpagesize()

    def rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * page

    peak, running = [rss()], [True]
    base = peak[0]

    def sample() -> None:
        while running[0]:
            peak[0] = max(peak[0], rss())
            time.sleep(0.0002)

    thread = threading.Thread(target=sample)
    thread.start()
    if method == "vectorised":
        task_gradients(values, params)
    else:
        for t in range(len(values)):
            torch.autograd.grad(values[t], params, retain_graph=t < len(values) - 1,
                                allow_unused=True, materialize_grads=True)
    running[0] = False
    thread.join()
    return (max(peak[0], rss()) - base) / 2**20


def benchmark(out: Path = RESULTS, repeats: int = 15, command: str | None = None,
              grid: list[tuple[str, int, int, int]] | None = None) -> speed.SpeedResult:
    """Time and peak memory of both methods at every point of ``grid`` (default
    :data:`GRID`), the Jacobians checked equal; written to
    ``out/task_gradients_cpu.{md,csv}``."""
    command = command or f"mtlzoo.bench.task_gradients.benchmark(repeats={repeats})"
    rows = []
    for name, experts, tasks, batch in GRID if grid is None else grid:
        model, x, labels = setup(name, experts, tasks, batch)
        torch.testing.assert_close(vectorised(model, x, labels), looped(model, x, labels))
        seconds = speed.median_seconds(
            {m: (lambda f=f, m=model, x=x, y=labels: f(m, x, y)) for m, f in METHODS.items()},
            repeats,
        )
        memory = {m: speed.in_fresh_process(peak_growth_mb, m, name, experts, tasks, batch)
                  for m in METHODS}
        rows.append({
            "model": name, "E": experts, "T": tasks, "batch": batch,
            "shared_parameters": sum(p.numel() for p in model.shared_parameters()),
            "vectorised_ms": 1e3 * seconds["vectorised"], "loop_ms": 1e3 * seconds["loop"],
            "speedup": seconds["loop"] / seconds["vectorised"],
            "vectorised_peak_mb": memory["vectorised"], "loop_peak_mb": memory["loop"],
        })
        print(rows[-1], file=sys.stderr)
    table = pd.DataFrame(rows)
    about = (
        "128 features, expert width 64, towers (32,), binary tasks; the Jacobian of the T "
        "task losses w.r.t. the shared parameters (what MGDA, PCGrad, CAGrad, IMTL and "
        "GradNorm read). `*_ms`: median time of forward + gradients, the two methods "
        "interleaved. `*_peak_mb`: resident-set growth during the first gradient computation "
        "of a fresh process, after its forward pass. PLE: 2 levels, E experts per level."
    )
    markdown = markdown_report(
        "Per-task gradients: one vectorised backward vs T backward passes (cpu)",
        stamp(command), [about], table,
    )
    report = write_result(out / "task_gradients_cpu", table, markdown)
    return speed.SpeedResult(table, report, markdown)
