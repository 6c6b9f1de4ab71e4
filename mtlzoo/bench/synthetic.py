"""The synthetic suite: MMoE Fig. 4 / PLE Fig. 7.

Two regression tasks from the MMoE generator with the PLE constants
(``mtlzoo.data.synthetic_tasks``) at correlations 0.2, 0.5, 0.9, 1.0; every architecture
and the single-task baseline, several seeds; test MSE per task, compared with single-task's
on the same seed, the MTL gain, the spread over seeds, the papers' claims checked
(:mod:`mtlzoo.bench.claims`) and a figure. ``mtlzoo demo`` runs it at ``demo`` size.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cache, partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import mtlzoo
from mtlzoo import _checks
from mtlzoo.bench.claims import check_claims, why_not
from mtlzoo.bench.figures import synthetic_figure
from mtlzoo.bench.grid import run_grid
from mtlzoo.bench.report import (
    RESULTS,
    GridCount,
    markdown_report,
    runs_path,
    stamp,
    write_result,
)
from mtlzoo.bench.suite import MODEL_OPTIONS, MODELS, SuiteResult, grid_points, model_options
from mtlzoo.errors import MtlzooError

__all__ = ["CORRELATIONS", "MODELS", "MODEL_OPTIONS", "SYNTHETIC_SIZES", "SyntheticSize",
           "check_budget", "paired", "run_point", "run_suite", "summarise"]


@dataclass(frozen=True)
class SyntheticSize:
    """A size of the suite: the data, the training budget and the seeds.

    ``rows`` per correlation and seed, 80/10/10 train/validation/test; ``dim`` input
    features; ``standardize``: targets centred and scaled by the train split's mean and std
    (a test MSE is then one relative to the target's variance); ``width_scale`` multiplies
    every hidden width of MMoE section 5.1's sizes (:func:`~mtlzoo.bench.suite.model_options`).
    ``workers``: grid points trained at once, each in its own one-thread process."""

    rows: int
    epochs: int
    seeds: int
    batch_size: int = 256
    dim: int = 512
    standardize: bool = False
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    width_scale: int = 1
    workers: int = 1

    def key(self) -> str:
        """What the runs depend on, in one cell of the runs file, so that rows trained at
        another size or budget are never taken for this one's."""
        return (f"rows={self.rows} dim={self.dim} standardize={self.standardize} "
                f"epochs={self.epochs} batch={self.batch_size} {self.optimizer} lr={self.lr:g} "
                f"wd={self.weight_decay:g} {self.lr_schedule} widths x{self.width_scale}")

    def describe(self) -> str:
        """The data and budget in words, for a report."""
        decay = f", weight decay {self.weight_decay:g}" if self.weight_decay else ""
        schedule = ", cosine decay to 0" if self.lr_schedule == "cosine" else ""
        targets = ("targets standardised on the train split" if self.standardize
                   else "raw targets")
        widths = ("MMoE section 5.1 sizes (8 experts of 16 units, towers of 8, a 113-unit "
                  "shared bottom)" if self.width_scale == 1 else
                  f"MMoE section 5.1 sizes with every hidden width x{self.width_scale} (8 "
                  f"experts of {16 * self.width_scale} units, towers of 8, a "
                  f"{113 * self.width_scale}-unit shared bottom)")
        return (f"{self.rows:,} rows per correlation and seed, d = {self.dim}, {targets}; "
                f"{widths}; {self.epochs} epochs of {self.optimizer} (lr {self.lr:g}{decay}"
                f"{schedule}), batch {self.batch_size}; {self.seeds} seed(s)"
                + (f"; {self.workers} runs at a time, one thread each" if self.workers > 1
                   else ""))


# demo: the PLE paper's d = 512 on 5,000 rows, so that every model reaches the plateau its
# data allows within the budget (each within 10% of its test MSE at 4x the steps:
# check_budget, docs/results.md); MMoE section 5.1's sizes with widths x2, AdamW with
# weight decay and cosine decay, 8 points trained 2 at a time. full: the papers' set-up at
# a size our 2-core CPU runs in hours.
SYNTHETIC_SIZES = {
    "demo": SyntheticSize(rows=5_000, epochs=16, seeds=2, batch_size=64, standardize=True,
                          optimizer="adamw", lr=3e-3, weight_decay=1.0, lr_schedule="cosine",
                          width_scale=2, workers=2),
    "full": SyntheticSize(rows=100_000, epochs=10, seeds=5),
}
CORRELATIONS = (0.2, 0.5, 0.9, 1.0)
TASKS = (mtlzoo.Task("y1", kind="regression"), mtlzoo.Task("y2", kind="regression"))


@cache
def _data(rows: int, dim: int, correlation: float, seed: int, standardize: bool
          ) -> dict[str, dict]:
    """The splits as dicts of tensors: converted once here, not batch by batch from Arrow
    (which took half of each training step's time); with ``standardize``, each target
    centred and scaled by the train split's mean and std."""
    from mtlzoo.data import synthetic_tasks

    splits = synthetic_tasks(rows, correlation, dim=dim, seed=seed,
                             splits={"train": 0.8, "validation": 0.1, "test": 0.1})
    data = {name: dict(split.with_format("torch")[:]) for name, split in splits.items()}
    if standardize:
        for task in TASKS:
            mean, std = data["train"][task.name].mean(), data["train"][task.name].std()
            for split in data.values():
                split[task.name] = (split[task.name] - mean) / std
    return data


def run_point(spec: SyntheticSize, point: dict) -> dict:
    """Train ``point["model"]`` under ``point["weighting"]`` at ``spec``'s size on the data
    of ``point["correlation"]`` and ``point["seed"]``; its test MSE per task and seconds."""
    data = _data(spec.rows, spec.dim, point["correlation"], point["seed"], spec.standardize)
    torch.manual_seed(point["seed"])
    model = mtlzoo.create_model(point["model"], in_features=spec.dim, tasks=TASKS,
                                tower_dims=(8,),
                                **model_options(point["model"], spec.width_scale))
    trainer = mtlzoo.Trainer(model, weighting=point["weighting"], optimizer=spec.optimizer,
                             lr=spec.lr, weight_decay=spec.weight_decay,
                             lr_schedule=spec.lr_schedule, batch_size=spec.batch_size,
                             seed=point["seed"], progress=False)
    start = time.perf_counter()
    trainer.fit(data["train"], epochs=spec.epochs)
    test = trainer.evaluate(data["test"])
    return {"y1_mse": test.loc["y1", "mse"], "y2_mse": test.loc["y2", "mse"],
            "train_s": time.perf_counter() - start}


def sized(size: str, **overrides) -> tuple[str, SyntheticSize]:
    """The name and spec of ``size``, changed by the ``overrides`` that are not None (the
    name then says ``custom`` with the rows and epochs)."""
    if size not in SYNTHETIC_SIZES:
        raise MtlzooError(f"unknown size {size!r}; one of {', '.join(SYNTHETIC_SIZES)}")
    spec = SYNTHETIC_SIZES[size]
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if not overrides:
        return size, spec
    spec = replace(spec, **overrides)
    return f"custom_{spec.rows}rows_{spec.epochs}epochs", spec


def run_grid_of(spec: SyntheticSize, name: str, out: Path, weightings: Sequence[str],
                progress: bool) -> pd.DataFrame:
    """The runs of the suite at ``spec`` (resumed from ``quality_synthetic_<name>_runs.csv``
    under ``out``)."""
    points = grid_points(weightings, [{"correlation": p, "seed": seed, "setup": spec.key()}
                                      for p in CORRELATIONS for seed in range(spec.seeds)])
    return run_grid(points, partial(run_point, spec),
                    runs_path(out / f"quality_synthetic_{name}"), progress=progress,
                    description=f"synthetic ({name})", results=("y1_mse", "y2_mse", "train_s"),
                    workers=spec.workers)


def run_suite(size: str = "demo", out: Path = RESULTS, progress: bool = True,
              command: str | None = None, weightings: Sequence[str] = ("equal",),
              **overrides) -> SuiteResult:
    """Run (or resume) the synthetic suite; write its tables and figure; return them.

    ``overrides`` (``rows``, ``epochs``, ``seeds``, or any field of :class:`SyntheticSize`)
    change the size for a quick look; the files are then named ``custom`` with the rows and
    epochs. ``command`` is what the stamp records (the CLI passes its command line)."""
    command = command or f"mtlzoo.bench.synthetic.run_suite({size!r}, weightings={weightings!r})"
    size, spec = sized(size, **overrides)
    runs = run_grid_of(spec, size, out, weightings, progress)
    stem = out / f"quality_synthetic_{size}"
    summary, claims = summarise(runs)
    figure = synthetic_figure(summary, paired(runs), stem.with_suffix(".png"))
    about = (
        f"MMoE generator with the PLE constants (c = 1, m = 10, alpha, beta ~ N(0, 1)); "
        f"{spec.describe()} (the PLE paper: 1.4 million rows, d = 512; scaled down for a "
        "2-core CPU). A fixed budget, so the validation split is held out unused; each seed "
        "draws the data and the initial weights. The seeds differ widely in "
        "difficulty, so models are compared on each seed: `y1_rel`, `y2_rel`: test MSE over "
        "single-task's on the same data and seed, geometric mean over seeds (below 1: "
        "sharing helps); `rel`: of both tasks; `rel_std`: its spread over seeds; `gain_*` = "
        "1 - `*_rel`, the fraction of single-task's MSE removed; `y1_mse`, `y2_mse`: plain "
        "means over seeds."
    )
    after = ["## The papers' claims, checked", "", *[f"* {claim}" for claim in claims]]
    if any("does NOT hold" in claim for claim in claims):
        after += ["", why_not(summary, spec.rows, spec.dim)]
    if figure:
        after += ["", f"![test MSE by correlation]({figure.name})"]
    markdown = markdown_report(
        f"Synthetic tasks: test MSE by correlation ({size})",
        stamp(command, grid=runs.attrs.get("grid")), [about], summary, digits=4, after=after,
    )
    return SuiteResult(summary, claims, write_result(stem, summary, markdown), figure)


def check_budget(size: str = "demo", factor: int = 4, out: Path = RESULTS,
                 progress: bool = True, command: str | None = None,
                 tolerance: float = 0.10) -> SuiteResult:
    """The learning-curve check of a size's budget: the suite at ``size`` and again with
    ``factor`` times the epochs (so the steps; an lr schedule stretched alike), each model's
    test MSE (geometric mean over tasks, correlations and seeds) at both, and whether the
    budget's is within ``tolerance`` of the longer run's. Writes
    ``quality_synthetic_<size>_budget.*`` (the runs resume as the suite's do)."""
    command = command or f"mtlzoo.bench.synthetic.check_budget({size!r}, factor={factor})"
    _checks.positive_int("factor", factor)
    name, spec = sized(size)
    longer = replace(spec, epochs=spec.epochs * factor)
    short = run_grid_of(spec, name, out, ("equal",), progress)
    long = run_grid_of(longer, f"{name}_x{factor}", out, ("equal",), progress)
    table = pd.DataFrame({"budget": _mse_by_model(short), f"x{factor}": _mse_by_model(long)})
    table["ratio"] = table.budget / table[f"x{factor}"]
    table["within"] = (table.ratio - 1).abs() <= tolerance
    # what the demo compares: MSE relative to single-task's on the same seed, at both budgets
    table["rel_budget"], table[f"rel_x{factor}"] = _rel_by_model(short), _rel_by_model(long)
    table = table.reindex([m for m in MODELS if m in table.index]).reset_index(names="model")
    verdict = ("every model's test MSE at the budget is within "
               f"{tolerance:.0%} of its MSE at {factor}x the steps" if table.within.all() else
               f"NOT every model is within {tolerance:.0%}: "
               + ", ".join(f"{row.model} {row.ratio:.3f}" for row in table.itertuples()
                           if not row.within))
    about = (
        f"The {name} budget ({spec.describe()}) against {factor}x its epochs and steps "
        f"({longer.epochs} epochs, the lr schedule stretched alike). `budget`, `x{factor}`: "
        "test MSE, geometric mean over both tasks, the correlations and the seeds; `ratio`: "
        f"budget over x{factor} (above 1: the longer run is better); `within`: |ratio - 1| "
        f"<= {tolerance:g}. `rel_budget`, `rel_x{factor}`: the test MSE relative to "
        "single-task's on the same seed (what the suite compares), geometric mean, at both."
    )
    grid = GridCount(*(sum(getattr(r.attrs["grid"], f) for r in (short, long))
                       for f in ("ran", "resumed")), f"the runs files of {name} and x{factor}")
    markdown = markdown_report(f"Synthetic tasks: is the {name} budget enough?",
                               stamp(command, grid=grid), [about], table, digits=4,
                               after=[f"Verdict: {verdict}."])
    return SuiteResult(table, [verdict],
                       write_result(out / f"quality_synthetic_{name}_budget", table, markdown))


def _rel_by_model(runs: pd.DataFrame) -> pd.Series:
    rel = paired(runs)
    return np.exp(np.log(rel.rel).groupby(rel.model).mean())


def _mse_by_model(runs: pd.DataFrame) -> pd.Series:
    logs = np.log(runs[["y1_mse", "y2_mse"]]).mean(axis=1)
    return np.exp(logs.groupby(runs.model).mean())


def summarise(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Per (model, weighting, correlation): the mean test MSE per task, and the comparison
    paired on each seed (the seeds differ widely in difficulty, so a mean of MSEs is ruled by
    the hardest): ``*_rel``, the MSE relative to single-task's on the same data and seed,
    geometric mean over seeds (below 1: MTL helps); ``rel`` of both tasks; ``rel_std``, its
    spread over seeds; ``gain_*`` = 1 - ``*_rel``, the fraction of single-task's error
    removed. And the MMoE and PLE papers' claims for each weighting, each stated with what
    our numbers say."""
    runs = paired(runs)
    logs = runs.assign(**{c: np.log(runs[c]) for c in ("y1_rel", "y2_rel", "rel")})
    keys = ["model", "weighting", "correlation"]
    grouped = logs.groupby(keys, sort=False)
    summary = grouped[["y1_mse", "y2_mse"]].mean()
    summary[["y1_rel", "y2_rel", "rel"]] = np.exp(grouped[["y1_rel", "y2_rel", "rel"]].mean())
    summary["rel_std"] = runs.groupby(keys, sort=False).rel.std()
    summary["seeds"] = grouped.size()
    summary = summary.reset_index()
    for task in ("y1", "y2"):
        summary[f"gain_{task}"] = 1 - summary[f"{task}_rel"]
    return summary, check_claims(summary)


def paired(runs: pd.DataFrame) -> pd.DataFrame:
    """Each run with its MSE relative to single-task's on the same correlation and seed:
    ``y1_rel``, ``y2_rel`` and ``rel``, their geometric mean."""
    single = runs.loc[runs.model == "single_task", ["correlation", "seed", "y1_mse", "y2_mse"]]
    paired = runs.merge(single, on=["correlation", "seed"], how="left",
                        suffixes=("", "_single"))
    for task in ("y1", "y2"):
        paired[f"{task}_rel"] = paired[f"{task}_mse"] / paired[f"{task}_mse_single"]
    paired["rel"] = (paired.y1_rel * paired.y2_rel) ** 0.5
    return paired
