"""Speed of a training step, measured as ratios within one run.

Ours vs the loop version of the same model (``mtlzoo.reference.loop_version``), timed
interleaved so that drift in the machine's speed touches both alike; and the FLOP/s our step
achieves as a fraction of a large fp32 matmul timed in the same run.

The primitives (:class:`TrainStep`, :func:`median_seconds`, :func:`step_flops`,
:func:`compare_with_loop`), the grids of models (:func:`every_model_grid`,
:func:`expert_grid`), and the two benchmarks built on them: :func:`every_model` (``mtlzoo
bench speed``: every architecture in one process) and :func:`expert_grid_in_processes`
(``benchmarks/speed.py``: MMoE and PLE, the median over fresh processes, the CPU targets
checked). :func:`headline` is the demo's line.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

import mtlzoo
from mtlzoo.bench.report import RESULTS, markdown_report, stamp, write_result
from mtlzoo.errors import MtlzooError
from mtlzoo.reference import loop_version


class TrainStep:
    """One train step of ``model`` on ``x``: forward, a loss touching every output, backward,
    and Adam's step (lr 1e-3, ``fused=True``, as ``mtlzoo.Trainer`` builds it), the
    gradients then set to None. The optimizer is part of every speed figure; ours and the
    loop version step through their parameters with the same fused kernel.

    On a GPU the step waits for the device, so that wall time is the step's time.
    """

    def __init__(self, model: nn.Module, x: Tensor) -> None:
        self.model, self.x = model, x
        self.optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)

    def loss(self) -> Tensor:
        out = self.model(self.x)
        return sum(logits.float().mean() for logits in out.logits.values()) + out.aux_loss

    def __call__(self) -> None:
        self.loss().backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.x.is_cuda:
            torch.cuda.synchronize(self.x.device)


def median_seconds(
    steps: dict[str, Callable[[], None]], repeats: int = 20, warmup: int = 3,
    rotate: bool = False,
) -> dict[str, float]:
    """Median wall time of each step, the steps called in turn within every round (with
    ``rotate``, round r starts with step r mod n, so that no step always follows the same
    one)."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(repeats):
        shift = round_ % len(names) if rotate and names else 0
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def step_flops(model: nn.Module, x: Tensor) -> int:
    """Matmul FLOPs of one forward + backward, as counted by torch's FlopCounterMode (the
    optimizer's elementwise step has no FLOPs there); the gradients are then dropped."""
    with FlopCounterMode(display=False) as counter:
        TrainStep(model, x).loss().backward()
    for param in model.parameters():
        param.grad = None
    return counter.get_total_flops()


def matmul_flops_per_second(size: int = 2048, repeats: int = 10, device: str = "cpu") -> float:
    """FLOP/s of a ``size x size`` fp32 matmul on this device, now."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)

    def matmul() -> None:
        a @ b
        if a.is_cuda:
            torch.cuda.synchronize(a.device)

    seconds = median_seconds({"mm": matmul}, repeats=repeats)["mm"]
    return 2 * size**3 / seconds


def compare_with_loop(
    models: Iterable[tuple[dict, nn.Module]],
    batch_size: int = 1024,
    repeats: int = 20,
    progress: Callable[[str], None] | None = None,
    device: str = "cpu",
) -> pd.DataFrame:
    """One row per (description, model): parameters, ours and loop ms, speed-up, FLOP/s.

    The matmul reference is timed once before and once after; its mean is the yardstick.
    """
    peak_before = matmul_flops_per_second(device=device)
    rows = []
    for description, model in models:
        model = model.to(device)
        x = torch.randn(batch_size, model.in_features, device=device)
        loop = loop_version(model)
        seconds = median_seconds(
            {"ours": TrainStep(model, x), "loop": TrainStep(loop, x)}, repeats=repeats,
        )
        flops = step_flops(model, x)
        rows.append({
            **description,
            "parameters": sum(p.numel() for p in model.parameters()),
            "ours_ms": 1e3 * seconds["ours"],
            "loop_ms": 1e3 * seconds["loop"],
            "speedup": seconds["loop"] / seconds["ours"],
            "gflop_per_step": flops / 1e9,
            "ours_gflops": flops / seconds["ours"] / 1e9,
        })
        if progress:
            progress(f"{description}: {rows[-1]['speedup']:.2f}x")
    peak = (peak_before + matmul_flops_per_second(device=device)) / 2
    table = pd.DataFrame(rows)
    table["matmul_gflops"] = peak / 1e9
    table["fraction_of_matmul"] = table["ours_gflops"] * 1e9 / peak
    return table


def ple_split(num_experts: int, num_tasks: int) -> tuple[int, int]:
    """(shared, per task) experts of a CGC/PLE level holding about ``num_experts``:
    n_t = max(1, E // 2T) per task and n_s = max(1, E - T n_t) shared, so about half are
    shared (a level holds T n_t + n_s, which is E when T n_t < E)."""
    own = max(1, num_experts // (2 * num_tasks))
    return max(1, num_experts - num_tasks * own), own


def every_model_grid(
    settings: Iterable[tuple[int, int]] = ((8, 2), (64, 8)),
    in_features: int = 128,
    width: int = 64,
) -> list[tuple[dict, nn.Module]]:
    """Every registered architecture at each (E, T): E experts per level for the gated
    families (CGC/PLE: half shared, the rest split over the tasks), width-64 layers and
    binary tasks for all."""
    models = []
    torch.manual_seed(0)
    for num_experts, num_tasks in settings:
        tasks = [mtlzoo.Task(f"task{t}") for t in range(num_tasks)]
        shared, own = ple_split(num_experts, num_tasks)
        per_family = {
            "mmoe": {"num_experts": num_experts, "expert_dims": (width,)},
            "omoe": {"num_experts": num_experts, "expert_dims": (width,)},
            "cgc": {"num_task_experts": own, "num_shared_experts": shared,
                    "expert_dims": (width,)},
            "shared_bottom": {"bottom_dims": (width,)},
            "single_task": {"hidden_dims": (width,)},
            "cross_stitch": {"column_dims": (width,)},
            "l2_constrained": {"column_dims": (width,)},
            "sluice": {"column_dims": (width,)},
            "mtan": {"shared_dims": (width,)},
            "dselect_k": {"num_experts": num_experts, "expert_dims": (width,)},
            "esmm": {"bottom_dims": (width,)},
            "aitm": {"task_tower_dims": (width,)},
        }
        per_family["ple"] = per_family["cgc"]
        for name in mtlzoo.list_models():
            options = per_family.get(name, {})
            model = mtlzoo.create_model(name, in_features=in_features, tasks=tasks,
                                        tower_dims=(32,), **options)
            models.append(({"model": name, "E": num_experts, "T": num_tasks}, model))
    return models


def expert_grid(
    experts: Iterable[int] = (8, 64),
    tasks: Iterable[int] = (2, 8),
    in_features: int = 128,
    expert_width: int = 64,
) -> list[tuple[dict, nn.Module]]:
    """MMoE and PLE at each (E, T). PLE splits E per level with :func:`ple_split`: n_t =
    max(1, E // 2T) experts per task and n_s = E - T * n_t shared (at least 1), so a level
    holds about E experts."""
    models = []
    torch.manual_seed(0)
    for num_experts in experts:
        for num_tasks in tasks:
            task_list = [mtlzoo.Task(f"task{t}") for t in range(num_tasks)]
            shared, own = ple_split(num_experts, num_tasks)
            options = {
                "mmoe": {"num_experts": num_experts},
                "ple": {"num_task_experts": own, "num_shared_experts": shared},
            }
            for name, extra in options.items():
                model = mtlzoo.create_model(
                    name, in_features=in_features, tasks=task_list,
                    expert_dims=(expert_width,), tower_dims=(32,), **extra,
                )
                total = num_experts if name == "mmoe" else num_tasks * own + shared
                models.append(({"model": name, "E": total, "T": num_tasks}, model))
    return models


def headline(batch_size: int = 64, repeats: int = 15) -> str:
    """One line for the demo: an 8-task MMoE with 64 experts, its train step against the
    same model written as a loop over ``nn.ModuleList`` and, when the peers are installed,
    against theirs; timed interleaved in this process, the median of ``repeats``."""
    [(_, model)] = [(d, m) for d, m in expert_grid(experts=(64,), tasks=(8,))
                    if d["model"] == "mmoe"]
    x = torch.randn(batch_size, model.in_features)
    loop = loop_version(model)
    seconds = median_seconds({"ours": TrainStep(model, x), "loop": TrainStep(loop, x)},
                             repeats=repeats)
    line = (f"Speed: an 8-task MMoE with 64 experts, train step (with Adam) at batch "
            f"{batch_size}: "
            f"{1e3 * seconds['ours']:.1f} ms, {seconds['loop'] / seconds['ours']:.1f}x faster "
            "than the same model as a loop over nn.ModuleList")
    from mtlzoo.bench import peers

    try:
        peers.require_peers()
    except MtlzooError:
        return line + f"; beside torch-rechub and DeepCTR-Torch: {peers.INSTALL}."
    # the peers' steps are slow at this size: few rounds keep the demo's line to seconds
    table = peers.compare([peers.Config.grid_point("mmoe", 64, 8)], batch_sizes=(batch_size,),
                          repeats=5, warmup=1)
    ratios = [f"{ratio:.1f}x faster than {name}'s"
              for name, ratio in (("torch-rechub", table.rechub_over_ours.iloc[0]),
                                  ("DeepCTR-Torch", table.deepctr_over_ours.iloc[0]))
              if ratio == ratio]  # NaN where a peer cannot build it
    return line + (f"; with Adam, {' and '.join(ratios)} train step." if ratios else ".")


@dataclass(frozen=True)
class SpeedResult:
    """What a speed benchmark wrote: its table, the report's path and text, and the
    targets it checked (each line says ``met`` or ``MISSED``)."""

    table: pd.DataFrame
    report: Path
    markdown: str
    checks: list[str] = field(default_factory=list)

    @property
    def met(self) -> bool:
        return all("MISSED" not in check for check in self.checks)


def progress_bar(total: int, description: str, show: bool = True) -> Callable[[str], None]:
    """A progress callback: each call shows its line and advances a tqdm bar of ``total``
    steps, closed at the last one."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=description, disable=None if show else True)

    def advance(line: str) -> None:
        bar.set_postfix_str(line)
        bar.update()
        if bar.n >= total:
            bar.close()

    return advance


# --- mtlzoo bench speed: every architecture in one process ---------------------------------

EVERY_MODEL_COLUMNS = ["model", "E", "T", "parameters", "ours_ms", "loop_ms", "speedup",
                       "fraction_of_matmul"]


def every_model(out: Path = RESULTS, batch_size: int = 1024, repeats: int = 20,
                command: str | None = None, progress: bool = True) -> SpeedResult:
    """Every registered architecture's train step against its loop version at (E, T) =
    (8, 2) and (64, 8), in this process; written to ``out/bench_speed_cpu.*`` (the folder
    made first, so that a bad ``out`` fails before the timing)."""
    out.mkdir(parents=True, exist_ok=True)
    command = command or f"mtlzoo.bench.speed.every_model(batch_size={batch_size})"
    models = every_model_grid()
    table = compare_with_loop(models, batch_size, repeats,
                              progress=progress_bar(len(models), "speed", progress))
    about = (
        f"Batch {batch_size}, 128 features, width-64 layers, towers (32,), binary tasks; "
        "E experts per level for the gated families. A step: forward, backward, fused Adam "
        "(the same for ours and the loop version). `fraction_of_matmul`: our FLOP/s over a "
        f"2048x2048 fp32 matmul's ({table.matmul_gflops.iloc[0]:.0f} GFLOP/s, same run)."
    )
    markdown = markdown_report("Every architecture: train step vs its loop version (cpu)",
                               stamp(command), [about], table[EVERY_MODEL_COLUMNS])
    return SpeedResult(table, write_result(out / "bench_speed_cpu", table, markdown), markdown)


# --- benchmarks/speed.py: MMoE and PLE, the median over fresh processes ---------------------

TARGETS = {(64, 8): 3.0, (8, 2): 1.3}  # MMoE (E, T) -> speed-up over the loop, on CPU
KEYS = ["model", "E", "T"]


def time_expert_grid(device: str = "cpu", repeats: int = 30,
                     batch_size: int = 1024) -> pd.DataFrame:
    """One process's timing of :func:`expert_grid` (progress lines on stderr)."""
    torch.manual_seed(0)
    return compare_with_loop(
        expert_grid(), batch_size=batch_size, repeats=repeats, device=device,
        progress=lambda line: print(line, file=sys.stderr),
    )


def _time_expert_grid_records(device: str, repeats: int, batch_size: int) -> list[dict]:
    return json.loads(time_expert_grid(device, repeats, batch_size).to_json(orient="records"))


def in_fresh_process(function: Callable, *args: object) -> object:
    """``function(*args)`` called in a fresh Python process (its arguments and its result
    through JSON; its stderr shown here)."""
    code = (f"import json, sys; from {function.__module__} import {function.__name__} as f; "
            "print(json.dumps(f(*json.loads(sys.argv[1]))))")
    result = subprocess.run([sys.executable, "-c", code, json.dumps(args)], check=True,
                            stdout=subprocess.PIPE, text=True)
    return json.loads(result.stdout.splitlines()[-1])


def median_over_processes(runs: pd.DataFrame) -> pd.DataFrame:
    """Median over processes per grid point, with the speed-up's range."""
    grouped = runs.groupby(KEYS, sort=False)
    table = grouped[["parameters", "ours_ms", "loop_ms", "speedup", "gflop_per_step",
                     "ours_gflops", "fraction_of_matmul", "matmul_gflops"]].median()
    table["speedup_min"] = grouped.speedup.min()
    table["speedup_max"] = grouped.speedup.max()
    table["parameters"] = table.parameters.astype(int)
    return table.reset_index()


def check_targets(table: pd.DataFrame, processes: int) -> list[str]:
    """MMoE's speed-up at each (E, T) of :data:`TARGETS` against its target (CPU, batch
    1024), one line each, ``met`` or ``MISSED``."""
    checks = []
    for (experts, tasks), target in TARGETS.items():
        row = table[(table.model == "mmoe") & (experts == table.E) & (table["T"] == tasks)]
        got, low, high = row.speedup.iloc[0], row.speedup_min.iloc[0], row.speedup_max.iloc[0]
        verdict = "met" if got >= target else "MISSED"
        checks.append(
            f"MMoE E={experts}, T={tasks}: {got:.2f}x median over {processes} processes "
            f"(range {low:.2f}-{high:.2f}x; target {target}x): {verdict}"
        )
    return checks


def expert_grid_in_processes(out: Path = RESULTS, device: str = "cpu", repeats: int = 30,
                             processes: int = 3, batch_size: int = 1024,
                             command: str | None = None) -> SpeedResult:
    """MMoE and PLE (:func:`expert_grid`) against their loop versions, each of
    ``processes`` fresh processes timing the whole grid; the median over processes and the
    speed-up's range, the CPU targets checked at batch 1024; written to
    ``out/speed_<device>[_batch<B>]{.md,.csv,_runs.csv}``.

    Separate processes matter on CPU: whether the allocator hands a process recycled or
    freshly zeroed pages for large tensors is settled per process and moves a step's time by
    up to a third."""
    command = command or (f"mtlzoo.bench.speed.expert_grid_in_processes(device={device!r}, "
                          f"batch_size={batch_size})")
    runs = []
    for i in range(processes):
        print(f"process {i + 1}/{processes}", file=sys.stderr)
        runs += in_fresh_process(_time_expert_grid_records, device, repeats, batch_size)
    runs = pd.DataFrame(runs)
    table = median_over_processes(runs)
    checks = (check_targets(table, processes)
              if device == "cpu" and batch_size == 1024 else [])
    stem = out / f"speed_{device.split(':')[0]}"
    if batch_size != 1024:
        stem = stem.with_name(f"{stem.name}_batch{batch_size}")
    columns = [*KEYS, "parameters", "ours_ms", "loop_ms", "speedup", "speedup_min",
               "speedup_max", "gflop_per_step", "ours_gflops", "fraction_of_matmul"]
    about = (
        f"Batch {batch_size}, 128 features, expert width 64, towers (32,), binary tasks. "
        "`ours_ms` and `loop_ms` are medians of interleaved train steps (forward, backward, "
        "fused Adam); the loop "
        "version is the same model with every batched kernel replaced by a Python loop over "
        f"nn.ModuleList. Each figure is the median over {processes} fresh processes; "
        "`speedup_min`/`max` give its range. `fraction_of_matmul` is our FLOP/s over a "
        f"2048x2048 fp32 matmul's ({table.matmul_gflops.iloc[0]:.0f} GFLOP/s, timed in the "
        "same runs). PLE has 2 levels; E is its experts per level (n_t = max(1, E // 2T) per "
        "task, the rest shared)."
    )
    markdown = markdown_report(
        f"Train-step speed: batched kernels vs loop versions ({device})",
        stamp(command, device), [about], table[columns],
        after=[f"* {line}" for line in checks],
    )
    return SpeedResult(table, write_result(stem, table, markdown, runs), markdown, checks)
