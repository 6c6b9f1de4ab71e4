"""The Census-Income suite: MMoE Tables 1-2, PLE Table 5.

UCI Census-Income, both task groups, AUC of the test split at the epoch of best validation
AUC of the main task (early stopping), best and mean over seeds, the papers' rows beside
ours.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import pandas as pd
import torch

import mtlzoo
from mtlzoo.bench.grid import run_grid
from mtlzoo.bench.report import RESULTS, markdown_report, runs_path, stamp, write_result
from mtlzoo.bench.suite import MODEL_OPTIONS, SuiteResult, grid_points

# MMoE Table 1 (group 1): AUC of the main task and of marital status, best run / mean of 400
# runs; PLE Table 5 (group 1, one figure per task). MMoE Table 2 (group 2) is not in our
# reference notes (../shared/REFERENCES.md), so group 2 has no paper rows.
CENSUS_PAPER = {
    ("MMoE Table 1", 1): {
        "single_task": (0.9398, 0.9337, 0.9933, 0.9922),
        "shared_bottom": (0.9361, 0.9295, 0.9915, 0.9921),
        "cross_stitch": (0.9406, 0.9361, 0.9917, 0.9922),
        "omoe": (0.9387, 0.9319, 0.9928, 0.9923),
        "mmoe": (0.9410, 0.9359, 0.9926, 0.9927),
    },
    ("PLE Table 5", 1): {
        "single_task": (0.9445, None, 0.9923, None),
        "mmoe": (0.9393, None, 0.9928, None),
        "ple": (0.9522, None, 0.9945, None),
    },
}
CENSUS_SEEDS = {"demo": 1, "full": 5}


def run_suite(size: str = "full", out: Path = RESULTS, path: str | None = None,
              progress: bool = True, command: str | None = None,
              weightings: Sequence[str] = ("equal",)) -> SuiteResult:
    """Run (or resume) the Census-Income suite; write its tables; return them."""
    from mtlzoo.data import census_income
    from mtlzoo.encoders import TabularEncoder

    command = command or f"mtlzoo.bench.census.run_suite({size!r}, weightings={weightings!r})"
    load = cache(lambda group: census_income(path, task_group=group, seed=0))
    points = grid_points(weightings, [{"task_group": group, "seed": seed}
                                      for group in (1, 2) for seed in range(CENSUS_SEEDS[size])])

    def run(point: dict) -> dict:
        data = load(point["task_group"])
        main, aux = (task.name for task in data.tasks)
        torch.manual_seed(point["seed"])
        encoder = TabularEncoder(data.cardinalities, len(data.numeric_columns), embedding_dim=4)
        model = mtlzoo.create_model(point["model"], tasks=data.tasks, encoder=encoder,
                                    tower_dims=(8,), **MODEL_OPTIONS[point["model"]])
        trainer = mtlzoo.Trainer(model, weighting=point["weighting"], lr=1e-3, batch_size=1024,
                                 seed=point["seed"], input_key=("categorical", "numeric"),
                                 progress=False)
        start = time.perf_counter()
        trainer.fit(data.splits["train"], eval=data.splits["validation"], epochs=10,
                    early_stopping=f"{main}/auc", patience=2)
        test = trainer.evaluate(data.splits["test"])
        return {"main_auc": test.loc[main, "auc"], "aux_auc": test.loc[aux, "auc"],
                "best_epoch": trainer.best_epoch, "train_s": time.perf_counter() - start}

    stem = out / f"quality_census_{size}"
    runs = run_grid(points, run, runs_path(stem), progress=progress,
                    description=f"census ({size})",
                    results=("main_auc", "aux_auc", "best_epoch", "train_s"))
    summary = summarise(runs)
    about = (
        "UCI Census-Income (KDD) as MMoE section 6.3 uses it (`mtlzoo.data.census_income`): "
        "group 1 = income > 50K (main) + never married; group 2 = education at least "
        "college (main) + never married. Adam (lr 1e-3, batch 1024), at most 10 epochs, "
        "early stopping on the validation AUC of the main task (patience 2), the weights of "
        f"the best epoch evaluated on the test split; {CENSUS_SEEDS[size]} seed(s). `best`: the "
        "run with the best main-task AUC (its auxiliary AUC beside it), `mean`: over seeds. "
        "Group 1 has the papers' rows beside ours (MMoE Table 1: best / mean of 400 runs; "
        "PLE Table 5: one figure), with ours minus theirs; MMoE Table 2 (group 2) is not in "
        "our reference notes, so group 2 stands alone."
    )
    markdown = markdown_report(f"Census-Income: test AUC ({size})",
                               stamp(command, grid=runs.attrs.get("grid")), [about], summary,
                               digits=4)
    return SuiteResult(summary, [], write_result(stem, summary, markdown))


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Best and mean AUC per (group, model, weighting), the papers' figures (for the plain
    sum of losses the papers train) and the differences: our best against the paper's best
    run, our mean against the paper's mean where it gives one."""
    rows = []
    for (group, model, weighting), part in runs.groupby(["task_group", "model", "weighting"],
                                                         sort=False):
        best = part.loc[part.main_auc.idxmax()]
        row = {"task_group": group, "model": model, "weighting": weighting, "seeds": len(part),
               "main_best": best.main_auc, "main_mean": part.main_auc.mean(),
               "aux_of_best": best.aux_auc, "aux_mean": part.aux_auc.mean(),
               "best_epoch_max": part.best_epoch.max()}
        for (table, table_group), figures in CENSUS_PAPER.items():
            if table_group == group and model in figures and weighting == "equal":
                paper_best, paper_mean, paper_aux, paper_aux_mean = figures[model]
                row[f"{table} main"] = paper_best
                row[f"{table} main diff"] = best.main_auc - paper_best
                if paper_mean is not None:
                    row[f"{table} main mean"] = paper_mean
                    row[f"{table} main mean diff"] = row["main_mean"] - paper_mean
                row[f"{table} aux"] = paper_aux
                if paper_aux_mean is not None:
                    row[f"{table} aux mean"] = paper_aux_mean
        rows.append(row)
    return pd.DataFrame(rows)
