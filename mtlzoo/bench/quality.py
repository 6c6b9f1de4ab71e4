"""Quality suites: the architectures compared on the same data, beside the papers' numbers.

``synthetic``: MMoE Fig. 4 / PLE Fig. 7. Two regression tasks from the MMoE generator with
the PLE constants (``mtlzoo.data.synthetic_tasks``) at correlations 0.2, 0.5, 0.9, 1.0;
every architecture and the single-task baseline, several seeds; test MSE per task, the MTL
gain over single-task, and the spread over seeds.

``census``: MMoE Tables 1-2, PLE Table 5. UCI Census-Income, both task groups, AUC of the
test split at the epoch of best validation AUC of the main task (early stopping), best and
mean over seeds, the papers' rows beside ours.

Both grids run every architecture under each weighting asked for (``equal`` by default, the
papers' plain sum of losses); the single-task baseline runs once, its tasks share nothing.
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
from mtlzoo.bench.grid import run_grid, stamp
from mtlzoo.bench.speed import markdown_table
from mtlzoo.errors import MtlzooError

RESULTS = Path("results")
MODELS = ("single_task", "shared_bottom", "omoe", "mmoe", "cgc", "ple", "cross_stitch")

# MMoE section 5.1: 8 experts of one 16-unit layer, towers of 8, a 113-unit shared bottom
# (about the experts' parameter count); CGC/PLE split the 8 experts as 4 shared + 2 per task.
MODEL_OPTIONS = {
    "single_task": {"hidden_dims": (113,)},
    "shared_bottom": {"bottom_dims": (113,)},
    "omoe": {"num_experts": 8, "expert_dims": (16,)},
    "mmoe": {"num_experts": 8, "expert_dims": (16,)},
    "cgc": {"num_shared_experts": 4, "num_task_experts": 2, "expert_dims": (16,)},
    "ple": {"num_levels": 2, "num_shared_experts": 4, "num_task_experts": 2,
            "expert_dims": (16,)},
    "cross_stitch": {"column_dims": (56,)},
}


@dataclass(frozen=True)
class SuiteResult:
    """What a suite wrote: its summary table, the papers' claims checked (synthetic), and
    the paths of its report and figure (None where matplotlib is missing)."""

    summary: pd.DataFrame
    claims: list[str]
    report: Path
    figure: Path | None = None


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
def _synthetic_data(rows: int, correlation: float, seed: int) -> dict[str, dict]:
    """The splits as dicts of tensors: converted once here, not batch by batch from Arrow
    (which took half of each training step's time)."""
    from mtlzoo.data import synthetic_tasks

    splits = synthetic_tasks(rows, correlation, seed=seed,
                             splits={"train": 0.8, "validation": 0.1, "test": 0.1})
    return {name: dict(split.with_format("torch")[:]) for name, split in splits.items()}


def check_weightings(weightings: Sequence[str]) -> tuple[str, ...]:
    """The weightings as a tuple, each known and buildable without options (``fixed`` needs
    its weights), so that a bad name fails before a grid of hours starts."""
    weightings = tuple(weightings)
    unknown = [name for name in weightings if name not in mtlzoo.list_weightings()]
    if unknown or not weightings:
        raise MtlzooError(f"unknown weighting(s) {unknown or list(weightings)}; choose from "
                          f"{mtlzoo.list_weightings()}")
    for name in weightings:
        mtlzoo.create_weighting(name, ["task0", "task1"])
    return weightings


def grid_points(weightings: Sequence[str], settings: Sequence[dict]) -> list[dict]:
    """Every setting x every model, each model under every weighting but the single-task
    baseline, which runs once with ``equal``."""
    weightings = check_weightings(weightings)
    return [
        {"model": model, "weighting": weighting, **setting}
        for setting in settings for model in MODELS
        for weighting in (("equal",) if model == "single_task" else weightings)
    ]


def synthetic(size: str = "demo", out: Path = RESULTS, progress: bool = True,
              command: str | None = None, weightings: Sequence[str] = ("equal",),
              **overrides) -> SuiteResult:
    """Run (or resume) the synthetic suite; write its tables and figure; return them.

    ``overrides`` (``rows``, ``epochs``, ``seeds``) change the size for a quick look; the
    files are then named ``custom`` with the rows and epochs. ``command`` is what the stamp
    records (the CLI passes its command line)."""
    command = command or f"mtlzoo.bench.quality.synthetic({size!r}, weightings={weightings!r})"
    spec = SYNTHETIC_SIZES[size]
    if any(value is not None for value in overrides.values()):
        spec = SyntheticSize(**{**spec.__dict__,
                                **{k: v for k, v in overrides.items() if v is not None}})
        size = f"custom_{spec.rows}rows_{spec.epochs}epochs"
    points = grid_points(weightings, [{"correlation": p, "seed": seed}
                                      for p in CORRELATIONS for seed in range(spec.seeds)])
    tasks = [mtlzoo.Task("y1", kind="regression"), mtlzoo.Task("y2", kind="regression")]

    def run(point: dict) -> dict:
        data = _synthetic_data(spec.rows, point["correlation"], point["seed"])
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
    runs = run_grid(points, run, stem.with_name(stem.name + "_runs.csv"), progress=progress,
                    description=f"synthetic ({size})", results=("y1_mse", "y2_mse", "train_s"))
    summary, claims = summarise_synthetic(runs)
    summary.to_csv(stem.with_suffix(".csv"), index=False)
    figure = _synthetic_figure(summary, runs, stem.with_suffix(".png"))
    lines = [
        f"# Synthetic tasks: test MSE by correlation ({size})", "", stamp(command), "",
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
        "single-task's MSE removed; `y1_mse`, `y2_mse`: plain means over seeds.", "",
        markdown_table(summary, digits=4), "", "## The papers' claims, checked", "",
        *[f"* {claim}" for claim in claims], "",
    ]
    if figure:
        lines += [f"![test MSE by correlation]({figure.name})", ""]
    stem.with_suffix(".md").write_text("\n".join(lines))
    return SuiteResult(summary, claims, stem.with_suffix(".md"), figure)


def summarise_synthetic(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Per (model, weighting, correlation): the mean test MSE per task, and the comparison
    paired on each seed (the seeds differ widely in difficulty, so a mean of MSEs is ruled by
    the hardest): ``*_rel``, the MSE relative to single-task's on the same data and seed,
    geometric mean over seeds (below 1: MTL helps); ``rel`` of both tasks; ``rel_std``, its
    spread over seeds; ``gain_*`` = 1 - ``*_rel``, the fraction of single-task's error
    removed. And the MMoE and PLE papers' claims for each weighting, each stated with what
    our numbers say."""
    paired = _paired(runs)
    logs = paired.assign(**{c: np.log(paired[c]) for c in ("y1_rel", "y2_rel", "rel")})
    grouped = logs.groupby(["model", "weighting", "correlation"], sort=False)
    summary = grouped[["y1_mse", "y2_mse"]].mean()
    summary[["y1_rel", "y2_rel", "rel"]] = np.exp(grouped[["y1_rel", "y2_rel", "rel"]].mean())
    summary["rel_std"] = paired.groupby(["model", "weighting", "correlation"], sort=False
                                        ).rel.std()
    summary["seeds"] = grouped.size()
    summary = summary.reset_index()
    for task in ("y1", "y2"):
        summary[f"gain_{task}"] = 1 - summary[f"{task}_rel"]
    weightings = list(dict.fromkeys(summary.weighting[summary.model != "single_task"]))
    claims = []
    for weighting in weightings:
        part = summary[(summary.weighting == weighting) | (summary.model == "single_task")]
        prefix = f"[{weighting}] " if len(weightings) > 1 else ""
        claims += [prefix + claim for claim in _synthetic_claims(part)]
    return summary, claims


def _paired(runs: pd.DataFrame) -> pd.DataFrame:
    """Each run with its MSE relative to single-task's on the same correlation and seed:
    ``y1_rel``, ``y2_rel`` and ``rel``, their geometric mean."""
    single = runs.loc[runs.model == "single_task", ["correlation", "seed", "y1_mse", "y2_mse"]]
    paired = runs.merge(single, on=["correlation", "seed"], how="left",
                        suffixes=("", "_single"))
    for task in ("y1", "y2"):
        paired[f"{task}_rel"] = paired[f"{task}_mse"] / paired[f"{task}_mse_single"]
    paired["rel"] = (paired.y1_rel * paired.y2_rel) ** 0.5
    return paired


def _synthetic_claims(summary: pd.DataFrame) -> list[str]:
    """The claims for one weighting: ``summary`` holds one row per (model, correlation);
    every comparison is of MSE relative to single-task on the same seeds (``rel``)."""
    by_model = np.exp(np.log(summary.set_index("model").rel).groupby("model").mean())
    claims = []
    mmoe, omoe, bottom = by_model["mmoe"], by_model["omoe"], by_model["shared_bottom"]
    verdict = "holds" if mmoe <= omoe <= bottom else "does NOT hold"
    claims.append(
        f"MMoE <= OMoE <= shared-bottom on average (MMoE Fig. 4): {verdict} here (test MSE "
        f"relative to single-task on the same seed: {mmoe:.3f}, {omoe:.3f}, {bottom:.3f})."
    )
    pivot = summary.pivot(index="correlation", columns="model", values="rel")
    low, high = pivot.index.min(), pivot.index.max()
    for other in ("omoe", "shared_bottom"):
        gap_low = pivot.loc[low, other] - pivot.loc[low, "mmoe"]
        gap_high = pivot.loc[high, other] - pivot.loc[high, "mmoe"]
        verdict = "holds" if gap_low > gap_high else "does NOT hold"
        claims.append(
            f"The gap between {other} and MMoE grows as correlation falls: {verdict} here "
            f"({gap_low:+.3f} at correlation {low}, {gap_high:+.3f} at {high}, in relative "
            "MSE)."
        )
    spread = summary.groupby("model", sort=False)["rel_std"].mean().drop("single_task")
    spread = spread.dropna()
    if spread.empty:
        claims.append("Shared-bottom varies most across seeds (MMoE Fig. 5): not checked, "
                      "the spread needs at least 2 seeds.")
    else:
        verdict = "holds" if spread.idxmax() == "shared_bottom" else "does NOT hold"
        listed = ", ".join(f"{name} {value:.3f}" for name, value in spread.items())
        claims.append(f"Shared-bottom varies most across seeds (MMoE Fig. 5): {verdict} here "
                      f"(std over seeds of the relative MSE, mean over correlations: "
                      f"{listed}).")
    ple = summary[summary.model == "ple"]
    positive = bool(((ple.gain_y1 > 0) & (ple.gain_y2 > 0)).all())
    claims.append(
        f"PLE's MTL gain is positive on both tasks at every correlation (PLE Fig. 7): "
        f"{'holds' if positive else 'does NOT hold'} here (gains, the fraction of "
        f"single-task's MSE removed: y1 {', '.join(f'{g:+.1%}' for g in ple.gain_y1)}; y2 "
        f"{', '.join(f'{g:+.1%}' for g in ple.gain_y2)} at correlations "
        f"{', '.join(str(c) for c in ple.correlation)})."
    )
    gains = summary.assign(gain=(summary.gain_y1 + summary.gain_y2) / 2).groupby("model").gain
    ple_gain, mmoe_gain = gains.mean()["ple"], gains.mean()["mmoe"]
    relative = (ple_gain / mmoe_gain - 1) * 100 if mmoe_gain > 0 else float("nan")
    claims.append(
        f"PLE's average MTL gain is 87.2% above MMoE's (PLE section 5.2.1): here PLE "
        f"{ple_gain:+.1%}, MMoE {mmoe_gain:+.1%}"
        + (f", {relative:+.1f}%." if mmoe_gain > 0 else " (MMoE's gain is not positive).")
    )
    return claims


def _synthetic_figure(summary: pd.DataFrame, runs: pd.DataFrame, path: Path) -> Path | None:
    """Test MSE relative to single-task on the same seed against correlation, log scale: one
    line per model (and weighting, where not ``equal``) through the geometric mean over
    seeds, every seed a dot beside it, single-task the line at 1."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    paired = _paired(runs)
    lines = [key for key in dict.fromkeys(zip(summary.model, summary.weighting, strict=True))
             if key[0] != "single_task"]
    figure, axes = plt.subplots(figsize=(7.2, 4.6))
    axes.axhline(1.0, color="grey", linewidth=1, label="single_task (= 1)")
    for index, (model, weighting) in enumerate(lines):
        label = model if weighting == "equal" else f"{model} ({weighting})"
        shift = (index - (len(lines) - 1) / 2) * 0.006  # side by side at each correlation
        mean = summary[(summary.model == model) & (summary.weighting == weighting)]
        (line,) = axes.plot(mean.correlation + shift, mean.rel, marker="o", label=label)
        dots = paired[(paired.model == model) & (paired.weighting == weighting)]
        axes.scatter(dots.correlation + shift, dots.rel, s=9, alpha=0.45,
                     color=line.get_color())
    axes.set_yscale("log")
    axes.set(xlabel="task correlation",
             ylabel="test MSE / single-task's, same seed (log)",
             title="Below 1, sharing helps: geometric mean over seeds (line), each seed (dot)")
    axes.title.set_fontsize("medium")
    axes.legend(fontsize="small", ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


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


def census(size: str = "full", out: Path = RESULTS, path: str | None = None,
           progress: bool = True, command: str | None = None,
           weightings: Sequence[str] = ("equal",)) -> SuiteResult:
    """Run (or resume) the Census-Income suite; write its tables; return them."""
    from mtlzoo.data import census_income
    from mtlzoo.encoders import TabularEncoder

    command = command or f"mtlzoo.bench.quality.census({size!r}, weightings={weightings!r})"
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
    runs = run_grid(points, run, stem.with_name(stem.name + "_runs.csv"), progress=progress,
                    description=f"census ({size})",
                    results=("main_auc", "aux_auc", "best_epoch", "train_s"))
    summary = summarise_census(runs)
    summary.to_csv(stem.with_suffix(".csv"), index=False)
    lines = [
        f"# Census-Income: test AUC ({size})", "", stamp(command), "",
        "UCI Census-Income (KDD) as MMoE section 6.3 uses it (`mtlzoo.data.census_income`): "
        "group 1 = income > 50K (main) + never married; group 2 = education at least "
        "college (main) + never married. Adam (lr 1e-3, batch 1024), at most 10 epochs, "
        "early stopping on the validation AUC of the main task (patience 2), the weights of "
        f"the best epoch evaluated on the test split; {CENSUS_SEEDS[size]} seed(s). `best`: the "
        "run with the best main-task AUC (its auxiliary AUC beside it), `mean`: over seeds. "
        "Group 1 has the papers' rows beside ours (MMoE Table 1: best / mean of 400 runs; "
        "PLE Table 5: one figure), with ours minus theirs; MMoE Table 2 (group 2) is not in "
        "our reference notes, so group 2 stands alone.", "",
        markdown_table(summary, digits=4), "",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines))
    return SuiteResult(summary, [], stem.with_suffix(".md"))


def summarise_census(runs: pd.DataFrame) -> pd.DataFrame:
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
