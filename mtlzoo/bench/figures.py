"""The benchmarks' figures (matplotlib, optional: without it no figure is drawn)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mtlzoo.errors import MtlzooError


def synthetic_figure(summary: pd.DataFrame, paired: pd.DataFrame, path: Path) -> Path | None:
    """Test MSE relative to single-task on the same seed against correlation, log scale: one
    line per model (and weighting, where not ``equal``) through the geometric mean over
    seeds (``summary``'s ``rel``), every seed a dot beside it (``paired``'s ``rel``, one row
    a run), single-task the line at 1. Returns ``path``, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
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


def expert_load_figure(diagnostics: pd.DataFrame, path: Path, step: int | None = None
                       ) -> Path | None:
    """The expert load per task at one logged step of ``trainer.diagnostics`` (``step``;
    None: the last): one panel per gate (``gates``; PLE's ``level1``, ...), the experts
    along the x axis, side by side a bar per gate row (a task, or ``shared``) of its mean
    weight on that expert over the step's batch. Returns ``path``, or None without
    matplotlib. A frame with no ``expert load/...`` column (a model without gates) or
    without ``step`` raises ``MtlzooError``."""
    if diagnostics.empty or "step" not in diagnostics:
        raise MtlzooError("the diagnostics frame has no logged step; train with "
                          "Trainer(diagnostics_every=N) first")
    rows = diagnostics[diagnostics.step == (diagnostics.step.iloc[-1] if step is None else step)]
    if rows.empty:
        raise MtlzooError(f"the diagnostics frame has no row of step {step}; its steps are "
                          f"{diagnostics.step.tolist()}")
    loads: dict[str, dict[str, dict[int, float]]] = {}  # gate -> row -> expert -> load
    for column, value in rows.iloc[-1].items():
        if isinstance(column, str) and column.startswith("expert load/") and value == value:
            where, expert = column[len("expert load/"):].rsplit("/", 1)
            gate, row = where.split("/", 1)
            loads.setdefault(gate, {}).setdefault(row, {})[int(expert)] = float(value)
    if not loads:
        raise MtlzooError("the diagnostics frame has no 'expert load/...' column: the model "
                          "has no gates")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, panels = plt.subplots(len(loads), 1, figsize=(7.2, 2.6 * len(loads)), squeeze=False)
    for axes, (gate, by_row) in zip(panels[:, 0], loads.items(), strict=True):
        width = 0.8 / len(by_row)
        for index, (row, by_expert) in enumerate(by_row.items()):
            experts = sorted(by_expert)
            axes.bar([e + (index - (len(by_row) - 1) / 2) * width for e in experts],
                     [by_expert[e] for e in experts], width=width, label=row)
        axes.set(ylabel="mean gate weight", title=f"{gate}: expert load per task")
        axes.set_xticks(sorted({e for by_expert in by_row.values() for e in by_expert}))
        axes.title.set_fontsize("medium")
        axes.legend(fontsize="small", ncol=min(len(by_row), 4))
    panels[-1, 0].set_xlabel(f"expert (step {int(rows.step.iloc[-1])})")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
