"""How every benchmark writes its results: one folder convention, one stamp, one layout.

Every entry point (``mtlzoo demo``, ``mtlzoo bench ...``, ``benchmarks/*.py``) writes under
:data:`RESULTS`, ``./results`` relative to where it runs, unless given ``--out``;
``--out benchmarks/results`` refreshes the committed tables. A result is a stem (e.g.
``results/quality_synthetic_full``) with its table as ``<stem>.csv``, the report as
``<stem>.md`` and, where there are several runs per row, the runs as ``<stem>_runs.csv``.
Each report opens with :func:`stamp`: when, on what, by which command, and for a grid how
many of its points that command ran.
"""

from __future__ import annotations

import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    import pandas as pd

RESULTS = Path("results")


@dataclass(frozen=True)
class GridCount:
    """Of a grid's points, how many the command ran and how many it read back from the runs
    file (written by an earlier, maybe interrupted, command)."""

    ran: int
    resumed: int
    runs_file: str = "the runs file"

    def __str__(self) -> str:
        total = self.ran + self.resumed
        if not self.resumed:
            return f"Grid: all {_count(total, 'point')} run by this command."
        if not self.ran:
            return (f"Grid: none of its {_count(total, 'point')} run by this command, all "
                    f"resumed from {self.runs_file} (the tables summarise those rows).")
        return (f"Grid: {self.ran} of its {_count(total, 'point')} run by this command, "
                f"{self.resumed} resumed from {self.runs_file}.")


def stamp(command: str, device: str = "cpu", grid: GridCount | None = None) -> str:
    """Date, torch version, machine (the GPU's name on ``cuda``), thread count, Python
    version and the exact command, for the head of a results file; with ``grid``, how many
    of the grid's points this command ran and how many it resumed."""
    if device.startswith("cuda"):
        machine = torch.cuda.get_device_name(device)
    else:
        machine = f"{platform.machine()} {platform.processor() or ''}".strip()
    lines = [
        f"{time.strftime('%Y-%m-%d %H:%M %Z')} | torch {torch.__version__} | {machine}, "
        f"{_count(torch.get_num_threads(), 'thread')} | Python {platform.python_version()}",
        f"Command: `{command}`",
    ]
    if grid is not None:
        lines.append(str(grid))
    return "\n".join(lines)


def script_command(argv: Sequence[str] | None = None) -> str:
    """The command line of a script run as ``python <script> <argv>`` (default: this
    process's own arguments)."""
    argv = sys.argv[1:] if argv is None else argv
    return "python " + shlex.join([sys.argv[0], *argv])


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def markdown_table(table: pd.DataFrame, digits: int = 2) -> str:
    """A GitHub-flavoured Markdown table (pandas' own needs the optional tabulate); NaN
    shows as an empty cell."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return "" if value != value else f"{value:.{digits}f}"
        return str(value)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |",
             "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(False)]
    return "\n".join(lines)


def markdown_report(title: str, stamp: str, about: Sequence[str], table: pd.DataFrame,
                    digits: int = 2, after: Sequence[str] = ()) -> str:
    """A results file: the title, the stamp, paragraphs ``about`` the set-up, the table and
    the lines ``after`` it, blocks separated by blank lines."""
    blocks = [f"# {title}", stamp, *about, markdown_table(table, digits)]
    text = "\n\n".join(blocks) + "\n"
    return text + ("\n" + "\n".join(after) + "\n" if after else "")


def runs_path(stem: Path) -> Path:
    """Where the runs behind the result ``stem`` go: ``<stem>_runs.csv``."""
    return stem.with_name(stem.name + "_runs.csv")


def write_result(stem: Path, table: pd.DataFrame, markdown: str,
                 runs: pd.DataFrame | None = None) -> Path:
    """Write ``<stem>.csv`` (the table), ``<stem>.md`` (the report) and, given ``runs``,
    ``<stem>_runs.csv``; make the folder; return the report's path."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    if runs is not None:
        runs.to_csv(runs_path(stem), index=False)
    table.to_csv(stem.with_suffix(".csv"), index=False)
    report = stem.with_suffix(".md")
    report.write_text(markdown, encoding="utf-8")
    return report
