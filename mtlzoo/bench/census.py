"""The Census-Income suite: MMoE Tables 1-2, PLE Table 5.

UCI Census-Income, both task groups, AUC of the test split at the epoch of best validation
AUC of the main task (early stopping), best and mean over seeds, the papers' rows beside
ours.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import pandas as pd
import torch

import mtlzoo
from mtlzoo import _checks
from mtlzoo.bench.grid import run_grid
from mtlzoo.bench.report import RESULTS, markdown_report, runs_path, stamp, write_result
from mtlzoo.bench.suite import (
    MODEL_OPTIONS,
    MODELS,
    SuiteResult,
    check_models,
    check_weightings,
    grid_points,
)
from mtlzoo.errors import MtlzooError
from mtlzoo.layers.stacked import NORMS

# MMoE Table 1 (group 1): AUC of the main task and of marital status, best run / mean of 400
# runs; PLE Table 5 (group 1, one figure per task). MMoE Table 2 (group 2) is not in our
# reference notes (../shared/REFERENCES.md), so group 2 has no paper rows.
CENSUS_PAPER = {
    ("MMoE Table 1", 1): {
        "single_task": (0.9398, 0.9337, 0.9933, 0.9922),
        "shared_bottom": (0.9361, 0.9295, 0.9915, 0.9921),
        "l2_constrained": (0.9389, 0.9359, 0.9922, 0.9918),
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
# the budget of every run, ours and the peers': Adam, batches of 1024, at most 10 epochs,
# early stopping on the main task's validation AUC after 2 epochs without a better one
BUDGET = {"lr": 1e-3, "batch_size": 1024, "epochs": 10, "patience": 2}
RESULTS_COLUMNS = ("main_auc", "aux_auc", "best_epoch", "train_s")
ABOUT = (
    "UCI Census-Income (KDD) as MMoE section 6.3 uses it (`mtlzoo.data.census_income`): "
    "group 1 = income > 50K (main) + never married; group 2 = education at least "
    "college (main) + never married. Adam (lr 1e-3, batch 1024), at most 10 epochs, "
    "early stopping on the validation AUC of the main task (patience 2), the weights of "
    "the best epoch evaluated on the test split; {seeds} seed(s)."
)


def fit_and_score(model: mtlzoo.MultiTaskModel, data, weighting: str, seed: int,
                  **budget) -> dict:
    """Train ``model`` on the census ``data`` as every run of the suite is trained
    (:data:`BUDGET`, which ``budget`` may override for a quick test) and score it on the
    test split: ``main_auc``, ``aux_auc``, ``best_epoch``, ``train_s`` (seconds from the
    first step to the end of the test evaluation)."""
    budget = {**BUDGET, **budget}
    main, aux = (task.name for task in data.tasks)
    trainer = mtlzoo.Trainer(model, weighting=weighting, lr=budget["lr"],
                             batch_size=budget["batch_size"], seed=seed,
                             input_key=("categorical", "numeric"), progress=False)
    start = time.perf_counter()
    trainer.fit(data.splits["train"], eval=data.splits["validation"],
                epochs=budget["epochs"], early_stopping=f"{main}/auc",
                patience=budget["patience"])
    test = trainer.evaluate(data.splits["test"])
    return {"main_auc": float(test.loc[main, "auc"]), "aux_auc": float(test.loc[aux, "auc"]),
            "best_epoch": trainer.best_epoch, "train_s": time.perf_counter() - start}


def run_suite(size: str = "full", out: Path = RESULTS, path: str | None = None,
              progress: bool = True, command: str | None = None,
              weightings: Sequence[str] = ("equal",), peers: bool | Sequence[str] = False,
              models: Sequence[str] = MODELS, seeds: int | None = None,
              norm: str | None = None, gate_norm: str | None = None) -> SuiteResult:
    """Run (or resume) the Census-Income suite; write its tables; return them. With
    ``peers``, also the peers' MMoE, PLE and shared-bottom on the same data, budget, seeds
    and evaluation (:mod:`mtlzoo.bench.peer_census`), written beside ours as
    ``quality_census_<size>_peers.*``; ``True`` runs every peer, a sequence of names
    (``"torch-rechub"``, ``"deepctr-torch"``) those; the peers missing fail before anything
    runs. ``models`` runs a subset of :data:`~mtlzoo.bench.suite.MODELS` (and of the peers'
    families), ``seeds`` seeds 0..seeds-1 instead of the size's count. ``norm`` ("batch" or
    "layer") builds every one of our models with that ``norm=`` option (the peers are as
    they are); the tables are then ``quality_census_norm_<norm>_<size>[_peers].*``, and the
    reports say so. ``gate_norm`` likewise builds the softmax-gated models (MMoE, OMoE, CGC,
    PLE) with that ``gate_norm=`` (their gates' logits normalised, as torch-rechub's are);
    the tables' names then hold ``gate_norm_<gate_norm>`` after the norm."""
    from mtlzoo.data import census_income
    from mtlzoo.encoders import TabularEncoder

    models = check_models(models)
    norm = _checks.choice("norm", norm, NORMS)
    gate_norm = _checks.choice("gate_norm", gate_norm, NORMS)
    seeds = CENSUS_SEEDS[size] if seeds is None else _checks.positive_int("seeds", seeds)
    if peers:  # the peers missing fail here, before anything runs
        from mtlzoo.bench import peer_census
        from mtlzoo.bench.peers import FAMILIES, PEERS, require_peers

        peer_names = PEERS if peers is True else tuple(peers)
        unknown = [name for name in peer_names if name not in PEERS]
        if unknown or not peer_names:
            raise MtlzooError(f"unknown peer(s) {unknown or list(peer_names)}; choose from "
                              f"{list(PEERS)}")
        versions = require_peers()
    command = command or f"mtlzoo.bench.census.run_suite({size!r}, weightings={weightings!r})"
    load = cache(lambda group: census_income(path, task_group=group, seed=0))
    settings = [{"task_group": group, "seed": seed}
                for group in (1, 2) for seed in range(seeds)]
    norm_options = {} if norm is None else {"norm": norm}
    name = "_".join(["quality_census", *([f"norm_{norm}"] if norm else []),
                     *([f"gate_norm_{gate_norm}"] if gate_norm else []), size])
    norm_about = "" if norm is None else (
        f" Every one of our models is built with norm={norm!r}: a {norm} normalisation after "
        "every linear layer of its MLPs (experts, bottom, columns, towers), before the "
        "activation, as torch-rechub's MLP does with BatchNorm1d."
    )
    if gate_norm is not None:
        norm_about += (
            f" The softmax-gated models (MMoE, OMoE, CGC, PLE) are built with "
            f"gate_norm={gate_norm!r}: their gates' logits pass a {gate_norm} normalisation "
            "before the softmax, as torch-rechub's gates (Linear, BatchNorm1d, softmax) do."
        )

    def options(model: str) -> dict:
        """The suite's options for ``model``, with the norms it takes."""
        takes = inspect.signature(mtlzoo.get_model_builder(model)).parameters
        return {**MODEL_OPTIONS[model], **norm_options,
                **({"gate_norm": gate_norm} if gate_norm and "gate_norm" in takes else {})}

    def run(point: dict) -> dict:
        data = load(point["task_group"])
        torch.manual_seed(point["seed"])
        encoder = TabularEncoder(data.cardinalities, len(data.numeric_columns), embedding_dim=4)
        model = mtlzoo.create_model(point["model"], tasks=data.tasks, encoder=encoder,
                                    tower_dims=(8,), **options(point["model"]))
        return fit_and_score(model, data, point["weighting"], point["seed"])

    stem = out / name
    runs = run_grid(grid_points(weightings, settings, models), run, runs_path(stem),
                    progress=progress, description=f"census ({size})", results=RESULTS_COLUMNS)
    summary = summarise(runs)
    about = ABOUT.format(seeds=seeds) + norm_about + (
        " `best`: the run with the best main-task AUC (its auxiliary AUC beside it), "
        "`mean`: over seeds. Group 1 has the papers' rows beside ours (MMoE Table 1: best / "
        "mean of 400 runs; PLE Table 5: one figure), with ours minus theirs; MMoE Table 2 "
        "(group 2) is not in our reference notes, so group 2 stands alone."
    )
    markdown = markdown_report(f"Census-Income: test AUC ({size})",
                               stamp(command, grid=runs.attrs.get("grid")), [about], summary,
                               digits=4)
    result = SuiteResult(summary, [], write_result(stem, summary, markdown))
    families = [family for family in FAMILIES if family in models] if peers else []
    if not families:
        return result

    def run_peer(point: dict) -> dict:
        return peer_census.run_peer(point["implementation"], point["model"],
                                    load(point["task_group"]), point["seed"],
                                    weighting=point["weighting"])

    peer_points = [{"implementation": implementation, "model": family, "weighting": weighting,
                    **setting}
                   for setting in settings for family in families
                   for implementation in peer_names
                   for weighting in check_weightings(weightings)]
    stem = out / f"{name}_peers"
    peer_runs = run_grid(peer_points, run_peer, runs_path(stem), progress=progress,
                         description=f"census peers ({size})", results=RESULTS_COLUMNS,
                         notes=("note",))
    ours = runs[runs.model.isin(FAMILIES)].assign(
        implementation="ours", note="")
    table = summarise_peers(pd.concat([ours, peer_runs], ignore_index=True))
    about = ABOUT.format(seeds=seeds) + norm_about + (
        f" Our {', '.join(families)} (the rows of `{name}.md`) beside "
        f"{' and '.join(peer_names)}'s: each peer's architecture behind our "
        "TabularEncoder (the same features and embeddings of width 4), trained by our Trainer "
        "and scored by our evaluation (`mtlzoo.bench.peer_census`: the peers' probabilities "
        "become logits for our loss). `main_best`/`main_mean`: the main task's test AUC, "
        "best and mean over seeds; `vs_ours`: a peer's mean minus ours, same group and "
        "family; `train_s`: a run's wall seconds as it happened (runs made at other times, "
        "under other loads: not a speed comparison, which `mtlzoo bench speed --peers` "
        "makes); `note`: why a peer could not run a configuration."
    )
    markdown = markdown_report(
        f"Census-Income: ours beside the peers ({size})",
        stamp(command, grid=peer_runs.attrs.get("grid")),
        [about, "Peers: " + ", ".join(f"{peer} {version}" for peer, version in versions.items()
                                      if peer in peer_names) + "."], table, digits=4)
    return SuiteResult(table, [], write_result(stem, table, markdown))


def summarise_peers(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (group, family, implementation): the main task's test AUC best and mean over
    seeds, the auxiliary task's mean, the mean seconds of a run, the peer's mean minus
    ours, and the note of a run that could not be made."""
    rows = []
    for (group, family, weighting), part in runs.groupby(["task_group", "model", "weighting"],
                                                          sort=False):
        ours = part[part.implementation == "ours"].main_auc.mean()
        for implementation, runs_of in part.groupby("implementation", sort=False):
            notes = [note for note in runs_of.note if note]
            rows.append({
                "task_group": group, "model": family, "weighting": weighting,
                "implementation": implementation, "seeds": len(runs_of),
                "main_best": runs_of.main_auc.max(), "main_mean": runs_of.main_auc.mean(),
                "aux_mean": runs_of.aux_auc.mean(),
                "vs_ours": runs_of.main_auc.mean() - ours,
                "train_s": runs_of.train_s.mean(), "note": notes[0] if notes else "",
            })
    return pd.DataFrame(rows)


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
