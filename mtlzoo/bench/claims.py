"""The MMoE and PLE papers' claims on the synthetic tasks, checked against a summary.

Each claim is stated with what our numbers say, and "holds" or "does NOT hold" is computed
from them, never written in. Every comparison is of the test MSE relative to single-task's
on the same data and seed (the ``rel`` columns of :func:`mtlzoo.bench.synthetic.summarise`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def check_claims(summary: pd.DataFrame) -> list[str]:
    """The claims for each weighting of ``summary`` (one row per model, weighting and
    correlation), each prefixed with ``[weighting]`` when there are several; every
    weighting is compared with the same single-task baseline."""
    weightings = list(dict.fromkeys(summary.weighting[summary.model != "single_task"]))
    claims = []
    for weighting in weightings:
        part = summary[(summary.weighting == weighting) | (summary.model == "single_task")]
        prefix = f"[{weighting}] " if len(weightings) > 1 else ""
        claims += [prefix + claim for claim in _one_weighting(part)]
    return claims


def _one_weighting(summary: pd.DataFrame) -> list[str]:
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


def why_not(summary: pd.DataFrame, rows: int, dim: int) -> str:
    """Why a claim may not hold at this size, in numbers: how far apart the models the
    claims compare are (MMoE, OMoE, shared-bottom: their relative MSE, geometric mean over
    correlations) against the standard error of one model's relative MSE at one
    correlation (its std over seeds over the square root of the seeds, mean over models)."""
    equal = summary[summary.weighting == "equal"] if "equal" in set(summary.weighting) \
        else summary
    rel = np.exp(np.log(equal.set_index("model").rel).groupby("model").mean())
    compared = rel[["mmoe", "omoe", "shared_bottom"]]
    multi = equal[equal.model != "single_task"]
    error = (multi.rel_std / np.sqrt(multi.seeds)).mean()
    seeds = int(equal.seeds.max())
    noise = ("not measured with one seed" if error != error else f"about {error:.3f}")
    return (f"Where a claim does not hold here, weigh it against the size: {rows:,} rows of "
            f"{dim} features and {seeds} seed(s) per correlation (the PLE paper: 1.4 million "
            f"rows; MMoE Fig. 4 averages 200 runs). MMoE, OMoE and shared-bottom lie "
            f"{compared.max() - compared.min():.3f} apart in relative MSE; the standard "
            f"error of one model's relative MSE at one correlation is {noise}.")
