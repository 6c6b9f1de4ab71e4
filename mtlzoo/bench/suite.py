"""What the quality suites (``synthetic``, ``census``) share: the architectures and their
sizes, the grid of (model, weighting, setting) points, and what a suite returns.

Both grids run every architecture under each weighting asked for (``equal`` by default, the
papers' plain sum of losses); the single-task baseline runs once, its tasks share nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

import mtlzoo
from mtlzoo.errors import MtlzooError

MODELS = ("single_task", "shared_bottom", "omoe", "mmoe", "cgc", "ple", "cross_stitch",
          "l2_constrained", "sluice", "mtan", "dselect_k", "esmm", "aitm")

# MMoE section 5.1: 8 experts of one 16-unit layer, towers of 8, a 113-unit shared bottom
# (about the experts' parameter count); CGC/PLE split the 8 experts as 4 shared + 2 per task.
# The second wave at about the same first-layer size: columns of 56 a task (as cross-stitch),
# MTAN's shared blocks of 64 (its attention adds per-task layers of 64), DSelect-k on MMoE's
# experts, ESMM on the shared bottom, AITM's towers of 56 a task.
MODEL_OPTIONS = {
    "single_task": {"hidden_dims": (113,)},
    "shared_bottom": {"bottom_dims": (113,)},
    "omoe": {"num_experts": 8, "expert_dims": (16,)},
    "mmoe": {"num_experts": 8, "expert_dims": (16,)},
    "cgc": {"num_shared_experts": 4, "num_task_experts": 2, "expert_dims": (16,)},
    "ple": {"num_levels": 2, "num_shared_experts": 4, "num_task_experts": 2,
            "expert_dims": (16,)},
    "cross_stitch": {"column_dims": (56,)},
    "l2_constrained": {"column_dims": (56,)},
    "sluice": {"column_dims": (56,)},
    "mtan": {"shared_dims": (64,)},
    "dselect_k": {"num_experts": 8, "expert_dims": (16,)},
    "esmm": {"bottom_dims": (113,)},
    "aitm": {"task_tower_dims": (56,)},
}
WIDTHS = ("hidden_dims", "bottom_dims", "expert_dims", "column_dims", "shared_dims",
          "task_tower_dims")


def model_options(model: str, scale: int = 1) -> dict:
    """``MODEL_OPTIONS[model]`` with every hidden width (experts, bottom, columns, the
    single-task networks) times ``scale``; the expert counts and towers stay."""
    return {key: tuple(scale * width for width in value) if key in WIDTHS else value
            for key, value in MODEL_OPTIONS[model].items()}


@dataclass(frozen=True)
class SuiteResult:
    """What a suite wrote: its summary table, the papers' claims checked (synthetic), and
    the paths of its report and figure (None where matplotlib is missing)."""

    summary: pd.DataFrame
    claims: list[str]
    report: Path
    figure: Path | None = None


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


def check_models(models: Sequence[str]) -> tuple[str, ...]:
    """The models as a tuple, each one of :data:`MODELS` (the suites' architectures), so
    that a bad name fails before a grid starts."""
    models = tuple(models)
    unknown = [name for name in models if name not in MODELS]
    if unknown or not models:
        raise MtlzooError(f"unknown model(s) {unknown or list(models)} for the quality suites; "
                          f"choose from {list(MODELS)}")
    return models


def grid_points(weightings: Sequence[str], settings: Sequence[dict],
                models: Sequence[str] = MODELS) -> list[dict]:
    """Every setting x every model of ``models`` (all of :data:`MODELS` by default), each
    model under every weighting but the single-task baseline, which runs once with
    ``equal``."""
    weightings = check_weightings(weightings)
    return [
        {"model": model, "weighting": weighting, **setting}
        for setting in settings for model in check_models(models)
        for weighting in (("equal",) if model == "single_task" else weightings)
    ]
