"""The ``mtlzoo`` command and the speed helpers behind ``make demo`` (tiny sizes)."""

from __future__ import annotations

import re

import pandas as pd
import pytest
import torch

import mtlzoo
from mtlzoo import cli
from mtlzoo.bench import speed


def test_list_prints_every_model_and_weighting(capsys):
    assert cli.main(["list"]) == 0
    models, weightings = capsys.readouterr().out.splitlines()
    assert models.split()[1:] == mtlzoo.list_models()
    assert weightings.split()[1:] == mtlzoo.list_weightings()


def test_train_prints_the_test_metrics(capsys):
    argv = ["train", "--model", "mmoe", "--data", "synthetic", "--weighting", "uncertainty",
            "--epochs", "1", "--rows", "400", "--quiet"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert re.search(r"^y1\s+40\s", out, re.MULTILINE) and "r2" in out


def test_train_writes_a_checkpoint(tmp_path):
    path = tmp_path / "omoe.pt"
    argv = ["train", "--model", "omoe", "--epochs", "1", "--rows", "300", "--quiet",
            "--checkpoint", str(path)]
    assert cli.main(argv) == 0
    tasks = [mtlzoo.Task("y1", kind="regression"), mtlzoo.Task("y2", kind="regression")]
    model = mtlzoo.create_model("omoe", in_features=512, tasks=tasks)
    trainer = mtlzoo.Trainer(model, progress=False)
    trainer.load(path)
    assert trainer.epoch == 1


def test_demo_runs_the_synthetic_suite_and_points_at_its_files(capsys, tmp_path, monkeypatch):
    from mtlzoo.bench import peers, quality

    def no_peers():
        raise mtlzoo.MtlzooError("not installed")

    monkeypatch.setattr(peers, "require_peers", no_peers)  # as on a machine without the extra
    monkeypatch.setitem(quality.SYNTHETIC_SIZES, "demo",
                        quality.SyntheticSize(rows=300, epochs=1, seeds=1))
    assert cli.main(["demo", "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    for name in mtlzoo.list_models():
        assert re.search(rf"^{name}\s+\d", out, re.MULTILINE), name
    assert "claims, checked" in out and str(tmp_path / "quality_synthetic_demo.md") in out
    assert (tmp_path / "quality_synthetic_demo.png").stat().st_size > 0
    speed_line = out.strip().splitlines()[-1]
    assert re.match(r"Speed: .* \d+\.\dx faster than the same model as a loop", speed_line)
    assert "mtlzoo[peers]" in speed_line


def test_bench_quality_synthetic_resumes_from_the_rows_written(tmp_path, capsys):
    argv = ["bench", "quality", "--suite", "synthetic", "--rows", "300", "--epochs", "1",
            "--seeds", "1", "--weightings", "equal,dwa", "--out", str(tmp_path), "--quiet"]
    assert cli.main(argv) == 0
    runs = tmp_path / "quality_synthetic_custom_300rows_1epochs_runs.csv"
    lines = runs.read_text().splitlines()
    # header + 4 correlations x (single-task once + every other model under both weightings)
    assert len(lines) == 1 + 4 * (2 * len(mtlzoo.list_models()) - 1)
    runs.write_text("\n".join(lines[:-3]) + "\n")  # as if interrupted 3 points short
    assert cli.main(argv) == 0
    assert runs.read_text().splitlines()[:-3] == lines[:-3]
    assert len(runs.read_text().splitlines()) == len(lines)
    report = (tmp_path / "quality_synthetic_custom_300rows_1epochs.md").read_text()
    assert "Command: `mtlzoo bench quality --suite synthetic" in report
    assert "torch " in report and "MMoE <= OMoE <= shared-bottom" in report


def test_bench_quality_census_on_small_files(tmp_path, capsys):
    from tests.test_census_income import write_pair

    write_pair(tmp_path / "census")
    argv = ["bench", "quality", "--suite", "census", "--size", "demo", "--census-path",
            str(tmp_path / "census"), "--out", str(tmp_path), "--quiet"]
    assert cli.main(argv) == 0
    table = pd.read_csv(tmp_path / "quality_census_demo.csv")
    assert len(table) == 2 * len(mtlzoo.list_models())
    assert {"main_best", "MMoE Table 1 main", "MMoE Table 1 main diff"} <= set(table.columns)
    mmoe = table[(table.model == "mmoe") & (table.task_group == 1)].iloc[0]
    assert mmoe["MMoE Table 1 main"] == 0.9410
    assert mmoe["MMoE Table 1 main diff"] == pytest.approx(mmoe.main_best - 0.9410)
    assert mmoe["MMoE Table 1 main mean"] == 0.9359
    assert mmoe["MMoE Table 1 main mean diff"] == pytest.approx(mmoe.main_mean - 0.9359)
    assert mmoe["MMoE Table 1 aux mean"] == 0.9927 and mmoe.weighting == "equal"
    report = (tmp_path / "quality_census_demo.md").read_text()
    assert f"Command: `mtlzoo {' '.join(argv)}`" in report


def test_synthetic_claims_follow_the_numbers():
    from mtlzoo.bench.quality import CORRELATIONS, MODELS, summarise_synthetic

    # MSE by model: MMoE < OMoE < shared-bottom, the gaps widest at low correlation, PLE
    # better than single-task; shared-bottom's two seeds lie furthest apart.
    level = {"single_task": 1.0, "shared_bottom": 0.9, "omoe": 0.8, "mmoe": 0.5, "cgc": 0.6,
             "ple": 0.4, "cross_stitch": 0.7}
    rows = []
    for p in CORRELATIONS:
        for seed in (0, 1):
            for model in MODELS:
                mse = level[model] * (1 if model in ("single_task", "ple") else 2 - p)
                mse += (0.3 if model == "shared_bottom" else 0.01) * (1 if seed else -1)
                rows.append({"model": model, "weighting": "equal", "correlation": p,
                             "seed": seed, "y1_mse": mse, "y2_mse": mse})
    runs = pd.DataFrame(rows)
    summary, claims = summarise_synthetic(runs)
    assert len(summary) == len(MODELS) * len(CORRELATIONS)
    assert all("holds here" in claim for claim in claims[:5]), claims
    assert "does NOT hold" not in " ".join(claims)
    sb = summary[(summary.model == "shared_bottom") & (summary.correlation == 0.2)].iloc[0]
    # paired on each seed: shared-bottom's MSE over single-task's on the same seed
    per_seed = [(0.9 * 1.8 - 0.3) / (1 - 0.01), (0.9 * 1.8 + 0.3) / (1 + 0.01)]
    assert sb.y1_rel == pytest.approx((per_seed[0] * per_seed[1]) ** 0.5) and sb.seeds == 2
    assert sb.rel_std == pytest.approx(abs(per_seed[1] - per_seed[0]) / 2**0.5)
    assert sb.gain_y1 == pytest.approx(1 - sb.y1_rel)

    # a second weighting under which MMoE and OMoE swap: its claims are checked on their own,
    # against the same single-task baseline
    swapped = runs[runs.model != "single_task"].assign(weighting="dwa").replace(
        {"model": {"mmoe": "omoe", "omoe": "mmoe"}})
    summary, claims = summarise_synthetic(pd.concat([runs, swapped]))
    assert len(summary) == (2 * len(MODELS) - 1) * len(CORRELATIONS)
    assert claims[0].startswith("[equal] MMoE <= OMoE") and "holds here" in claims[0]
    dwa = [claim for claim in claims if claim.startswith("[dwa]")]
    assert "does NOT hold" in dwa[0] and len(dwa) == len(claims) // 2


def test_quality_grid_runs_every_weighting_and_the_baseline_once(tmp_path):
    from mtlzoo.bench.quality import MODELS, grid_points

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
    from mtlzoo.bench.grid import run_grid, stamp

    path = tmp_path / "runs.csv"
    calls = []

    def run(point):
        calls.append(point["seed"])
        return {"score": point["seed"] * 10}

    rows = run_grid([{"seed": s} for s in range(3)], run, path, progress=False)
    assert calls == [0, 1, 2] and list(rows.score) == [0, 10, 20]
    rows = run_grid([{"seed": s} for s in range(2)], run, path, progress=False)
    assert calls == [0, 1, 2] and list(rows.seed) == [0, 1]  # nothing rerun, seed 2 kept
    assert len(pd.read_csv(path)) == 3
    with pytest.raises(mtlzoo.MtlzooError, match="weighting"):
        run_grid([{"seed": 0, "weighting": "equal"}], run, path, progress=False)
    assert stamp("mtlzoo bench speed").endswith("Command: `mtlzoo bench speed`")


def test_bench_speed_writes_its_table(tmp_path, capsys):
    argv = ["bench", "speed", "--batch-size", "8", "--repeats", "1", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    for name in mtlzoo.list_models():
        assert re.search(rf"^\s*{name}\s+\d+\s+\d+\s", out, re.MULTILINE), name
    assert "fraction_of_matmul" in (tmp_path / "bench_speed_cpu.md").read_text()


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
    assert speed.markdown_table(table) == (
        "| model | speedup | E |\n|---|---|---|\n| mmoe | 3.14 | 64 |"
    )


@pytest.mark.parametrize("argv", [[], ["fly"]])
def test_bad_command_exits_with_usage(argv):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
