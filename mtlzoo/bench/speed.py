"""Speed of a training step, measured as ratios within one run.

Ours vs the loop version of the same model (``mtlzoo.reference.loop_version``), timed
interleaved so that drift in the machine's speed touches both alike; and the FLOP/s our step
achieves as a fraction of a large fp32 matmul timed in the same run.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Iterable

import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

import mtlzoo
from mtlzoo.errors import MtlzooError
from mtlzoo.reference import loop_version


def train_step(model: nn.Module, x: Tensor) -> None:
    """Forward, a loss touching every output, backward; gradients are then dropped.

    On a GPU the step waits for the device, so that wall time is the step's time.
    """
    out = model(x)
    loss = sum(logits.float().mean() for logits in out.logits.values()) + out.aux_loss
    loss.backward()
    for param in model.parameters():
        param.grad = None
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


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
    """Matmul FLOPs of one forward + backward, as counted by torch's FlopCounterMode."""
    with FlopCounterMode(display=False) as counter:
        train_step(model, x)
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
            {"ours": lambda m=model, x=x: train_step(m, x),
             "loop": lambda m=loop, x=x: train_step(m, x)},
            repeats=repeats,
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


def machine_stamp(device: str = "cpu") -> str:
    """Date, torch version, threads and processor (or GPU), for the head of a results file."""
    where = (
        torch.cuda.get_device_name(device) if device.startswith("cuda")
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    return (
        f"{time.strftime('%Y-%m-%d %H:%M %Z')} | torch {torch.__version__} | {where} | "
        f"Python {platform.python_version()}"
    )


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
    seconds = median_seconds({"ours": lambda: train_step(model, x),
                              "loop": lambda: train_step(loop, x)}, repeats=repeats)
    line = (f"Speed: an 8-task MMoE with 64 experts, forward+backward at batch {batch_size}: "
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


def markdown_table(table: pd.DataFrame, digits: int = 2) -> str:
    """A GitHub-flavoured Markdown table (pandas' own needs the optional tabulate); NaN
    shows as an empty cell."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return "" if value != value else f"{value:.{digits}f}"
        return str(value)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |",
             "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(False)]
    return "\n".join(lines)
