"""With progress on, the trainer writes one line per epoch to stderr (docs/training.md,
"Progress"): epoch, steps, per-task training loss, eval metrics, rows/s and time left."""

from __future__ import annotations

import re

import torch

import mtlzoo
from mtlzoo import Task, Trainer

TASKS = [Task("a", kind="binary"), Task("b", kind="regression")]
# the documented pattern (docs/training.md)
LINE = re.compile(
    r"^epoch (?P<epoch>\d+)(?:/(?P<total>\d+|\?)| \(step (?P<step>\d+)/(?P<limit>\d+)\))"
    r" steps (?P<steps>\d+)"
    r" loss (?P<loss>-|\S+=\S+(?: \S+=\S+)*)"
    r"(?: eval (?P<eval>\S+=\S+(?: \S+=\S+)*))?"
    r" rows/s (?P<rate>\S+)"
    r" left (?P<left>\d+:\d\d:\d\d)$"
)


def data(rows: int = 40, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 4, generator=g)
    return {"x": x, "a": (x[:, 0] > 0).long(), "b": x[:, 1] * 2}


def trainer(progress: bool = True, **options) -> Trainer:
    torch.manual_seed(0)
    model = mtlzoo.create_model("shared_bottom", in_features=4, tasks=options.pop("tasks",
                                                                                   TASKS))
    return Trainer(model, lr=1e-2, batch_size=16, seed=1, progress=progress, **options)


def parsed(err: str) -> list[re.Match]:
    lines = err.strip().splitlines()
    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines
    return matches


def pairs(text: str) -> dict[str, str]:
    return dict(item.split("=") for item in text.split())


def test_one_line_per_epoch_with_losses_eval_rate_and_time_left(capfd):
    run = trainer()
    history = run.fit(data(), epochs=3, eval=data(20, seed=5))
    out, err = capfd.readouterr()
    assert out == ""
    lines = parsed(err)
    assert len(lines) == 3
    for number, (line, (_, row)) in enumerate(zip(lines, history.iterrows(), strict=True), 1):
        assert int(line["epoch"]) == number and line["total"] == "3"
        assert int(line["steps"]) == 3  # 40 rows in batches of 16
        assert pairs(line["loss"]) == {name: f"{row[f'{name}/train_loss']:.4g}"
                                       for name in ("a", "b")}
        assert pairs(line["eval"]) == {f"{name}/loss": f"{row[f'{name}/loss']:.4g}"
                                       for name in ("a", "b")}
        assert float(line["rate"]) > 0
    assert lines[-1]["left"] == "0:00:00"


def test_early_stopping_column_is_shown(capfd):
    trainer().fit(data(), epochs=2, eval=data(20, seed=5), early_stopping="a/auc")
    lines = parsed(capfd.readouterr().err)
    assert len(lines) == 2
    assert set(pairs(lines[0]["eval"])) == {"a/loss", "b/loss", "a/auc"}


def test_without_eval_no_eval_part(capfd):
    trainer().fit(data(), epochs=1)
    (line,) = parsed(capfd.readouterr().err)
    assert line["eval"] is None


def test_progress_false_prints_nothing(capfd):
    trainer(progress=False).fit(data(), epochs=3, eval=data(20, seed=5))
    assert capfd.readouterr() == ("", "")


def test_steps_goal(capfd):
    trainer().fit(data(), steps=6)
    lines = parsed(capfd.readouterr().err)
    assert [(m["epoch"], m["step"], m["limit"]) for m in lines] == [("1", "3", "6"),
                                                                  ("2", "6", "6")]
    assert lines[-1]["left"] == "0:00:00"


def test_resumed_run_prints_the_epochs_it_trains(tmp_path, capfd):
    first = trainer()
    first.fit(data(), epochs=1)
    first.save(tmp_path / "run.pt")
    capfd.readouterr()
    second = trainer()
    second.load(tmp_path / "run.pt")
    history = second.fit(data(), epochs=3)
    lines = parsed(capfd.readouterr().err)
    assert [(m["epoch"], m["total"]) for m in lines] == [("2", "3"), ("3", "3")]
    assert pairs(lines[-1]["loss"])["a"] == f"{history['a/train_loss'].iloc[-1]:.4g}"
    assert lines[-1]["left"] == "0:00:00"


def test_per_task_datasets_print_each_tasks_loss(capfd):
    tasks = [Task("sentiment", kind="binary"), Task("topic", kind="multiclass", num_classes=3)]
    g = torch.Generator().manual_seed(2)
    x = torch.randn(48, 4, generator=g)
    train = {"sentiment": {"x": x[:32], "label": (x[:32, 0] > 0).long()},
             "topic": {"x": x[32:], "label": torch.bucketize(x[32:, 1].contiguous(),
                                                             torch.tensor([-.5, .5]))}}
    history = trainer(tasks=tasks).fit(train, epochs=2, eval=train)
    lines = parsed(capfd.readouterr().err)
    assert len(lines) == 2
    for line, (_, row) in zip(lines, history.iterrows(), strict=True):
        assert pairs(line["loss"]) == {name: f"{row[f'{name}/train_loss']:.4g}"
                                       for name in ("sentiment", "topic")}
        assert set(pairs(line["eval"])) == {"sentiment/loss", "topic/loss"}
        assert float(line["rate"]) > 0


def test_documented_example_and_pattern_match_the_lines(capfd):
    from pathlib import Path

    page = (Path(__file__).resolve().parent.parent / "docs" / "training.md").read_text()
    blocks = re.findall(r"```text\n\s*(.*?)\n\s*```", page)
    example = next(block for block in blocks if block.startswith("epoch "))
    pattern = re.compile(next(block for block in blocks if block.startswith("^epoch")))
    assert LINE.match(example) and pattern.match(example)
    trainer().fit(data(), epochs=1, eval=data(20, seed=5), early_stopping="b/r2")
    trainer().fit(data(), steps=3)
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(pattern.match(line) for line in lines), lines
