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
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import mtlzoo
from mtlzoo.bench.claims import check_claims
from mtlzoo.bench.figures import synthetic_figure
from mtlzoo.bench.grid import run_grid
from mtlzoo.bench.report import RESULTS, markdown_report, runs_path, stamp, write_result
from mtlzoo.bench.suite import MODEL_OPTIONS, MODELS, SuiteResult, grid_points

__all__ = ["CORRELATIONS", "MODELS", "MODEL_OPTIONS", "SYNTHETIC_SIZES", "SyntheticSize",
           "paired", "run_suite", "summarise"]


@dataclass(frozen=True)
class SyntheticSize:
    rows: int  # per correlation and seed: 80% train, 10% validation, 10% test
    epochs: int
    seeds: int
    batch_size: int = 256


SYNTHETIC_SIZES = {
    "demo": SyntheticSize(rows=8_000, epochs=10, seeds=5),
    "full": SyntheticSize(rows=100_000, epochs=10, seeds=5),
}
CORRELATIONS = (0.2, 0.5, 0.9, 1.0)


@cache
def _data(rows: int, correlation: float, seed: int) -> dict[str, dict]:
    """The splits as dicts of tensors: converted once here, not batch by batch from Arrow
    (which took half of each training step's time)."""
    from mtlzoo.data import synthetic_tasks

    splits = synthetic_tasks(rows, correlation, seed=seed,
                             splits={"train": 0.8, "validation": 0.1, "test": 0.1})
    return {name: dict(split.with_format("torch")[:]) for name, split in splits.items()}


def run_suite(size: str = "demo", out: Path = RESULTS, progress: bool = True,
              command: str | None = None, weightings: Sequence[str] = ("equal",),
              **overrides) -> SuiteResult:
    """Run (or resume) the synthetic suite; write its tables and figure; return them.

    ``overrides`` (``rows``, ``epochs``, ``seeds``) change the size for a quick look; the
    files are then named ``custom`` with the rows and epochs. ``command`` is what the stamp
    records (the CLI passes its command line)."""
    command = command or f"mtlzoo.bench.synthetic.run_suite({size!r}, weightings={weightings!r})"
    spec = SYNTHETIC_SIZES[size]
    if any(value is not None for value in overrides.values()):
        spec = SyntheticSize(**{**spec.__dict__,
                                **{k: v for k, v in overrides.items() if v is not None}})
        size = f"custom_{spec.rows}rows_{spec.epochs}epochs"
    points = grid_points(weightings, [{"correlation": p, "seed": seed}
                                      for p in CORRELATIONS for seed in range(spec.seeds)])
    tasks = [mtlzoo.Task("y1", kind="regression"), mtlzoo.Task("y2", kind="regression")]

    def run(point: dict) -> dict:
        data = _data(spec.rows, point["correlation"], point["seed"])
        torch.manual_seed(point["seed"])
        model = mtlzoo.create_model(point["model"], in_features=512, tasks=tasks,
                                    tower_dims=(8,), **MODEL_OPTIONS[point["model"]])
        trainer = mtlzoo.Trainer(model, weighting=point["weighting"], lr=1e-3,
                                 batch_size=spec.batch_size, seed=point["seed"], progress=False)
        start = time.perf_counter()
        trainer.fit(data["train"], epochs=spec.epochs)
        test = trainer.evaluate(data["test"])
        return {"y1_mse": test.loc["y1", "mse"], "y2_mse": test.loc["y2", "mse"],
                "train_s": time.perf_counter() - start}

    stem = out / f"quality_synthetic_{size}"
    runs = run_grid(points, run, runs_path(stem), progress=progress,
                    description=f"synthetic ({size})", results=("y1_mse", "y2_mse", "train_s"))
    summary, claims = summarise(runs)
    figure = synthetic_figure(summary, paired(runs), stem.with_suffix(".png"))
    about = (
        f"MMoE generator with the PLE constants (c = 1, m = 10, d = 512, alpha, beta ~ "
        f"N(0, 1)); {spec.rows:,} rows per correlation and seed (the PLE paper: 1.4 million; "
        f"scaled down for a 2-core CPU), 80/10/10 train/validation/test (a fixed budget of "
        f"{spec.epochs} epochs of Adam, lr 1e-3, batch {spec.batch_size}, so the validation "
        f"split is held out unused); {spec.seeds} seeds, each drawing the data and the initial "
        "weights; MMoE section 5.1 sizes (8 experts of 16 units, towers of 8, a 113-unit "
        "shared bottom). The seeds differ widely in difficulty, so models are compared on "
        "each seed: `y1_rel`, `y2_rel`: test MSE over single-task's on the same data and "
        "seed, geometric mean over seeds (below 1: sharing helps); `rel`: of both tasks; "
        "`rel_std`: its spread over seeds; `gain_*` = 1 - `*_rel`, the fraction of "
        "single-task's MSE removed; `y1_mse`, `y2_mse`: plain means over seeds."
    )
    after = ["## The papers' claims, checked", "", *[f"* {claim}" for claim in claims]]
    if figure:
        after += ["", f"![test MSE by correlation]({figure.name})"]
    markdown = markdown_report(
        f"Synthetic tasks: test MSE by correlation ({size})",
        stamp(command, grid=runs.attrs.get("grid")), [about], summary, digits=4, after=after,
    )
    return SuiteResult(summary, claims, write_result(stem, summary, markdown), figure)


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
