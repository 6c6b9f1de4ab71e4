"""Bad files on disk: the census data files and a grid's resumable runs file. Each ends in one
MtlzooError that names the file, says what is wrong (and, for a runs file, what to do) and
keeps the underlying error as its cause; nothing is written to a damaged runs file, and a
damaged file never reaches the user as a raw pandas, gzip or zlib traceback.

Every test writes its own small files in tmp_path. tests/test_census_income.py covers the
census errors it already had (column counts, labels, a non-numeric age, an empty file).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pandas as pd
import pytest

from mtlzoo import MtlzooError, cli
from mtlzoo.bench.grid import run_grid
from mtlzoo.data.census_income import census_income

# --- census files ---------------------------------------------------------------------------

TRAIN, TEST = "census-income.data", "census-income.test"
NUMERIC = {0, 5, 16, 17, 18, 24, 30, 39}  # the numeric columns and the instance weight


def census_rows(n: int, start: int = 0) -> bytes:
    """``n`` valid 42-column rows in the UCI layout (", " between values, no header)."""
    lines = []
    for i in range(start, start + n):
        row = [str(20 + i) if c in NUMERIC else f"value {(i + c) % 3}" for c in range(41)]
        row.append("50000+." if i % 4 == 0 else "- 50000.")
        lines.append(", ".join(row) + "\n")
    return "".join(lines).encode()


def census_folder(tmp_path: Path, train: bytes | None = None, test: bytes | None = None,
                  gz: bool = False) -> tuple[Path, Path, Path]:
    """A folder with a good train/test pair, either file replaced by the bytes given;
    ``gz``: the ``.gz`` names, good files gzipped."""
    folder = tmp_path / "census"
    folder.mkdir(parents=True)
    suffix = ".gz" if gz else ""
    paths = (folder / (TRAIN + suffix), folder / (TEST + suffix))
    for path, content, good in zip(paths, (train, test), (census_rows(12), census_rows(6, 50)),
                                   strict=True):
        if content is None:
            content = gzip.compress(good) if gz else good
        path.write_bytes(content)
    return folder, *paths


def census_error(folder: Path, file: Path) -> tuple[MtlzooError, str]:
    """The loader's error, checked to name ``file``, and its message less the file's name
    (the test's folder may hold any word the test looks for)."""
    with pytest.raises(MtlzooError) as caught:
        census_income(folder)
    message = str(caught.value)
    assert repr(str(file)) in message, message
    return caught.value, message.replace(str(file), "<file>").replace(str(folder), "<folder>")


def test_good_census_files_load(tmp_path):  # the helpers make files the loader accepts
    for gz in (False, True):
        folder, _, _ = census_folder(tmp_path / str(gz), gz=gz)
        splits = census_income(folder).splits
        assert [len(splits[name]) for name in ("train", "validation", "test")] == [12, 3, 3]


GZIPPED = gzip.compress(census_rows(6, 50))


@pytest.mark.parametrize("content, cause", [
    (b"no gzip here", gzip.BadGzipFile),  # was: BadGzipFile "Not a gzipped file (b'no')"
    (GZIPPED[: len(GZIPPED) // 2], EOFError),  # truncated; was: a raw EOFError
    (GZIPPED[:-8] + b"\0" * 8, gzip.BadGzipFile),  # CRC and size wrong
    (GZIPPED[:10] + b"\xff" * 10 + GZIPPED[20:], Exception),  # the deflate stream damaged
], ids=["not-gzip", "truncated", "bad-crc", "bad-deflate"])
def test_damaged_gzip_file_is_named(tmp_path, content, cause):
    folder, _, test = census_folder(tmp_path, test=content, gz=True)
    error, message = census_error(folder, test)
    assert "gzip" in message
    assert isinstance(error.__cause__, cause)


def test_damaged_gzip_file_ends_in_one_line_on_the_command_line(tmp_path, capsys):
    # a truncated .gz raised EOFError, which the command line did not turn into one line
    folder, train, _ = census_folder(tmp_path, train=GZIPPED[:40], gz=True)
    argv = ["bench", "quality", "--suite", "census", "--size", "demo", "--census-path",
            str(folder), "--out", str(tmp_path / "out"), "--quiet"]
    assert cli.main(argv) == 1
    lines = capsys.readouterr().err.splitlines()
    assert "Traceback" not in "\n".join(lines)
    assert lines[-1].startswith("mtlzoo: error: ") and str(train) in lines[-1]


def test_gzipped_file_under_a_plain_name_says_so(tmp_path):
    folder, train, _ = census_folder(tmp_path, train=gzip.compress(census_rows(12)))
    error, message = census_error(folder, train)
    assert "gzip" in message and ".gz" in message
    assert isinstance(error.__cause__, UnicodeDecodeError)


@pytest.mark.parametrize("content", [
    census_rows(12).replace(b"value 1", b"valu\xe9 1"),  # Latin-1, not UTF-8
    census_rows(12).decode().encode("utf-16"),
    bytes(range(256)) * 8,  # binary junk
], ids=["latin-1", "utf-16", "binary"])
def test_bytes_that_are_not_utf8_text(tmp_path, content):
    folder, train, _ = census_folder(tmp_path, train=content)
    error, message = census_error(folder, train)
    assert "UTF-8" in message or "42-column" in message
    assert error.__cause__ is not None  # was: raised "from None"


@pytest.mark.parametrize("content, problem", [
    (census_rows(3)[:-1] + b", extra\n" + census_rows(3), r"42-column"),  # a long row
    (census_rows(3) + b'"unclosed, 1\n', r"42-column"),
    (b"", r"empty"),
    (b"\n  \n\n", r"empty"),
], ids=["long-row", "unclosed-quote", "empty", "blank-lines"])
def test_unparsable_csv_keeps_the_cause(tmp_path, content, problem):
    folder, _, test = census_folder(tmp_path, test=content)
    error, message = census_error(folder, test)
    assert problem in message
    assert isinstance(error.__cause__, (pd.errors.ParserError, pd.errors.EmptyDataError))


def test_a_header_line_is_named_as_one(tmp_path):
    header = ", ".join(f"column {c}" for c in range(41)) + ", income_label\n"
    folder, train, _ = census_folder(tmp_path, train=header.encode() + census_rows(12))
    _, message = census_error(folder, train)
    assert "row 1" in message and "header" in message
    folder, _, test = census_folder(tmp_path / "only", test=header.encode())
    assert "header" in census_error(folder, test)[1]


def test_a_test_file_too_short_to_split(tmp_path):
    # one row left the validation split empty (no error until training evaluated nothing)
    folder, _, test = census_folder(tmp_path, test=census_rows(1, 50))
    _, message = census_error(folder, test)
    assert "1 row" in message and "at least 2" in message
    folder, _, _ = census_folder(tmp_path / "two", test=census_rows(2, 50))
    splits = census_income(folder).splits
    assert len(splits["validation"]) == len(splits["test"]) == 1


@pytest.mark.parametrize("which", ["train", "test", "both"])
def test_a_folder_where_a_file_is_expected(tmp_path, which):
    # was: "... is missing beside ..." (or "holds none of ...") for a file that is there
    folder = tmp_path / "census"
    folder.mkdir()
    for name in (TRAIN, TEST):
        if which in ("both", "train" if name == TRAIN else "test"):
            (folder / name).mkdir()
        else:
            (folder / name).write_bytes(census_rows(6))
    named = folder / (TRAIN if which != "test" else TEST)
    assert "is a folder, not a file" in census_error(folder, named)[1]


def test_an_unreadable_file(tmp_path, monkeypatch):
    folder, train, _ = census_folder(tmp_path)
    train.chmod(0)
    if os.access(train, os.R_OK):  # root reads anything: make the read fail instead
        def refuse(path, *args, **kwargs):
            raise PermissionError(13, "Permission denied", str(path))

        monkeypatch.setattr(pd, "read_csv", refuse)
    try:
        error, message = census_error(folder, train)
    finally:
        train.chmod(0o644)
    assert "Permission denied" in message
    assert isinstance(error.__cause__, PermissionError)


# --- a grid's runs file ---------------------------------------------------------------------

POINTS = [{"model": "m", "seed": seed} for seed in range(3)]
GOOD_RUNS = "model,seed,score,t\r\nm,0,0,0.5\r\nm,1,10,0.5\r\n"


class Runner:
    def __init__(self):
        self.calls = []

    def __call__(self, point: dict) -> dict:
        self.calls.append(point["seed"])
        return {"score": point["seed"] * 10, "t": 0.5}


def runs_file(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "x_runs.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return path


def refused(path: Path, **kwargs) -> tuple[MtlzooError, str]:
    """run_grid's error on ``path``: it names the file and what to do, nothing ran and the
    file is as it was; and its message less the file's name."""
    before = path.read_bytes() if path.is_file() else None
    runner = Runner()
    with pytest.raises(MtlzooError) as caught:
        run_grid(POINTS, runner, path, progress=False, **kwargs)
    message = str(caught.value)
    assert str(path) in message, message
    message = message.replace(str(path), "<file>")
    assert "move" in message, message
    assert runner.calls == []
    if before is not None:
        assert path.read_bytes() == before
    return caught.value, message


def test_good_runs_file_resumes(tmp_path):
    runner = Runner()
    path = runs_file(tmp_path, GOOD_RUNS)
    rows = run_grid(POINTS, runner, path, progress=False, results=("score", "t"))
    assert runner.calls == [2] and list(rows.score) == [0, 10, 20]
    (tmp_path / "header").mkdir()
    header_only = runs_file(tmp_path / "header", "model,seed,score,t\r\n")
    assert list(run_grid(POINTS, runner, header_only, progress=False).seed) == [0, 1, 2]


@pytest.mark.parametrize("content, problem", [
    # cut while a row was written: resuming appended onto the cut row, then ParserError
    (GOOD_RUNS[:-6], "line 3"),
    ("model,seed,score,t\r\nm,0,0,0.5\r\nm,1,", "line 3"),
    (GOOD_RUNS + "m,2\r\n", "line 4"),  # too few fields: silently NaN before
    (GOOD_RUNS + "\x01\x02garbage,,,,,,\r\n", "line 4"),  # too many: ParserError
    (GOOD_RUNS + '"m,2,20,0.5\r\n', "line 4"),  # unclosed quote: ParserError
    (bytes(range(256)) * 4, "UTF-8"),  # binary junk: UnicodeDecodeError
    (GOOD_RUNS.encode().replace(b"m,1", b"\xe9,1"), "UTF-8"),
    (GOOD_RUNS.encode("utf-16"), "UTF-8"),
    (gzip.compress(GOOD_RUNS.encode()), "UTF-8"),
    ("\r\n\n  \n", "no header"),  # EmptyDataError
], ids=["cut-mid-row", "cut-after-comma", "short-row", "long-row", "unclosed-quote",
        "binary", "latin-1", "utf-16", "gzipped", "blank"])
def test_damaged_runs_file_is_refused(tmp_path, content, problem):
    assert problem in refused(runs_file(tmp_path, content))[1]


@pytest.mark.parametrize("content, problem", [
    ("model,seed,score,t\r\nm,0,0,0.5\r\nm,zz,10,0.5\r\n", "line 3"),  # a numeric setting
    ("model,seed,score,t\r\nm,0,0,0.5\r\nm,,10,0.5\r\n", "line 3"),
    ("model,seed,score,t\r\nm,0,0,0.5\r\nm,1,yy,0.5\r\n", "line 3"),  # a result
], ids=["setting", "empty-setting", "result"])
def test_runs_file_with_values_that_are_not_numbers(tmp_path, content, problem):
    # was: resumed with every column read as text (the junk row among the rows returned)
    _, message = refused(runs_file(tmp_path, content), results=("score", "t"))
    assert problem in message and "not a number" in message


@pytest.mark.parametrize("content", [
    "model,seed,score\r\nm,0,0\r\n",  # the file lacks a result: appending broke it
    "model,seed,score,t,extra\r\nm,0,0,0.5,1\r\n",  # a column this grid does not write
], ids=["missing", "extra"])
def test_runs_file_of_other_results(tmp_path, content):
    path = runs_file(tmp_path, content)
    assert "columns" in refused(path, results=("score", "t"))[1]
    # without results= the mismatch is found when the first row is to be appended: the file
    # stays as it was
    with pytest.raises(MtlzooError, match="move") as caught:
        run_grid(POINTS, Runner(), path, progress=False)
    assert str(path) in str(caught.value)
    assert path.read_bytes() == content.encode()


def test_runs_file_with_its_columns_in_another_order(tmp_path):
    # was: the new rows were appended in the grid's order under the file's header
    path = runs_file(tmp_path, "seed,model,t,score\r\n0,m,0.5,0\r\n")
    runner = Runner()
    rows = run_grid(POINTS, runner, path, progress=False, results=("score", "t"))
    assert runner.calls == [1, 2]
    assert rows.to_dict("list") == {"seed": [0, 1, 2], "model": ["m"] * 3, "t": [0.5] * 3,
                                    "score": [0, 10, 20]}


def test_a_folder_in_place_of_the_runs_file(tmp_path):
    path = tmp_path / "x_runs.csv"
    path.mkdir()
    error, _ = refused(path)
    assert isinstance(error.__cause__, OSError)


def test_damaged_runs_file_ends_in_one_line_on_the_command_line(tmp_path, capsys):
    runs = tmp_path / "quality_synthetic_custom_300rows_1epochs_runs.csv"
    runs.write_bytes(bytes(range(256)) * 4)
    argv = ["bench", "quality", "--suite", "synthetic", "--rows", "300", "--epochs", "1",
            "--seeds", "1", "--out", str(tmp_path), "--quiet"]
    assert cli.main(argv) == 1
    lines = capsys.readouterr().err.splitlines()
    assert "Traceback" not in "\n".join(lines)
    assert lines[-1].startswith("mtlzoo: error: ") and str(runs) in lines[-1]
