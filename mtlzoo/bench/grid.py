"""A grid of experiments, one CSV row per point, that resumes where it was interrupted."""

from __future__ import annotations

import csv
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import torch

from mtlzoo.errors import MtlzooError


def run_grid(
    points: Sequence[dict],
    run: Callable[[dict], dict],
    csv_path: str | Path,
    *,
    progress: bool = True,
    description: str = "grid",
) -> pd.DataFrame:
    """Run ``run(point)`` for every point not already in ``csv_path`` and append its row
    (the point's settings, then the results) there as soon as it is done, so an
    interrupted grid loses at most the point it was on. Returns the rows of ``points``
    (rows of other points the file may hold, e.g. more seeds from an earlier run, are kept
    in the file but left out)."""
    from tqdm import tqdm

    csv_path = Path(csv_path)
    keys = list(points[0]) if points else []
    done = set()
    if csv_path.exists() and csv_path.stat().st_size:
        previous = pd.read_csv(csv_path)
        missing = [key for key in keys if key not in previous.columns]
        if missing:
            raise MtlzooError(
                f"{csv_path} was written by a grid without the setting(s) {missing}; move it "
                "away (or add the column) to resume"
            )
        done = {_key(row, keys) for row in previous[keys].to_dict("records")}
    todo = [point for point in points if _key(point, keys) not in done]
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(points), initial=len(points) - len(todo), desc=description,
               disable=None if progress else True)
    for point in todo:
        bar.set_postfix_str(" ".join(f"{k}={v}" for k, v in point.items()))
        row = {**point, **run(point)}
        new = not csv_path.exists() or not csv_path.stat().st_size
        with csv_path.open("a", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        bar.update()
    bar.close()
    rows = pd.read_csv(csv_path)
    wanted = {_key(point, keys) for point in points}
    return rows[[_key(row, keys) in wanted for row in rows[keys].to_dict("records")]]


def _key(row: dict, keys: list[str]) -> tuple:
    return tuple(str(row[k]) for k in keys)


def stamp(command: str) -> str:
    """Date, torch version, machine and the exact command, for the head of a results file."""
    machine = f"{platform.machine()} {platform.processor() or ''}".strip()
    return (
        f"{time.strftime('%Y-%m-%d %H:%M %Z')} | torch {torch.__version__} | {machine}, "
        f"{torch.get_num_threads()} threads | Python {platform.python_version()}\n"
        f"Command: `{command}`"
    )
