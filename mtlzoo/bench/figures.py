"""The benchmarks' figures (matplotlib, optional: without it no figure is drawn)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


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
