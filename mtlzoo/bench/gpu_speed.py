"""MMoE and PLE train steps on a CUDA GPU: fp32, bf16, compiled bf16 and the loop version.

For MMoE and PLE at E in {8, 64, 256} experts and batch B in {1024, 16384} (d = 512 input
features, expert width 256, T = 8 binary tasks, towers (64,); PLE has 2 levels and E per
level, split by ``speed.ple_split``: n_t = E // 2T experts per task, the rest shared), each
configuration's train step (forward, the tasks' BCE losses, backward, Adam, fused where
torch has it) is timed as

* ``fp32``: eager, float32 (TF32 as torch's default leaves it: off for matmuls);
* ``bf16``: eager under ``torch.autocast(dtype=torch.bfloat16)``;
* ``compiled``: the model ``torch.compile``-d (inductor, default mode), under the same
  autocast; its compile time is reported apart (``compile_s``), and compiles stop once
  ``compile_budget_s`` is spent (later rows say so);
* ``loop``: ``mtlzoo.reference.loop_version`` of the model (one ``nn.Linear`` per expert,
  gate and tower), fp32, eager;

each the median of ``repeats`` steps after ``warmup``, timed with CUDA events, with its peak
memory (``torch.cuda.max_memory_allocated``, reset before each variant). The FLOPs of one
forward+backward come from ``torch.utils.flop_counter.FlopCounterMode``; a variant's TFLOP/s
is set against a bf16 ``matmul_size``-cubed matmul timed in the same run (before and after,
the mean). A variant that runs out of memory or fails leaves its cells empty and says why in
the row's ``note``; the run goes on.

Only :func:`main` insists on CUDA (exit status 2 without it). Everything else takes a
``device``, so that the tests run the same code path on the CPU with a tiny configuration.

:func:`paper_table` is the on-paper counterpart, run on a CPU: each configuration's FLOPs
and bytes per kernel traced on fake tensors, the arithmetic intensities, and the roofline
fraction of an H100's and an H200's bf16 peak (``docs/kernels.md``, the GPU section).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

import mtlzoo
from mtlzoo.bench.report import RESULTS, markdown_report, script_command, stamp, write_result
from mtlzoo.bench.speed import SpeedResult, ple_split
from mtlzoo.reference import loop_version

MODELS = ("mmoe", "ple")
EXPERTS = (8, 64, 256)
BATCHES = (1024, 16384)
VARIANTS = ("fp32", "bf16", "compiled", "loop")
MISSING_CUDA_EXIT = 2


@dataclass(frozen=True)
class Config:
    """One grid point: the model, its experts (per level, for PLE), the batch, the sizes."""

    model: str
    experts: int
    batch_size: int
    in_features: int = 512
    width: int = 256
    tasks: int = 8
    tower: int = 64
    levels: int = 2

    def split(self) -> tuple[int, int]:
        """PLE's (shared, per task) experts per level; MMoE's (experts, 0)."""
        if self.model == "mmoe":
            return self.experts, 0
        return ple_split(self.experts, self.tasks)

    def build(self) -> nn.Module:
        """The model (seeded: the same weights every time; the global random state is left
        as it was)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return self._build()

    def _build(self) -> nn.Module:
        tasks = [mtlzoo.Task(f"task{t}") for t in range(self.tasks)]
        common = {"in_features": self.in_features, "tasks": tasks,
                  "expert_dims": (self.width,), "tower_dims": (self.tower,)}
        if self.model == "mmoe":
            return mtlzoo.create_model("mmoe", num_experts=self.experts, **common)
        if self.model == "ple":
            shared, own = self.split()
            return mtlzoo.create_model("ple", num_task_experts=own, num_shared_experts=shared,
                                       num_levels=self.levels, **common)
        raise ValueError(f"gpu_speed times mmoe and ple, not {self.model!r}")


def grid(models: Iterable[str] = MODELS, experts: Iterable[int] = EXPERTS,
         batches: Iterable[int] = BATCHES, **sizes: int) -> list[Config]:
    """Every (model, E, B), model-major then E then B: the table's order."""
    return [Config(model, e, b, **sizes) for model in models for e in experts for b in batches]


def run_order(configs: Sequence[Config]) -> list[Config]:
    """The order the benchmark runs ``configs`` in: the largest batch first, then the most
    experts, the models alternating; so that when the compile budget runs out, the
    compiled steps left out are those of the smallest batches and fewest experts, and
    both models keep theirs."""
    return sorted(configs, key=lambda c: (-c.batch_size, -c.experts, c.model))


def cuda_missing(device: str = "cuda") -> str | None:
    """Why this process cannot run the GPU benchmark on ``device``, in one line; None when
    it can."""
    if not device.startswith("cuda"):
        return f"gpu_speed needs a CUDA device, got --device {device!r}"
    if not torch.cuda.is_available():
        return (f"gpu_speed needs a CUDA GPU: torch.cuda.is_available() is False (torch "
                f"{torch.__version__}, built for CUDA {torch.version.cuda})")
    return None


# --- the step and its measurement -----------------------------------------------------------

def _labels(model: nn.Module, batch_size: int, device: str) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {task.name: torch.randint(0, 2, (batch_size, 1), generator=generator)
            .float().to(device) for task in model.tasks}


def _inputs(config: Config, device: str) -> Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(config.batch_size, config.in_features, generator=generator).to(device)


def _loss(out: object, labels: dict[str, Tensor]) -> Tensor:
    loss = sum(nn.functional.binary_cross_entropy_with_logits(logits.float(), labels[name])
               for name, logits in out.logits.items())
    return loss + out.aux_loss


def adam(model: nn.Module, device: str) -> torch.optim.Optimizer:
    """Adam, fused where torch has it for this device, else foreach, else the loop."""
    params = list(model.parameters())
    for options in ({"fused": True}, {"foreach": True}, {}):
        try:
            return torch.optim.Adam(params, lr=1e-4, **options)
        except (RuntimeError, ValueError):  # this device or dtype has no fused kernel
            continue
    raise AssertionError("unreachable: plain Adam always builds")


def make_step(model: nn.Module, x: Tensor, labels: dict[str, Tensor], bf16: bool,
              forward: Callable[[Tensor], object] | None = None) -> Callable[[], None]:
    """A train step: forward (under bf16 autocast when ``bf16``), the BCE losses summed,
    backward, Adam's step, gradients set to None. ``forward`` (default: the model) is what
    runs the model, e.g. its compiled version."""
    forward = model if forward is None else forward
    optimizer = adam(model, x.device.type)
    device_type = x.device.type

    def step() -> None:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            out = forward(x)
        _loss(out, labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def step_flops(model: nn.Module, x: Tensor, labels: dict[str, Tensor]) -> int:
    """FLOPs of one forward+backward (FlopCounterMode: matmuls and convolutions)."""
    with FlopCounterMode(display=False) as counter:
        _loss(model(x), labels).backward()
    for param in model.parameters():
        param.grad = None
    return counter.get_total_flops()


def median_step_seconds(step: Callable[[], None], device: str, repeats: int,
                        warmup: int) -> float:
    """Median seconds of ``step`` after ``warmup`` calls: CUDA events around each step on a
    GPU (the step's kernels, waited for), ``perf_counter`` on the CPU."""
    for _ in range(warmup):
        step()
    times = []
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize(device)
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            begin = time.perf_counter()
            step()
            times.append(time.perf_counter() - begin)
    return statistics.median(times)


def matmul_flops_per_second(size: int, device: str, repeats: int = 10,
                            dtype: torch.dtype = torch.bfloat16) -> float:
    """FLOP/s of a ``size``-cubed matmul in ``dtype`` on ``device``, now."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    seconds = median_step_seconds(lambda: a @ b, device, repeats, warmup=3)
    return 2 * size**3 / seconds


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20
    return float("nan")  # the CPU has no allocator peak to read


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def time_config(config: Config, device: str, repeats: int = 20, warmup: int = 3,
                variants: Sequence[str] = VARIANTS,
                compile_allowed: Callable[[], bool] = lambda: True) -> dict:
    """One row: every variant's median step ms, peak MiB, the FLOPs of a forward+backward,
    compile seconds, and a ``note`` for what did not run and why."""
    model = config.build().to(device)
    x, labels = _inputs(config, device), _labels(model, config.batch_size, device)
    row: dict = {"model": config.model, "E": config.experts, "B": config.batch_size,
                 "parameters": sum(p.numel() for p in model.parameters())}
    notes = []
    try:
        row["gflop_per_step"] = step_flops(model, x, labels) / 1e9
    except Exception as error:  # a row says what failed, the run goes on
        notes.append(f"flops: {_why(error)}")
        row["gflop_per_step"] = float("nan")
    for variant in variants:
        row[f"{variant}_ms"] = row[f"{variant}_peak_mib"] = float("nan")
        if variant == "compiled" and not compile_allowed():
            notes.append("compiled: skipped, compile budget spent")
            continue
        _reset_peak(device)
        try:
            copy_ = loop_version(model) if variant == "loop" else copy.deepcopy(model)
            forward = None
            if variant == "compiled":
                torch._dynamo.reset()
                forward = torch.compile(copy_)
            step = make_step(copy_, x, labels, bf16=variant in ("bf16", "compiled"),
                             forward=forward)
            if variant == "compiled":
                begin = time.perf_counter()
                step()  # compiles
                if device.startswith("cuda"):
                    torch.cuda.synchronize(device)
                first = time.perf_counter() - begin
            seconds = median_step_seconds(step, device, repeats, warmup)
            row[f"{variant}_ms"] = 1e3 * seconds
            row[f"{variant}_peak_mib"] = _peak_mib(device)
            if variant == "compiled":
                row["compile_s"] = first - seconds
        except Exception as error:  # OOM, a compile failure: noted, go on
            notes.append(f"{variant}: {_why(error)}")
        finally:
            copy_ = step = forward = None
            if variant == "compiled":
                torch._dynamo.reset()
    row["note"] = "; ".join(notes)
    return row


def _why(error: BaseException) -> str:
    if _is_oom(error):
        return "out of memory"
    return f"{type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"


# --- the table ------------------------------------------------------------------------------

def build_table(rows: list[dict], matmul_flops: float) -> pd.DataFrame:
    """The rows as a table with, per variant, TFLOP/s and its fraction of the matmul's
    FLOP/s, and the loop's time over fp32's (``loop_over_fp32``); a variant not timed has
    empty cells."""
    table = pd.DataFrame(rows)
    table["matmul_tflops"] = matmul_flops / 1e12
    for column in ("parameters", "gflop_per_step", "compile_s"):
        if column not in table:
            table[column] = float("nan")
    for variant in VARIANTS:
        for column in (f"{variant}_ms", f"{variant}_peak_mib"):
            if column not in table:
                table[column] = float("nan")
        tflops = table.gflop_per_step / table[f"{variant}_ms"]  # GFLOP / ms = TFLOP/s
        table[f"{variant}_tflops"] = tflops
        table[f"{variant}_fraction"] = tflops * 1e12 / matmul_flops
    table["loop_over_fp32"] = table["loop_ms"] / table["fp32_ms"]
    table["note"] = table.note.fillna("") if "note" in table else ""
    return table


TIME_COLUMNS = ["model", "E", "B", "gflop_per_step", "fp32_ms", "bf16_ms", "compiled_ms",
                "loop_ms", "loop_over_fp32", "compile_s", "note"]
RATE_COLUMNS = ["model", "E", "B", "fp32_tflops", "bf16_tflops", "compiled_tflops",
                "fp32_fraction", "bf16_fraction", "compiled_fraction", "fp32_peak_mib",
                "bf16_peak_mib", "compiled_peak_mib", "loop_peak_mib"]


def benchmark(out: Path = RESULTS, device: str = "cuda", configs: Sequence[Config] | None = None,
              repeats: int = 20, warmup: int = 3, matmul_size: int = 8192,
              variants: Sequence[str] = VARIANTS, compile_budget_s: float = 150.0,
              budget_s: float = 270.0, command: str | None = None,
              stem: str = "gpu_speed") -> SpeedResult:
    """Time every configuration on ``device`` (in :func:`run_order`; the table in the
    order given); write ``out/<stem>.{md,csv}`` (the folder made first, so that a bad
    ``out`` fails before the timing). Compiles stop once ``compile_budget_s`` of compile
    time is spent; configurations not started within ``budget_s`` are left out, each
    with a row saying so."""
    out.mkdir(parents=True, exist_ok=True)
    configs = grid() if configs is None else list(configs)
    command = command or f"mtlzoo.bench.gpu_speed.benchmark(device={device!r})"
    started = time.perf_counter()
    compile_spent = [0.0]
    before = matmul_flops_per_second(matmul_size, device)
    rows = {}
    for i, config in enumerate(run_order(configs)):
        if time.perf_counter() - started > budget_s:
            rows[config] = {"model": config.model, "E": config.experts, "B": config.batch_size,
                            "note": f"skipped: the run's {budget_s:.0f} s budget spent"}
            continue
        row = time_config(config, device, repeats, warmup, variants,
                          compile_allowed=lambda: compile_spent[0] < compile_budget_s)
        compile_spent[0] += row.get("compile_s", 0.0)
        rows[config] = row
        print(f"[{i + 1}/{len(configs)}, {time.perf_counter() - started:.0f} s] "
              f"{config.model} E={config.experts} B={config.batch_size}: "
              + ", ".join(f"{v} {row[f'{v}_ms']:.2f} ms" for v in variants)
              + (f" ({row['note']})" if row["note"] else ""), file=sys.stderr)
    matmul = (before + matmul_flops_per_second(matmul_size, device)) / 2
    table = build_table([rows[config] for config in configs], matmul)
    first = configs[0] if configs else Config("mmoe", 0, 0)
    about = (
        f"{first.in_features} input features, expert width {first.width}, T = {first.tasks} "
        f"binary tasks, towers ({first.tower},); PLE has {first.levels} levels and E experts "
        "per level (E // 2T per task, the rest shared). A step: forward, the tasks' BCE "
        "losses, backward, Adam (fused where torch has it), the median of "
        f"{repeats} steps after {warmup}, timed with CUDA events. `fp32`: eager float32 "
        "(TF32 off, torch's default); `bf16`: eager under bf16 autocast; `compiled`: "
        "`torch.compile` (inductor) under bf16 autocast, its compile time `compile_s` apart; "
        "`loop`: the loop version (`mtlzoo.reference.loop_version`), eager fp32. "
        f"`*_fraction`: the step's TFLOP/s (FlopCounterMode FLOPs of one forward+backward "
        f"over its time) over a bf16 {matmul_size}^3 matmul's "
        f"({matmul / 1e12:.0f} TFLOP/s, same run). Peak memory: "
        "`torch.cuda.max_memory_allocated`, reset before each variant. Total run "
        f"{time.perf_counter() - started:.0f} s."
    )
    markdown = markdown_report(
        f"MMoE and PLE train step on the GPU ({device})", stamp(command, device), [about],
        table[TIME_COLUMNS],
        after=["", "Rates and peak memory:", "", _table_text(table[RATE_COLUMNS])],
    )
    report = write_result(out / stem, table, markdown)
    return SpeedResult(table, report, markdown)


def _table_text(table: pd.DataFrame) -> str:
    from mtlzoo.bench.report import markdown_table

    return markdown_table(table)


def main(argv: list[str] | None = None) -> int:
    """The ``benchmarks/gpu_speed.py`` command line; exit status 2 without CUDA."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--matmul-size", type=int, default=8192)
    parser.add_argument("--compile-budget-s", type=float, default=150.0,
                        help="compiles stop once this much compile time is spent")
    parser.add_argument("--budget-s", type=float, default=270.0,
                        help="configurations not started by then are left out (noted)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--experts", default=",".join(map(str, EXPERTS)))
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="where results go (default ./results)")
    args = parser.parse_args(argv)
    missing = cuda_missing(args.device)
    if missing:
        print(missing, file=sys.stderr)
        return MISSING_CUDA_EXIT
    configs = grid(args.models.split(","), [int(e) for e in args.experts.split(",")],
                   [int(b) for b in args.batches.split(",")])
    result = benchmark(args.out, args.device, configs, args.repeats, args.warmup,
                       args.matmul_size, compile_budget_s=args.compile_budget_s,
                       budget_s=args.budget_s, command=script_command(argv))
    print(result.markdown)
    return 0


# --- on paper: FLOP and byte counts, the roofline of a step (docs/kernels.md) ---------------

# published peaks: dense bf16 Tensor Core FLOP/s and HBM bytes/s (NVIDIA's datasheets)
GPUS = {"H100": (989e12, 3.35e12), "H200": (989e12, 4.8e12)}
# per parameter and step, beside the traced bf16 forward+backward: autocast's fp32 -> bf16
# weight cast (4 + 2), the bf16 -> fp32 gradient cast (2 + 4) and fused Adam reading the
# parameter, gradient and both moments (16) and writing the parameter and moments (12)
ADAM_AND_CAST_BYTES = 40
_METADATA = {"dim", "size", "stride", "sym_size", "sym_stride", "is_contiguous", "numel",
             "sym_numel", "storage_offset", "sym_storage_offset", "device"}
_VIEWS = {"view", "_unsafe_view", "t", "transpose", "expand", "permute", "unsqueeze",
          "squeeze", "as_strided", "detach", "alias", "slice", "select", "unbind", "split",
          "split_with_sizes", "reshape", "_reshape_alias", "lift_fresh"}


def traced_ops(model: nn.Module, batch_size: int) -> list[tuple[str, int, int]]:
    """(aten op, FLOPs, bytes) of every kernel of one bf16 forward+backward of ``model``
    (built in bf16) at ``batch_size``, traced on fake tensors: shapes only, no arithmetic, so
    the largest configurations cost a second. Views are left out; bytes are every tensor
    input read once and every output written once."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten
    from torch.utils.flop_counter import flop_registry

    ops: list[tuple[str, int, int]] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            name = func.__name__.split(".")[0]
            tensors_out = [t for t in tree_flatten(out)[0] if isinstance(t, Tensor)]
            if name in _METADATA or name in _VIEWS or not tensors_out:
                return out
            tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)]
            nbytes = sum(t.numel() * t.element_size() for t in tensors + tensors_out)
            count = flop_registry.get(func._overloadpacket)
            flops = count(*args, **kwargs, out_val=out) if count else 0
            ops.append((name, int(flops), int(nbytes)))
            return out

    with FakeTensorMode(allow_non_fake_inputs=True):
        x = torch.randn(batch_size, model.in_features, dtype=torch.bfloat16)
        labels = {task.name: torch.zeros(batch_size, 1) for task in model.tasks}
        with Record():
            _loss(model(x), labels).backward()
    for param in model.parameters():
        param.grad = None
    return ops


def paper_counts(config: Config) -> dict:
    """The on-paper figures of one configuration: FLOPs of a forward+backward, arithmetic
    intensities (FLOP/byte) of the largest matmul, of all matmuls and of the whole step
    (with :data:`ADAM_AND_CAST_BYTES` per parameter), the kernels of ours and of the loop
    version, and for each of :data:`GPUS` the roofline time of the step (each kernel at
    max(FLOPs / peak, bytes / bandwidth), summed) and the fraction of the bf16 peak it
    reaches, whole and counting the matmuls alone."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = config.build()
    finally:
        torch.set_default_dtype(default)
    ops = traced_ops(model, config.batch_size)
    loop_kernels = len(traced_ops(loop_version(model), config.batch_size))
    parameters = sum(p.numel() for p in model.parameters())
    matmuls = [op for op in ops if op[1]]
    flops = sum(op[1] for op in ops)
    step_bytes = sum(op[2] for op in ops) + ADAM_AND_CAST_BYTES * parameters
    largest = max(matmuls, key=lambda op: op[1])
    row = {"model": config.model, "E": config.experts, "B": config.batch_size,
           "parameters": parameters, "gflop": flops / 1e9,
           "largest_mm_intensity": largest[1] / largest[2],
           "mm_intensity": flops / sum(op[2] for op in matmuls),
           "step_intensity": flops / step_bytes,
           "kernels": len(ops), "loop_kernels": loop_kernels}
    for gpu, (peak, bandwidth) in GPUS.items():
        matmul_s = sum(max(f / peak, b / bandwidth) for _, f, b in matmuls)
        step_s = (sum(max(f / peak, b / bandwidth) for _, f, b in ops)
                  + ADAM_AND_CAST_BYTES * parameters / bandwidth)
        row[f"{gpu}_step_ms"] = 1e3 * step_s
        row[f"{gpu}_fraction"] = flops / peak / step_s
        row[f"{gpu}_mm_fraction"] = flops / peak / matmul_s
    return row


def paper_table(configs: Sequence[Config] | None = None) -> pd.DataFrame:
    """:func:`paper_counts` of every configuration (default: the script's grid), the
    figures of docs/kernels.md's GPU section."""
    return pd.DataFrame([paper_counts(c) for c in (grid() if configs is None else configs)])
