"""The ``mtlzoo`` command (tiny sizes); the library behind it: tests/test_bench.py."""

from __future__ import annotations

import re

import pandas as pd
import pytest

import mtlzoo
from mtlzoo import cli


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
    from mtlzoo.bench import peers, synthetic

    def no_peers():
        raise mtlzoo.MtlzooError("not installed")

    monkeypatch.setattr(peers, "require_peers", no_peers)  # as on a machine without the extra
    monkeypatch.setitem(synthetic.SYNTHETIC_SIZES, "demo",
                        synthetic.SyntheticSize(rows=300, epochs=1, seeds=1, dim=16,
                                                standardize=True, workers=2))
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
    report = tmp_path / "quality_synthetic_custom_300rows_1epochs.md"
    lines = runs.read_text().splitlines()
    # header + 4 correlations x (single-task once + every other model under both weightings)
    points = 4 * (2 * len(mtlzoo.list_models()) - 1)
    assert len(lines) == 1 + points
    assert f"Grid: all {points} points run by this command." in report.read_text()
    runs.write_text("\n".join(lines[:-3]) + "\n")  # as if interrupted 3 points short
    assert cli.main(argv) == 0
    assert runs.read_text().splitlines()[:-3] == lines[:-3]
    assert len(runs.read_text().splitlines()) == len(lines)
    text = report.read_text()
    assert "Command: `mtlzoo bench quality --suite synthetic" in text
    assert "torch " in text and "MMoE <= OMoE <= shared-bottom" in text
    assert (f"Grid: 3 of its {points} points run by this command, {points - 3} resumed from "
            f"{runs.name}.") in text
    assert cli.main(argv) == 0  # nothing left to run: the tables re-summarised, and say so
    assert f"Grid: none of its {points} points run by this command, all resumed from " \
        f"{runs.name}" in report.read_text()


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


def test_bench_speed_writes_its_table(tmp_path, capsys):
    argv = ["bench", "speed", "--batch-size", "8", "--repeats", "1", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    for name in mtlzoo.list_models():
        assert re.search(rf"^\s*{name}\s+\d+\s+\d+\s", out, re.MULTILINE), name
    assert "fraction_of_matmul" in (tmp_path / "bench_speed_cpu.md").read_text()


@pytest.mark.parametrize("argv", [[], ["fly"]])
def test_bad_command_exits_with_usage(argv):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2


def test_train_takes_the_number_of_threads(monkeypatch, capsys):
    import torch

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    argv = ["train", "--model", "mmoe", "--rows", "200", "--epochs", "1", "--quiet",
            "--threads", "1"]
    assert cli.main(argv) == 0
    assert calls == [1]
    with pytest.raises(SystemExit):
        cli.main(["train", "--model", "mmoe", "--threads", "0"])
    assert "--threads: must be a positive integer, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("applies", [True, False])
def test_train_keeps_freed_memory_when_asked(monkeypatch, capsys, applies):
    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(1) or applies)
    argv = ["train", "--model", "mmoe", "--rows", "200", "--epochs", "1", "--quiet"]
    assert cli.main(argv) == 0
    assert calls == []
    assert cli.main([*argv, "--keep-freed-memory"]) == 0
    assert calls == [1]
    assert ("not glibc; nothing changed" in capsys.readouterr().err) is not applies


def test_train_passes_strategy_precision_and_compile_to_the_trainer(monkeypatch, capsys):
    made = []

    class Recording(mtlzoo.Trainer):
        def __init__(self, model, **options):
            made.append(options)
            super().__init__(model, **{**options, "compile": False})  # the wiring, not inductor

    monkeypatch.setattr(mtlzoo, "Trainer", Recording)
    argv = ["train", "--model", "mmoe", "--rows", "200", "--epochs", "1", "--quiet",
            "--strategy", "none", "--precision", "bf16", "--compile"]
    assert cli.main(argv) == 0
    assert {key: made[-1][key] for key in ("strategy", "precision", "compile")} == {
        "strategy": "none", "precision": "bf16", "compile": True}
    assert "bf16 autocast, compiled." in capsys.readouterr().err
    assert cli.main(argv[:8]) == 0  # the defaults: auto, fp32, eager
    assert {key: made[-1][key] for key in ("strategy", "precision", "compile")} == {
        "strategy": "auto", "precision": "fp32", "compile": False}


def test_train_passes_model_options_to_the_builder(monkeypatch, capsys):
    built = []
    create_model = mtlzoo.create_model

    def recording(name, **options):
        built.append(options)
        return create_model(name, **options)

    monkeypatch.setattr(mtlzoo, "create_model", recording)
    argv = ["train", "--model", "mmoe", "--rows", "200", "--epochs", "1", "--quiet",
            "--option", "norm=layer", "--option", "gate=topk", "--option", "top_k=2",
            "--option", "expert_dims=16,8", "--option", "gate_noise=False"]
    assert cli.main(argv) == 0
    given = {key: value for key, value in built[-1].items() if key not in ("in_features", "tasks")}
    assert given == {"norm": "layer", "gate": "topk", "top_k": 2, "expert_dims": (16, 8),
                     "gate_noise": False}
    assert ("mmoe (norm='layer', gate='topk', top_k=2, expert_dims=(16, 8), gate_noise=False)"
            in capsys.readouterr().err)


@pytest.mark.parametrize("option", [["--strategy", "ddp"], ["--precision", "bf16"],
                                    ["--compile"], ["--option", "norm=batch"]])
def test_a_recipe_refuses_the_engine_options_it_does_not_read(option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--recipe", "imdb-agnews", *option])
    assert exit_info.value.code == 2
    assert f"does not use {option[0]}" in capsys.readouterr().err
