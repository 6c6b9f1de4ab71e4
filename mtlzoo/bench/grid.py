"""A grid of experiments, one CSV row per point, that resumes where it was interrupted."""

from __future__ import annotations

import csv
import io
import multiprocessing
import numbers
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import pandas as pd
import torch

from mtlzoo import _checks
from mtlzoo.bench.report import GridCount
from mtlzoo.errors import MtlzooError


def run_grid(
    points: Sequence[dict],
    run: Callable[[dict], dict],
    csv_path: str | Path,
    *,
    progress: bool = True,
    description: str = "grid",
    results: Sequence[str] = (),
    notes: Sequence[str] = (),
    workers: int = 1,
) -> pd.DataFrame:
    """Run ``run(point)`` for every point not already in ``csv_path`` and append its row
    (the point's settings, then the results) there as soon as it is done, so an
    interrupted grid loses at most the point it was on. Returns the rows of ``points``
    (rows of other points the file may hold, e.g. more seeds from an earlier run, are kept
    in the file but left out). How many of them this call ran and how many it resumed from
    the file is in the frame's ``attrs["grid"]``, a :class:`~mtlzoo.bench.report.GridCount`
    for the results' stamp.

    ``results`` names the columns ``run`` returns, each a number (or NaN), and ``notes``
    those it returns as free text (e.g. why a run could not be made); given, a file whose
    columns are not the settings and these is refused before anything runs.
    A file that cannot be resumed from (not UTF-8 CSV text, a row cut short or of the
    wrong number of fields, a numeric setting or a result that is not a number, the columns
    of another grid) is refused with an MtlzooError naming it; nothing is appended to it.

    ``workers`` > 1 runs that many points at once, each in its own process (spawned, one
    torch thread each, so on a few cores small models train side by side instead of
    splitting one step over threads); ``run`` must then be picklable (a module-level
    function, or a ``functools.partial`` of one). Rows are appended as points finish, in
    that order; a point that fails stops the grid, the rows done so far kept."""
    from tqdm import tqdm

    _checks.positive_int("workers", workers)
    csv_path = Path(csv_path)
    keys = list(points[0]) if points else []
    done = set()
    header = None
    if csv_path.exists() and (csv_path.is_dir() or csv_path.stat().st_size):
        previous = _read_runs(csv_path, keys, points, results, notes)
        header = list(previous.columns)
        done = {_key(row, keys) for row in previous[keys].to_dict("records")}
    todo = [point for point in points if _key(point, keys) not in done]
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(points), initial=len(points) - len(todo), desc=description,
               disable=None if progress else True)
    for point, result in _results(run, todo, workers, bar):
        row = {**point, **result}
        if header is not None and sorted(row) != sorted(header):
            raise MtlzooError(
                f"{csv_path} has the columns {header}, but this grid's rows have {list(row)} "
                f"(the row of {point} was not written: {row}); move the file away to start "
                "the grid afresh"
            )
        with csv_path.open("a", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=header or list(row))
            if header is None:
                writer.writeheader()
                header = list(row)
            writer.writerow(row)
        bar.update()
    bar.close()
    rows = _read_runs(csv_path, keys, points, results, notes)
    wanted = {_key(point, keys) for point in points}
    rows = rows[[_key(row, keys) in wanted for row in rows[keys].to_dict("records")]]
    rows.attrs["grid"] = GridCount(ran=len(todo), resumed=len(points) - len(todo),
                                   runs_file=csv_path.name)
    return rows


def _results(run: Callable[[dict], dict], points: Sequence[dict], workers: int, bar
             ) -> Iterator[tuple[dict, dict]]:
    """``(point, run(point))`` for every point: in order here, or as they finish in
    ``workers`` processes."""
    if workers == 1 or len(points) < 2:
        for point in points:
            bar.set_postfix_str(" ".join(f"{k}={v}" for k, v in point.items()))
            yield point, run(point)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(points)), mp_context=context,
                             initializer=_start_worker, initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(run, point): point for point in points}
        try:
            for future in as_completed(futures):
                point = futures[future]
                bar.set_postfix_str(" ".join(f"{k}={v}" for k, v in point.items()))
                yield point, future.result()
        finally:
            for future in futures:
                future.cancel()


def _start_worker(parent: int) -> None:
    """A worker's set-up: one torch thread, and an end of its own when the grid's process
    is gone (killed, not interrupted), instead of waiting on for work forever."""
    torch.set_num_threads(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


AFRESH = "move the file away to start the grid afresh"


def _read_runs(csv_path: Path, keys: list[str], points: Sequence[dict],
               results: Sequence[str], notes: Sequence[str] = ()) -> pd.DataFrame:
    """The rows of a runs file, checked field by field before pandas reads them."""
    try:
        text = csv_path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise MtlzooError(f"cannot resume from {csv_path}: byte {error.start} is not UTF-8 "
                          f"text (a damaged or a binary file?); {AFRESH}") from error
    except OSError as error:
        raise MtlzooError(f"cannot resume from {csv_path}: {error.strerror or error}; "
                          f"{AFRESH}") from error
    reader = csv.reader(io.StringIO(text, newline=""))
    lines = []  # (number of the row's first line, fields); blank lines left out, as pandas does
    start = 1
    try:
        for fields in reader:
            if any(field.strip() for field in fields):
                lines.append((start, fields))
            start = reader.line_num + 1
    except csv.Error as error:
        raise MtlzooError(f"cannot resume from {csv_path}: line {start} is not CSV "
                          f"({error}); {AFRESH}") from error
    if not lines:
        raise MtlzooError(f"cannot resume from {csv_path}: it holds no header line, only "
                          f"blank lines; {AFRESH}")
    number, fields = lines[-1]
    if text.count('"') % 2:
        raise MtlzooError(f"cannot resume from {csv_path}: line {number} opens a quote that is "
                          f"never closed ({_shown(fields)}); correct or delete that line to "
                          f"resume, or {AFRESH}")
    if not text.endswith("\n"):
        raise MtlzooError(
            f"cannot resume from {csv_path}: its last line (line {number}, {_shown(fields)}) "
            f"is cut short (the grid stopped while writing it?); delete that line to resume, "
            f"or {AFRESH}"
        )
    (_, header), rows = lines[0], lines[1:]
    for number, fields in rows:
        if len(fields) != len(header):
            raise MtlzooError(
                f"cannot resume from {csv_path}: line {number} has {len(fields)} field(s) "
                f"where the header has {len(header)} ({_shown(fields)}); delete that line "
                f"to resume, or {AFRESH}"
            )
    missing = [key for key in keys if key not in header]
    if missing:
        raise MtlzooError(
            f"{csv_path} was written by a grid without the setting(s) {missing}; move it "
            "away (or add the column) to resume"
        )
    if results and sorted(header) != sorted([*keys, *results, *notes]):
        raise MtlzooError(
            f"{csv_path} has the columns {header}, not this grid's "
            f"{[*keys, *results, *notes]}; {AFRESH}"
        )
    numeric = [key for key in keys if all(
        isinstance(point[key], numbers.Real) and not isinstance(point[key], bool)
        for point in points)]
    for column in [*numeric, *results]:
        at = header.index(column)
        for number, fields in rows:
            value = fields[at]
            if column in results and not value.strip():
                continue  # a result may be missing (NaN); a setting may not
            try:
                float(value)
            except ValueError as error:
                raise MtlzooError(
                    f"cannot resume from {csv_path}: line {number}, column {column!r} holds "
                    f"{value!r}, not a number; correct or delete that line to resume, or "
                    f"{AFRESH}"
                ) from error
    try:
        frame = pd.read_csv(io.StringIO(text), dtype={n: str for n in notes if n in header})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as error:
        raise MtlzooError(f"cannot resume from {csv_path}: {str(error).strip()}; "
                          f"{AFRESH}") from error
    for note in notes:  # a note stays text, "" where there is none (not NaN)
        if note in frame:
            frame[note] = frame[note].fillna("")
    return frame


def _shown(fields: list[str], limit: int = 60) -> str:
    """A row as it stood in the file, cut to ``limit`` characters, quoted."""
    line = ",".join(fields)
    return repr(line if len(line) <= limit else line[:limit] + "...")


def _key(row: dict, keys: list[str]) -> tuple:
    return tuple(str(row[k]) for k in keys)
