"""Our MMoE, PLE and shared-bottom beside torch-rechub's and DeepCTR-Torch's.

The peers come with the optional extra (``pip install 'mtlzoo[peers]'``, or ``make
bench-peers`` in a checkout) and are imported inside the functions below only, so that
``import mtlzoo`` stays light and works without them.

Each side is built for the same :class:`Config`: the same dense input of width d (one
feature of width d in the peer's own feature classes), experts of one layer of width h with
ReLU, softmax gates over the experts read straight from the level's input, towers of one
ReLU layer of width k and one output unit per binary task; PLE with the same levels and
the same split of experts. What a peer does differently is its own design and stays:

* torch-rechub puts a BatchNorm1d after every linear layer (experts, gates, towers) and
  gives its gates a bias; it has no option to leave them out.
* DeepCTR-Torch's PLE computes a shared gate at the last level too (its output unused),
  builds ``specific_expert_num`` shared experts per level instead of ``shared_expert_num``
  (0.3.0), and initialises its linear weights from N(0, 1e-4) by default (``init_std``).
* Both peers end in a sigmoid; their BCE reads probabilities, ours reads logits.

:class:`TrainStep` trains any of them the same way: the batch in the model's own input
format, Adam (lr 1e-3; fused for ours, as ``mtlzoo.Trainer`` builds it, torch's default for
the peers, as their trainers build it), the BCE of every task summed, averaged over the
batch, backward, the optimizer's step. :func:`compare` times the steps interleaved in one process;
:func:`benchmark` runs it over the grid and writes the results (:func:`report`).
"""

from __future__ import annotations

import math
import os
import sys
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import mtlzoo
from mtlzoo.bench import speed
from mtlzoo.bench.report import RESULTS, markdown_report, stamp, write_result
from mtlzoo.errors import MtlzooError

PEERS = ("torch-rechub", "deepctr-torch")
IMPLEMENTATIONS = ("ours", *PEERS)
FAMILIES = ("mmoe", "ple", "shared_bottom")
SHORT = {"ours": "ours", "torch-rechub": "rechub", "deepctr-torch": "deepctr"}
INSTALL = "pip install 'mtlzoo[peers]' (or make bench-peers in a checkout)"


@dataclass(frozen=True)
class Config:
    """One architecture at one size, built alike by every implementation.

    ``num_experts`` is MMoE's; PLE has ``num_shared_experts`` and ``num_task_experts`` (per
    task) at each of its ``num_levels`` levels. ``expert_width`` is also the shared
    bottom's width; ``tower_width`` the towers'. Every task is binary."""

    family: str
    in_features: int = 128
    num_tasks: int = 2
    num_experts: int = 8
    num_shared_experts: int = 4
    num_task_experts: int = 2
    num_levels: int = 2
    expert_width: int = 64
    tower_width: int = 32

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise MtlzooError(f"unknown family {self.family!r}; one of {', '.join(FAMILIES)}")

    @classmethod
    def grid_point(cls, family: str, num_experts: int, num_tasks: int, **sizes) -> Config:
        """``family`` with about ``num_experts`` experts a level, split for PLE as in
        :func:`mtlzoo.bench.speed.ple_split`."""
        shared, own = speed.ple_split(num_experts, num_tasks)
        return cls(family, num_tasks=num_tasks, num_experts=num_experts,
                   num_shared_experts=shared, num_task_experts=own, **sizes)

    @property
    def experts_per_level(self) -> int:
        if self.family == "ple":
            return self.num_shared_experts + self.num_tasks * self.num_task_experts
        return self.num_experts if self.family == "mmoe" else 0

    @property
    def task_names(self) -> list[str]:
        return [f"task{t}" for t in range(self.num_tasks)]


# --- imports of the peers ------------------------------------------------------------------

def require_peers() -> dict[str, str]:
    """The installed versions of the peers; an MtlzooError saying how to install them when
    either cannot be imported."""
    from importlib.metadata import version

    failures = []
    for load in (_import_rechub, _import_deepctr):
        try:
            load()
        except ImportError as error:
            failures.append(error)
    if failures:
        raise MtlzooError(
            f"the peers torch-rechub and deepctr-torch cannot be imported "
            f"({'; '.join(map(str, failures))}); install them with {INSTALL}"
        ) from failures[0]
    return {name: version(name) for name in PEERS}


def _import_rechub() -> types.ModuleType:
    import torch_rechub

    return torch_rechub


def _import_deepctr() -> types.ModuleType:
    """deepctr_torch, imported without its version check: its ``__init__`` starts a thread
    that asks PyPI for a newer release (and prints to stdout when it cannot), which would
    run beside the timings. A stand-in for ``deepctr_torch.utils`` (which holds only that
    check) serves the import and is removed after it."""
    if sys.modules.get("deepctr_torch") is not None:
        return sys.modules["deepctr_torch"]
    stand_in = types.ModuleType("deepctr_torch.utils")
    stand_in.check_version = lambda version: None
    sys.modules["deepctr_torch.utils"] = stand_in
    try:
        import deepctr_torch
    finally:
        if sys.modules.get("deepctr_torch.utils") is stand_in:
            del sys.modules["deepctr_torch.utils"]
    return deepctr_torch


# --- builders ------------------------------------------------------------------------------

def build(implementation: str, config: Config, seed: int = 0) -> nn.Module:
    """``implementation``'s model for ``config``, its weights drawn from ``seed``."""
    builders = {"ours": build_ours, "torch-rechub": build_rechub, "deepctr-torch": build_deepctr}
    if implementation not in builders:
        raise MtlzooError(
            f"unknown implementation {implementation!r}; one of {', '.join(builders)}"
        )
    return builders[implementation](config, seed)


def build_ours(config: Config, seed: int = 0) -> nn.Module:
    options = {
        "mmoe": {"num_experts": config.num_experts, "expert_dims": (config.expert_width,)},
        "ple": {"num_levels": config.num_levels, "num_task_experts": config.num_task_experts,
                "num_shared_experts": config.num_shared_experts,
                "expert_dims": (config.expert_width,)},
        "shared_bottom": {"bottom_dims": (config.expert_width,)},
    }[config.family]
    torch.manual_seed(seed)
    return mtlzoo.create_model(
        config.family, in_features=config.in_features,
        tasks=[mtlzoo.Task(name) for name in config.task_names],
        tower_dims=(config.tower_width,), **options,
    )


def build_rechub(config: Config, seed: int = 0) -> nn.Module:
    _import_rechub()
    from torch_rechub.basic.features import DenseFeature
    from torch_rechub.models.multi_task import MMOE, PLE, SharedBottom

    features = [DenseFeature("x", embed_dim=config.in_features)]
    task_types = ["classification"] * config.num_tasks
    layer = {"dims": [config.expert_width], "activation": "relu", "dropout": 0}
    towers = [{"dims": [config.tower_width], "activation": "relu", "dropout": 0}
              for _ in range(config.num_tasks)]
    torch.manual_seed(seed)
    if config.family == "mmoe":
        return MMOE(features, task_types, config.num_experts, layer, towers)
    if config.family == "ple":
        return PLE(features, task_types, config.num_levels, config.num_task_experts,
                   config.num_shared_experts, layer, towers)
    return SharedBottom(features, task_types, layer, towers)


def build_deepctr(config: Config, seed: int = 0) -> nn.Module:
    """DeepCTR-Torch's model; its constructor reseeds torch's global generator with ``seed``,
    which is restored afterwards. No regularisation (its l2 terms apply only in its fit)."""
    _import_deepctr()
    from deepctr_torch.inputs import DenseFeat
    from deepctr_torch.models import MMOE, PLE, SharedBottom

    common = {
        "dnn_feature_columns": [DenseFeat("x", config.in_features)],
        "tower_dnn_hidden_units": (config.tower_width,),
        "task_types": ("binary",) * config.num_tasks, "task_names": tuple(config.task_names),
        "l2_reg_linear": 0, "l2_reg_embedding": 0, "l2_reg_dnn": 0, "seed": seed,
        "device": "cpu",
    }
    with torch.random.fork_rng(devices=[]):
        if config.family == "mmoe":
            return MMOE(num_experts=config.num_experts, gate_dnn_hidden_units=(),
                        expert_dnn_hidden_units=(config.expert_width,), **common)
        if config.family == "ple":
            return PLE(shared_expert_num=config.num_shared_experts,
                       specific_expert_num=config.num_task_experts,
                       num_levels=config.num_levels, gate_dnn_hidden_units=(),
                       expert_dnn_hidden_units=(config.expert_width,), **common)
        return SharedBottom(bottom_dnn_hidden_units=(config.expert_width,), **common)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --- one train step, the same for every implementation -------------------------------------

class TrainStep:
    """One train step of ``implementation``'s ``model`` on the batch ``(x, y)``.

    ``x`` (b, d) goes in the model's own input format: ours and DeepCTR-Torch take the
    concatenated features (here the one dense feature), torch-rechub a dict of feature
    tensors. ``y`` (b, T) holds 0/1 labels. Calling the step zeroes the gradients, runs
    forward and the loss (every task's BCE summed, averaged over the batch), backward and
    Adam's step, Adam as each library's trainer builds it: ours fused (``mtlzoo.Trainer``:
    one kernel for every parameter), the peers' torch's default (their trainers'
    ``torch.optim.Adam``, on CPU a loop over the parameters). ``loss`` holds the last loss."""

    def __init__(self, implementation: str, model: nn.Module, x: Tensor, y: Tensor,
                 lr: float = 1e-3) -> None:
        if implementation not in IMPLEMENTATIONS:
            raise MtlzooError(
                f"unknown implementation {implementation!r}; one of {', '.join(IMPLEMENTATIONS)}"
            )
        self.implementation = implementation
        self.model = model.train()
        self.inputs = {"x": x} if implementation == "torch-rechub" else x
        self.targets = y.float()
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr,
                                          fused=implementation == "ours" or None)
        self.loss: Tensor | None = None

    def predict(self) -> Tensor:
        """(b, T): our logits, the peers' probabilities (they end in a sigmoid)."""
        if self.implementation == "ours":
            out = self.model(self.inputs)
            return torch.cat(list(out.logits.values()), dim=1)
        return self.model(self.inputs)

    def __call__(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        out = self.predict()
        if self.implementation == "ours":
            loss = F.binary_cross_entropy_with_logits(out, self.targets, reduction="sum")
        else:
            loss = F.binary_cross_entropy(out, self.targets, reduction="sum")
        loss = loss / len(self.targets)
        loss.backward()
        self.optimizer.step()
        self.loss = loss.detach()


def batch(config: Config, batch_size: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Standard normal features (b, d) and 0/1 labels (b, T), the same for every side."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, config.in_features, generator=generator)
    y = torch.randint(0, 2, (batch_size, config.num_tasks), generator=generator).float()
    return x, y


# --- the comparison ------------------------------------------------------------------------

def speed_grid(
    families: Sequence[str] = ("mmoe", "ple"),
    experts: Iterable[int] = (8, 64),
    tasks: Iterable[int] = (2, 8),
    **sizes,
) -> list[Config]:
    """Each family at each (E, T), the sizes of ``mtlzoo.bench.speed.expert_grid``."""
    return [Config.grid_point(family, e, t, **sizes)
            for family in families for e in experts for t in tasks]


def compare(
    configs: Iterable[Config],
    batch_sizes: Iterable[int] = (64, 1024),
    repeats: int = 20,
    warmup: int = 3,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """One row per (config, batch size): every side's parameter count and median train-step
    time (ms), each peer's time over ours, and a note naming what a peer could not build or
    run (its cells are then empty). The steps are timed interleaved in this process, each
    round starting with the next implementation in turn."""
    require_peers()
    rows = []
    for config in configs:
        for batch_size in batch_sizes:
            x, y = batch(config, batch_size, seed)
            steps: dict[str, TrainStep] = {}
            row: dict = {
                "family": config.family, "B": batch_size, "E": config.experts_per_level,
                "T": config.num_tasks, "split": _split(config),
            }
            notes = []
            for implementation in IMPLEMENTATIONS:
                short = SHORT[implementation]
                row[f"{short}_params"] = math.nan
                try:
                    model = build(implementation, config, seed)
                    row[f"{short}_params"] = parameter_count(model)
                    row[f"{short}_tensors"] = len(list(model.parameters()))
                    step = TrainStep(implementation, model, x, y)
                    step()  # a peer that builds but cannot run says so here
                except Exception as error:
                    if implementation == "ours":
                        raise
                    notes.append(f"{implementation}: {_describe(implementation, config, error)}")
                    continue
                steps[implementation] = step
            seconds = speed.median_seconds(steps, repeats=repeats, warmup=warmup, rotate=True)
            for implementation in IMPLEMENTATIONS:
                row[f"{SHORT[implementation]}_ms"] = 1e3 * seconds.get(implementation, math.nan)
            for peer in PEERS:
                row[f"{SHORT[peer]}_over_ours"] = row[f"{SHORT[peer]}_ms"] / row["ours_ms"]
            row["note"] = "; ".join(notes)
            rows.append(row)
            if progress:
                progress(f"{config.family} B={batch_size} E={row['E']} T={config.num_tasks}: "
                         f"rechub {row['rechub_over_ours']:.2f}x, "
                         f"deepctr {row['deepctr_over_ours']:.2f}x")
    columns = ["family", "B", "E", "T", "split",
               *(f"{SHORT[i]}_params" for i in IMPLEMENTATIONS),
               *(f"{SHORT[i]}_ms" for i in IMPLEMENTATIONS),
               *(f"{SHORT[p]}_over_ours" for p in PEERS), "note",
               *(f"{SHORT[i]}_tensors" for i in IMPLEMENTATIONS)]
    return pd.DataFrame(rows).reindex(columns=columns)


def _split(config: Config) -> str:
    if config.family == "ple":
        return (f"{config.num_shared_experts} shared + {config.num_tasks}x"
                f"{config.num_task_experts}, {config.num_levels} levels")
    return ""


def _describe(implementation: str, config: Config, error: Exception) -> str:
    """The error in a line, with its cause where it is known."""
    text = f"{type(error).__name__} ({' '.join(str(error).split())})"
    if (implementation == "deepctr-torch" and config.family == "ple"
            and isinstance(error, IndexError)
            and config.num_shared_experts > config.num_task_experts):
        text += (" in forward: its PLE builds specific_expert_num shared experts per level, "
                 f"not shared_expert_num, so {config.num_shared_experts} shared experts need "
                 f"more than the {config.num_task_experts} built")
    return text


def report(table: pd.DataFrame, command: str, versions: dict[str, str],
           load: tuple[str, str], repeats: int) -> str:
    """The Markdown results file: stamp, versions, set-up, the table, what a peer could not
    build or run."""
    shown = table.drop(columns=[c for c in table.columns if c.endswith("_tensors")])
    notes = sorted({note for cell in shown.note for note in cell.split("; ") if note})
    shown = shown.assign(note=[
        "; ".join(f"{note.split(':')[0]} cannot run it ({notes.index(note) + 1})"
                  for note in cell.split("; ") if note)
        for cell in shown.note
    ])
    for column in shown.columns:
        if column.endswith("_params"):
            shown[column] = [_integer(value) for value in shown[column]]
    peers = ", ".join(f"{name} {version}" for name, version in versions.items())
    about = [
        f"Peers: {peers}. Load average before and after the run: {load[0]} / {load[1]}.",
        "One train step: zero the gradients, forward, BCE of every task summed and averaged "
        "over the batch, backward, Adam's step (lr 1e-3; ours fused, as mtlzoo's Trainer "
        "builds it, the peers' torch's default, as their trainers build it), each on "
        "the batch in its own input format (a dict of feature tensors for torch-rechub). "
        f"Median of {repeats} rounds after 3 warm-up rounds, the three sides timed in turn "
        "in one process (each round starting with the next side), the same threads for all. "
        "128 dense features (one feature of width 128 for the peers), experts of one "
        "ReLU layer of width 64, gates reading the level's input, towers (32,), binary "
        "tasks; PLE has 2 levels, its E experts a level split as `split` says (as in "
        "`mtlzoo bench speed`). `*_params`: trainable parameters of each side; torch-rechub "
        "adds a BatchNorm1d after every linear layer and a bias to its gates, DeepCTR-Torch's "
        "PLE a shared gate at its last level. `rechub_over_ours`, `deepctr_over_ours`: the "
        "peer's time over ours (above 1: ours is faster).",
    ]
    after = []
    if notes:
        after = ["What a peer could not build or run (its times are empty; a parameter "
                 "count is of what it built):", ""]
        after += [f"{i}. {note}" for i, note in enumerate(notes, 1)]
    return markdown_report("MMoE and PLE beside torch-rechub and DeepCTR-Torch: train step (cpu)",
                           stamp(command), about, shown, after=after)


def benchmark(out: Path = RESULTS, batch_sizes: Sequence[int] = (64, 1024), repeats: int = 20,
              command: str | None = None, progress: bool = True) -> speed.SpeedResult:
    """``mtlzoo bench speed --peers``: :func:`compare` over :func:`speed_grid`, written to
    ``out/bench_speed_peers_cpu.{md,csv}``. A missing extra or a bad ``out`` fails before
    anything is timed or written."""
    versions = require_peers()
    out.mkdir(parents=True, exist_ok=True)
    command = command or f"mtlzoo.bench.peers.benchmark(batch_sizes={tuple(batch_sizes)})"
    configs = speed_grid()
    load = load_average()
    table = compare(configs, batch_sizes, repeats, progress=speed.progress_bar(
        len(configs) * len(batch_sizes), "speed", progress))
    markdown = report(table, command, versions, (load, load_average()), repeats)
    return speed.SpeedResult(table, write_result(out / "bench_speed_peers_cpu", table, markdown),
                             markdown)


def _integer(value: float) -> str:
    return "" if value != value else str(int(value))


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages, where the platform has them."""
    try:
        return ", ".join(f"{value:.2f}" for value in os.getloadavg())
    except (AttributeError, OSError):
        return "unknown"

