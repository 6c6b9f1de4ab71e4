"""Small batches against the peers: our MMoE and PLE train step beside torch-rechub's and
DeepCTR-Torch's at B=64, E=64, T=8, 2 threads (issue 15).

The models, the batch and the train step are :mod:`mtlzoo.bench.peers`' (its
:class:`~mtlzoo.bench.peers.Config` sizes: 128 dense features, experts of one ReLU layer
of width 64, towers (32,), binary tasks, PLE 2 levels). One train step, the same for
every side (:class:`mtlzoo.bench.peers.TrainStep`): zero the gradients, forward, every
task's BCE summed and averaged over the batch, backward, and ``torch.optim.Adam``'s step
(lr 1e-3) as each library's trainer builds it: fused for ours (``mtlzoo.Trainer``), torch's
default for the peers (their trainers): the optimizer is counted in the step's time.

Three configurations: MMoE with E=64; PLE at :meth:`Config.grid_point
<mtlzoo.bench.peers.Config.grid_point>`'s split of 64 experts over 8 tasks (32 shared +
8x4), which DeepCTR-Torch cannot run (its PLE 0.3.0 builds ``specific_expert_num`` shared
experts per level, not ``shared_expert_num``); and PLE at the nearest split it can run,
as many shared experts as each task's own (7 shared + 8x7 = 63, :func:`deepctr_split`).

:func:`measure` is one process's run (:func:`mtlzoo.bench.peers.compare`, the three sides
timed interleaved); :func:`benchmark` (``benchmarks/small_batch.py``) runs it in
``processes`` fresh processes, takes the median over processes of each ratio (each
process's ratio is measured within that process), checks :data:`TARGET` for every
(family, peer) that could run, and writes ``out/small_batch.{md,csv}`` and
``out/small_batch_runs.csv``.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from mtlzoo.bench import peers
from mtlzoo.bench.report import RESULTS, markdown_report, stamp, write_result
from mtlzoo.bench.speed import SpeedResult, in_fresh_process

TARGET = 3.0  # each peer's step time over ours, MMoE and PLE, median over processes
RATIOS = tuple(f"{peers.SHORT[peer]}_over_ours" for peer in peers.PEERS)
KEYS = ["family", "B", "E", "T", "split"]
COLUMNS = [
    *KEYS,
    *(f"{peers.SHORT[i]}_params" for i in peers.IMPLEMENTATIONS),
    *(f"{peers.SHORT[i]}_tensors" for i in peers.IMPLEMENTATIONS),
    *(f"{peers.SHORT[i]}_ms" for i in peers.IMPLEMENTATIONS),
    *(f"{ratio}{end}" for ratio in RATIOS for end in ("", "_min", "_max")),
    "processes", "note",
]


@dataclass(frozen=True)
class Size:
    """The batch and model sizes; the defaults are issue 15's small-batch target (B=64,
    E=64, T=8) at the peers harness' widths."""

    batch_size: int = 64
    num_experts: int = 64
    num_tasks: int = 8
    in_features: int = 128
    expert_width: int = 64
    tower_width: int = 32
    num_levels: int = 2

    @property
    def is_target(self) -> bool:
        return self == Size()


def deepctr_split(num_experts: int, num_tasks: int) -> tuple[int, int]:
    """(shared, per task) with shared == per task, the only PLE split DeepCTR-Torch 0.3.0
    runs, nearest ``num_experts`` a level: n = round(E / (T + 1)), at least 1."""
    own = max(1, round(num_experts / (num_tasks + 1)))
    return own, own


def configs(size: Size) -> list[peers.Config]:
    """MMoE; PLE at ``Config.grid_point``'s split; PLE at :func:`deepctr_split`."""
    sizes = {"in_features": size.in_features, "expert_width": size.expert_width,
             "tower_width": size.tower_width, "num_levels": size.num_levels}
    e, t = size.num_experts, size.num_tasks
    shared, own = deepctr_split(e, t)
    return [
        peers.Config.grid_point("mmoe", e, t, **sizes),
        peers.Config.grid_point("ple", e, t, **sizes),
        peers.Config("ple", num_tasks=t, num_experts=shared + t * own,
                     num_shared_experts=shared, num_task_experts=own, **sizes),
    ]


def measure(threads: int = 2, repeats: int = 50, warmup: int = 5,
            size: dict | None = None, seed: int = 0) -> list[dict]:
    """One process's run: ``threads`` torch threads (set for the rest of the process),
    :func:`mtlzoo.bench.peers.compare` over :func:`configs` at the batch size; one record
    per configuration (its ``*_over_ours`` measured in this process)."""
    torch.set_num_threads(threads)
    size = Size(**(size or {}))
    table = peers.compare(configs(size), batch_sizes=(size.batch_size,), repeats=repeats,
                          warmup=warmup, seed=seed)
    return [{key: _plain(value) for key, value in row.items()}
            for row in table.to_dict("records")]


def _plain(value: object) -> object:
    """A JSON-ready scalar (numpy's become Python's; NaN stays NaN)."""
    return value.item() if hasattr(value, "item") else value


def median_over_processes(runs: pd.DataFrame) -> pd.DataFrame:
    """Per configuration, the median over processes of each side's time and of each
    peer's ratio (a ratio where the peer could not run is left out; all out: empty), the
    ratios' min and max, the processes counted, and the notes."""
    runs = runs.assign(split=runs.split.fillna(""), note=runs.note.fillna(""))
    grouped = runs.groupby(KEYS, sort=False)
    medians = [f"{peers.SHORT[i]}_ms" for i in peers.IMPLEMENTATIONS] + list(RATIOS)
    table = grouped[medians].median()
    for ratio in RATIOS:
        table[f"{ratio}_min"] = grouped[ratio].min()
        table[f"{ratio}_max"] = grouped[ratio].max()
    counts = [f"{peers.SHORT[i]}_{what}" for what in ("params", "tensors")
              for i in peers.IMPLEMENTATIONS]
    for column in counts:
        table[column] = grouped[column].first() if column in runs else float("nan")
    table["processes"] = grouped.size()
    table["note"] = grouped.note.agg(lambda notes: "; ".join(sorted({
        note for cell in notes for note in cell.split("; ") if note})))
    return table.reset_index().reindex(columns=COLUMNS)


def check_target(table: pd.DataFrame, target: float = TARGET) -> list[str]:
    """For every configuration and every peer that ran it, the median ratio against
    ``target``: a line ending ``met`` or ``MISSED``."""
    lines = []
    for row in table.itertuples():
        label = row.family.upper() + (f" ({row.split})" if row.split else "")
        for peer in peers.PEERS:
            short = peers.SHORT[peer]
            ratio = getattr(row, f"{short}_over_ours")
            if ratio != ratio:  # NaN: the peer could not run it
                continue
            low = getattr(row, f"{short}_over_ours_min")
            high = getattr(row, f"{short}_over_ours_max")
            lines.append(
                f"{label}, B={row.B}, E={row.E}, T={row.T}: {peer}'s step {ratio:.2f}x ours, "
                f"median over {_count(row.processes, 'process')} (range {low:.2f}-{high:.2f}; "
                f"target {target:g}x): {'met' if ratio >= target else 'MISSED'}"
            )
    return lines


def benchmark(out: Path = RESULTS, processes: int = 3, repeats: int = 50, warmup: int = 5,
              threads: int = 2, size: Size | None = None,
              command: str | None = None) -> SpeedResult:
    """:func:`measure` in ``processes`` fresh processes, the median per configuration, the
    target checked (at the target's size only), written to ``out/small_batch.{md,csv}``
    and ``out/small_batch_runs.csv``. Without the peers, an MtlzooError before anything
    runs."""
    versions = peers.require_peers()
    size = size or Size()
    out.mkdir(parents=True, exist_ok=True)
    command = command or f"mtlzoo.bench.small_batch.benchmark(processes={processes})"
    load_before = peers.load_average()
    runs = []
    for i in range(processes):
        print(f"process {i + 1}/{processes}", file=sys.stderr)
        records = in_fresh_process(measure, threads, repeats, warmup, asdict(size))
        runs += [{"process": i + 1, **record} for record in records]
    runs = pd.DataFrame(runs)
    table = median_over_processes(runs)
    load = f"{load_before} / {peers.load_average()}"
    checks = check_target(table) if size.is_target else []
    markdown = report(table, command, versions, load, size, processes, repeats, warmup,
                      threads, checks)
    return SpeedResult(table, write_result(out / "small_batch", table, markdown, runs),
                       markdown, checks)


def report(table: pd.DataFrame, command: str, versions: dict[str, str], load: str,
           size: Size, processes: int, repeats: int, warmup: int, threads: int,
           checks: list[str]) -> str:
    """The Markdown results file: what was measured, the table, the target lines and what a
    peer could not run."""
    shown = table.copy()
    for column in shown.columns:
        if column.endswith(("_params", "_tensors")):
            shown[column] = [_integer(value) for value in shown[column]]
    notes = sorted({note for cell in table.note for note in cell.split("; ") if note})
    shown["note"] = [
        "; ".join(f"{note.split(':')[0]} cannot run it ({notes.index(note) + 1})"
                  for note in cell.split("; ") if note)
        for cell in table.note
    ]
    peer_versions = ", ".join(f"{name} {version}" for name, version in versions.items())
    about = [
        f"CPU fp32, {_count(threads, 'torch thread')}. B={size.batch_size}, "
        f"T={size.num_tasks} binary tasks, {size.in_features} dense features (one feature "
        f"of width {size.in_features} for the peers), experts of one ReLU layer of width "
        f"{size.expert_width}, softmax gates reading the level's input, towers "
        f"({size.tower_width},). MMoE with E={size.num_experts} experts; PLE "
        f"{size.num_levels} levels, twice: at the split `mtlzoo bench speed` uses for "
        f"E={size.num_experts} (`Config.grid_point`), and at the nearest split "
        "DeepCTR-Torch can run, as many shared experts as each task's own (`split`; `E` "
        "counts a level's experts). "
        f"Peers: {peer_versions}. Load average (1, 5, 15 min) before / after the run: {load}.",
        "One train step, the same for every side (`mtlzoo.bench.peers.TrainStep`): zero the "
        "gradients, forward, every task's BCE summed and averaged over the batch, backward, "
        "and the step of `torch.optim.Adam` (lr 1e-3) as each library's trainer builds it: "
        "fused for ours (mtlzoo's Trainer: one kernel for every parameter), torch's default "
        "for the peers (their trainers' `torch.optim.Adam`; on CPU tensors the per-tensor "
        "for-loop): the optimizer is part of the timed step. Each side runs on the batch "
        "in its own input format (a dict of feature tensors for torch-rechub). In each "
        f"process the three sides are timed interleaved, {_count(repeats, 'round')} after "
        f"{_count(warmup, 'warm-up round')} (each round starting with the next side), and "
        "each peer's median time over ours is that process's ratio; "
        f"{_count(processes, 'fresh process')}, and the table shows the median over "
        "processes of every time and ratio (`_min`, `_max`: the ratio's range over "
        "processes). `*_params`: trainable parameters; `*_tensors`: parameter tensors, each "
        "one the optimizer steps through (ours keeps a level's experts in one grouped "
        "tensor, the peers one `nn.Linear` per expert); torch-rechub adds a BatchNorm1d "
        "after every linear layer and a bias to its gates, DeepCTR-Torch's PLE a shared "
        "gate at its last level. Above 1: ours is faster.",
    ]
    after = []
    if checks:
        after += [f"Target: each peer's train step at least {TARGET:g}x ours, MMoE and PLE, "
                  "for every configuration the peer can run:", ""]
        after += [f"* {line}" for line in checks]
    if notes:
        after += [""] if after else []
        after += ["What a peer could not build or run (its cells are empty; a parameter "
                  "count is of what it built):", ""]
        after += [f"{i}. {note}" for i, note in enumerate(notes, 1)]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # the stamp names the measuring processes' threads
    try:
        head = stamp(command)
    finally:
        torch.set_num_threads(previous)
    return markdown_report(
        "MMoE and PLE at a small batch beside torch-rechub and DeepCTR-Torch: train step (cpu)",
        head, about, shown, after=after)


def _count(number: int, noun: str) -> str:
    plural = noun + ("es" if noun.endswith("s") else "s")
    return f"{number} {noun if number == 1 else plural}"


def _integer(value: float) -> str:
    return "" if value != value else str(int(value))
