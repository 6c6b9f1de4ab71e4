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
    path = tmp_path / "mmoe.pt"
    argv = ["train", "--model", "omoe", "--epochs", "1", "--rows", "300", "--quiet",
            "--checkpoint", str(path)]
    assert cli.main(argv) == 0
    assert torch.load(path, weights_only=True)["position"]["epoch"] == 1


def test_demo_trains_every_model(capsys):
    assert cli.main(["demo", "--rows", "300", "--epochs", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    for name in mtlzoo.list_models():
        assert re.search(rf"^\s*{name}\s+\d+\s", out, re.MULTILINE), name
    assert "y1 mse" in out and "y2 r2" in out


def test_speed_prints_one_row_per_model(capsys):
    assert cli.main(["speed", "--batch-size", "8", "--in-features", "6", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    for name in mtlzoo.list_models():
        assert re.search(rf"^\s*{name}\s+\d+\s", out, re.MULTILINE), name
    assert "speedup" in out and "fraction_of_matmul" in out


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
