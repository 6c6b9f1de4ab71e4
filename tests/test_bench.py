"""The benchmark library (``mtlzoo.bench``) and the entry scripts in ``benchmarks/``, at tiny
sizes; the ``mtlzoo bench`` and ``mtlzoo demo`` commands: tests/test_cli.py."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import mtlzoo
from mtlzoo import cli
from mtlzoo.bench import speed, task_gradients
from mtlzoo.bench.report import GridCount, markdown_table, stamp

ROOT = Path(__file__).resolve().parent.parent


def script(name: str):
    """``benchmarks/<name>.py`` as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}",
                                                  ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the stamp ------------------------------------------------------------------------------

@pytest.mark.parametrize("threads, said", [(1, "1 thread |"), (2, "2 threads |")])
def test_stamp_names_machine_threads_and_command(threads, said, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    first, command = stamp("mtlzoo bench speed").splitlines()
    assert said in first and f"torch {torch.__version__}" in first and "Python 3." in first
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d", first)
    assert command == "Command: `mtlzoo bench speed`"


def test_stamp_says_how_many_grid_points_the_command_ran():
    def grid_line(ran, resumed):
        return stamp("c", grid=GridCount(ran, resumed, "x_runs.csv")).splitlines()[-1]

    assert grid_line(3, 0) == "Grid: all 3 points run by this command."
    assert grid_line(1, 0) == "Grid: all 1 point run by this command."
    assert grid_line(2, 5) == "Grid: 2 of its 7 points run by this command, 5 resumed from " \
        "x_runs.csv."
    assert grid_line(0, 7).startswith("Grid: none of its 7 points run by this command, all "
                                      "resumed from x_runs.csv")
    assert len(stamp("c").splitlines()) == 2  # no grid, no line


# --- the quality suites and the grid --------------------------------------------------------

def test_synthetic_claims_follow_the_numbers():
    from mtlzoo.bench.synthetic import CORRELATIONS, MODELS, summarise

    # MSE by model: MMoE < OMoE < shared-bottom, the gaps widest at low correlation, PLE
    # better than single-task; shared-bottom's two seeds lie furthest apart.
    level = {"single_task": 1.0, "shared_bottom": 0.9, "omoe": 0.8, "mmoe": 0.5, "cgc": 0.6,
             "ple": 0.4, "cross_stitch": 0.7, "l2_constrained": 0.75, "sluice": 0.7,
             "mtan": 0.65, "dselect_k": 0.55, "esmm": 0.9, "aitm": 0.85}
    rows = []
    for p in CORRELATIONS:
        for seed in (0, 1):
            for model in MODELS:
                mse = level[model] * (1 if model in ("single_task", "ple") else 2 - p)
                mse += (0.3 if model == "shared_bottom" else 0.01) * (1 if seed else -1)
                rows.append({"model": model, "weighting": "equal", "correlation": p,
                             "seed": seed, "y1_mse": mse, "y2_mse": mse})
    runs = pd.DataFrame(rows)
    summary, claims = summarise(runs)
    assert len(summary) == len(MODELS) * len(CORRELATIONS)
    assert all("holds here" in claim for claim in claims[:5]), claims
    assert "does NOT hold" not in " ".join(claims)
    sb = summary[(summary.model == "shared_bottom") & (summary.correlation == 0.2)].iloc[0]
    # paired on each seed: shared-bottom's MSE over single-task's on the same seed
    per_seed = [(0.9 * 1.8 - 0.3) / (1 - 0.01), (0.9 * 1.8 + 0.3) / (1 + 0.01)]
    assert sb.y1_rel == pytest.approx((per_seed[0] * per_seed[1]) ** 0.5) and sb.seeds == 2
    assert sb.rel_std == pytest.approx(abs(per_seed[1] - per_seed[0]) / 2**0.5)
    assert sb.gain_y1 == pytest.approx(1 - sb.y1_rel)
    # why a claim may not hold: the compared models' distance against the seeds' noise
    from mtlzoo.bench.claims import why_not

    rel = summary.groupby("model").rel.apply(lambda r: np.exp(np.log(r).mean()))
    spread = rel[["mmoe", "omoe", "shared_bottom"]]
    multi = summary[summary.model != "single_task"]
    note = why_not(summary, rows=1234, dim=56)
    assert "1,234 rows of 56 features and 2 seed(s)" in note
    assert f"{spread.max() - spread.min():.3f} apart" in note
    assert f"about {(multi.rel_std / np.sqrt(2)).mean():.3f}" in note

    # a second weighting under which MMoE and OMoE swap: its claims are checked on their own,
    # against the same single-task baseline
    swapped = runs[runs.model != "single_task"].assign(weighting="dwa").replace(
        {"model": {"mmoe": "omoe", "omoe": "mmoe"}})
    summary, claims = summarise(pd.concat([runs, swapped]))
    assert len(summary) == (2 * len(MODELS) - 1) * len(CORRELATIONS)
    assert claims[0].startswith("[equal] MMoE <= OMoE") and "holds here" in claims[0]
    dwa = [claim for claim in claims if claim.startswith("[dwa]")]
    assert "does NOT hold" in dwa[0] and len(dwa) == len(claims) // 2


def test_quality_grid_runs_every_weighting_and_the_baseline_once(tmp_path):
    from mtlzoo.bench.suite import MODELS, grid_points

    points = grid_points(("equal", "uncertainty"), [{"seed": 0}, {"seed": 1}])
    assert len(points) == 2 * (1 + 2 * (len(MODELS) - 1))
    assert {p["weighting"] for p in points if p["model"] == "single_task"} == {"equal"}
    with pytest.raises(mtlzoo.MtlzooError, match="unknwon"):
        grid_points(("equal", "unknwon"), [{"seed": 0}])
    with pytest.raises(mtlzoo.MtlzooError, match="weights"):
        grid_points(("fixed",), [{"seed": 0}])
    with pytest.raises(SystemExit):
        cli.main(["bench", "quality", "--suite", "synthetic", "--weightings", "equal,nope"])


def test_grid_resumes_returns_only_its_points_and_refuses_other_settings(tmp_path):
    from mtlzoo.bench.grid import run_grid

    path = tmp_path / "runs.csv"
    calls = []

    def run(point):
        calls.append(point["seed"])
        return {"score": point["seed"] * 10}

    rows = run_grid([{"seed": s} for s in range(3)], run, path, progress=False)
    assert calls == [0, 1, 2] and list(rows.score) == [0, 10, 20]
    assert rows.attrs["grid"] == GridCount(ran=3, resumed=0, runs_file="runs.csv")
    rows = run_grid([{"seed": s} for s in range(2)], run, path, progress=False)
    assert calls == [0, 1, 2] and list(rows.seed) == [0, 1]  # nothing rerun, seed 2 kept
    assert rows.attrs["grid"] == GridCount(ran=0, resumed=2, runs_file="runs.csv")
    rows = run_grid([{"seed": s} for s in range(4)], run, path, progress=False)
    assert calls == [0, 1, 2, 3] and rows.attrs["grid"].ran == 1
    assert len(pd.read_csv(path)) == 4
    with pytest.raises(mtlzoo.MtlzooError, match="weighting"):
        run_grid([{"seed": 0, "weighting": "equal"}], run, path, progress=False)



def test_grid_notes_are_text_and_results_numbers(tmp_path):
    from mtlzoo.bench.grid import run_grid

    path = tmp_path / "runs.csv"

    def run(point):
        if point["seed"] == 1:
            return {"score": float("nan"), "note": "cannot build it: 3, 4"}
        return {"score": point["seed"] * 10.0, "note": ""}

    points = [{"seed": s} for s in range(3)]
    for _ in range(2):  # run, then resumed from the file
        rows = run_grid(points, run, path, progress=False, results=("score",), notes=("note",))
        assert list(rows.note) == ["", "cannot build it: 3, 4", ""]
        assert rows.score.iloc[[0, 2]].tolist() == [0.0, 20.0] and rows.score.isna().iloc[1]
    with pytest.raises(mtlzoo.MtlzooError, match="not this grid's"):
        run_grid(points, run, path, progress=False, results=("score",))  # note undeclared


def tenfold(point: dict) -> dict:
    """A grid point's run, at module level so that spawned workers can import it."""
    if point["seed"] < 0:
        raise ValueError(f"bad seed {point['seed']}")
    return {"score": point["seed"] * 10, "threads": torch.get_num_threads()}


def test_grid_workers_run_points_in_one_thread_processes(tmp_path):
    from mtlzoo.bench.grid import run_grid

    path = tmp_path / "runs.csv"
    points = [{"seed": s} for s in range(4)]
    rows = run_grid(points, tenfold, path, progress=False, workers=2)
    assert sorted(rows.score) == [0, 10, 20, 30] and set(rows.threads) == {1}
    assert rows.attrs["grid"].ran == 4
    with pytest.raises(ValueError, match="bad seed -1"):  # a failed point stops the grid
        run_grid([*points, {"seed": -1}], tenfold, path, progress=False, workers=2)
    assert len(pd.read_csv(path)) == 4  # the rows done are kept
    with pytest.raises(mtlzoo.MtlzooError, match="workers"):
        run_grid(points, tenfold, path, progress=False, workers=0)


def pid_then_sleep(point: dict) -> dict:
    """A grid point's run that says which process runs it, then outlasts the test."""
    Path(point["folder"], f"{os.getpid()}.pid").write_text("")
    time.sleep(60)
    return {"score": 0}


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\tZ" not in status.split("State:")[1].splitlines()[0]  # a zombie has ended


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_grid_workers_end_when_the_grid_process_is_killed(tmp_path):
    code = ("import sys; from mtlzoo.bench.grid import run_grid; "
            "from tests.test_bench import pid_then_sleep; "
            "run_grid([{'seed': s, 'folder': sys.argv[1]} for s in range(2)], pid_then_sleep, "
            "sys.argv[1] + '/runs.csv', progress=False, workers=2)")
    grid = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT)
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("*.pid"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    workers = [int(path.stem) for path in tmp_path.glob("*.pid")]
    assert len(workers) == 2 and all(map(_alive, workers))
    grid.kill()  # SIGKILL: no chance to shut its pool down
    grid.wait()
    deadline = time.monotonic() + 10
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(map(_alive, workers))


def test_budget_check_compares_each_model_at_the_budget_and_longer(tmp_path, monkeypatch):
    from mtlzoo.bench import synthetic

    monkeypatch.setitem(synthetic.SYNTHETIC_SIZES, "demo",
                        synthetic.SyntheticSize(rows=200, epochs=1, seeds=1, dim=8,
                                                standardize=True, lr_schedule="cosine"))
    monkeypatch.setattr(synthetic, "CORRELATIONS", (0.5,))
    result = synthetic.check_budget("demo", factor=2, out=tmp_path, progress=False)
    table = result.summary
    assert list(table.model) == list(synthetic.MODELS)
    assert table.ratio.tolist() == pytest.approx((table.budget / table.x2).tolist())
    assert table.within.tolist() == [abs(r - 1) <= 0.1 for r in table.ratio]
    single = table[table.model == "single_task"].iloc[0]
    assert single.rel_budget == pytest.approx(1) and single.rel_x2 == pytest.approx(1)
    runs = pd.read_csv(tmp_path / "quality_synthetic_demo_x2_runs.csv")
    assert len(runs) == len(synthetic.MODELS)
    report = result.report.read_text()
    assert result.report.name == "quality_synthetic_demo_budget.md"
    assert "2 epochs" in report and result.claims[0] in report
    assert ("Verdict: every model" in report) == bool(table.within.all())
    again = synthetic.check_budget("demo", factor=2, out=tmp_path, progress=False)
    assert again.summary.equals(table)  # resumed, not rerun
    assert "none of its" in again.report.read_text()


def test_synthetic_rows_of_another_setup_are_never_taken_for_this_ones(tmp_path, monkeypatch):
    from mtlzoo.bench import synthetic

    tiny = synthetic.SyntheticSize(rows=200, epochs=1, seeds=1, dim=8)
    monkeypatch.setattr(synthetic, "CORRELATIONS", (0.5,))
    monkeypatch.setitem(synthetic.SYNTHETIC_SIZES, "demo", tiny)
    first = synthetic.run_grid_of(tiny, "demo", tmp_path, ("equal",), progress=False)
    other = dataclasses.replace(tiny, lr=1e-2)  # same name and files, another budget
    second = synthetic.run_grid_of(other, "demo", tmp_path, ("equal",), progress=False)
    assert first.attrs["grid"].ran == second.attrs["grid"].ran == len(first)
    assert set(second.setup) == {other.key()} and "lr=0.01" in other.key()
    assert len(pd.read_csv(tmp_path / "quality_synthetic_demo_runs.csv")) == 2 * len(first)


def test_compare_with_loop_reports_ratios_and_flops():
    models = speed.expert_grid(experts=(4,), tasks=(2,), in_features=8, expert_width=4)
    table = speed.compare_with_loop(models, batch_size=16, repeats=2)
    assert list(table.model) == ["mmoe", "ple"]
    assert (table.speedup > 0).all() and (table.gflop_per_step > 0).all()
    ratio = table.ours_ms / table.loop_ms
    pd.testing.assert_series_equal(1 / ratio, table.speedup, check_names=False, rtol=1e-9)
    assert (table.fraction_of_matmul > 0).all()


def test_step_flops_counts_forward_and_backward_matmuls():
    model = mtlzoo.create_model(
        "shared_bottom", in_features=10, tasks=[mtlzoo.Task("y")], bottom_dims=(6,),
        tower_dims=(),
    )
    bottom = 2 * 16 * 11 * 6  # (16, 10 + a ones column) @ (11, 6): the bias is a weight row
    output = 2 * 16 * 6 * 1  # (16, 6) @ (6, 1)
    # forward; backward: both weight gradients and the output layer's input gradient (the
    # bottom's input gradient is not computed: x needs none)
    assert speed.step_flops(model, torch.randn(16, 10)) == 2 * bottom + 3 * output


def test_markdown_table():
    table = pd.DataFrame({"model": ["mmoe"], "speedup": [3.14159], "E": [64]})
    assert markdown_table(table) == (
        "| model | speedup | E |\n|---|---|---|\n| mmoe | 3.14 | 64 |"
    )


# --- the entry scripts in benchmarks/ -------------------------------------------------------

@pytest.mark.parametrize("name", ["speed", "task_gradients"])
def test_entry_scripts_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script(name).main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--out" in out and "--repeats" in out


def test_speed_script_writes_the_median_over_processes(tmp_path, monkeypatch, capsys):
    tiny = speed.expert_grid(experts=(4,), tasks=(2,), in_features=8, expert_width=4)
    monkeypatch.setattr(speed, "expert_grid", lambda: tiny)
    monkeypatch.setattr(speed, "matmul_flops_per_second", lambda **kwargs: 1e11)
    # each "fresh process" runs here, so that the tiny grid reaches it
    monkeypatch.setattr(speed, "in_fresh_process", lambda function, *args: function(*args))
    argv = ["--repeats", "1", "--processes", "2", "--batch-size", "8", "--out", str(tmp_path)]
    assert script("speed").main(argv) == 0
    runs = pd.read_csv(tmp_path / "speed_cpu_batch8_runs.csv")
    table = pd.read_csv(tmp_path / "speed_cpu_batch8.csv")
    assert len(runs) == 2 * len(table) and list(table.model) == ["mmoe", "ple"]
    assert (table.speedup_min <= table.speedup).all()
    assert (table.speedup <= table.speedup_max).all()
    text = (tmp_path / "speed_cpu_batch8.md").read_text()
    assert re.search(r"^Command: `python .*--processes 2 --batch-size 8", text, re.MULTILINE)
    assert text in capsys.readouterr().out


def test_speed_targets_are_checked_and_a_miss_is_said():
    table = pd.DataFrame([
        {"model": "mmoe", "E": 64, "T": 8, "speedup": 3.5, "speedup_min": 3.0,
         "speedup_max": 4.0},
        {"model": "mmoe", "E": 8, "T": 2, "speedup": 1.2, "speedup_min": 1.1,
         "speedup_max": 1.25},
    ])
    met, missed = speed.check_targets(table, processes=3)
    assert met.startswith("MMoE E=64, T=8: 3.50x median over 3 processes") and "met" in met
    assert missed.endswith("MISSED")
    result = speed.SpeedResult(table, Path("x.md"), "", [met, missed])
    assert not result.met


def test_task_gradients_script_on_a_tiny_grid(tmp_path, monkeypatch, capsys):
    # the peak memory is measured in fresh processes (speed.in_fresh_process), for real
    monkeypatch.setattr(task_gradients, "GRID", [("ple", 4, 2, 4)])
    assert script("task_gradients").main(["--repeats", "1", "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "task_gradients_cpu.csv")
    assert list(table.model) == ["ple"] and (table.speedup > 0).all()
    assert (table[["vectorised_peak_mb", "loop_peak_mb"]] >= 0).all().all()
    text = (tmp_path / "task_gradients_cpu.md").read_text()
    assert "--repeats 1" in text and "| ple | 4 | 2 | 4 |" in text


def test_every_entry_point_defaults_to_one_results_folder():
    from mtlzoo.bench.report import RESULTS

    assert Path("results") == RESULTS
    for argv in (["demo"], ["bench", "speed"], ["bench", "quality", "--suite", "census"]):
        assert Path(cli._parser().parse_args(argv).out) == RESULTS


def test_model_options_scale_every_hidden_width_and_nothing_else():
    from mtlzoo.bench.suite import MODEL_OPTIONS, model_options

    assert model_options("ple", 2) == {**MODEL_OPTIONS["ple"], "expert_dims": (32,)}
    assert model_options("shared_bottom", 3) == {"bottom_dims": (339,)}
    assert model_options("cross_stitch", 2) == {"column_dims": (112,)}
    assert model_options("single_task") == MODEL_OPTIONS["single_task"]
