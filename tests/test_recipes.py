"""The IMDb + AG News recipe end to end, on small generated parquet files (no network)."""

from __future__ import annotations

import random
import re

import pytest
import torch

import mtlzoo
from mtlzoo import cli
from mtlzoo.recipes import imdb_agnews

POSITIVE = ["great", "wonderful", "superb", "loved", "brilliant"]
NEGATIVE = ["awful", "boring", "terrible", "hated", "dull"]
TOPICS = [["election", "senate", "vote"], ["match", "goal", "season"],
          ["market", "shares", "profit"], ["software", "chip", "internet"]]
FILLER = ["the", "a", "film", "story", "it", "was", "and", "of", "news", "today"]


def _texts(rng: random.Random, words: list[str], n: int) -> list[str]:
    return [" ".join(rng.choices(FILLER, k=6) + rng.choices(words, k=2)) for _ in range(n)]


def write_fixture(root, rows: int = 160) -> None:
    """Two learnable datasets in the layout the recipe reads: imdb/ and ag_news/."""
    import pandas as pd

    rng = random.Random(0)
    for split, n in (("train", rows), ("test", rows // 2)):
        sentiment = [(t, 1) for t in _texts(rng, POSITIVE, n // 2)]
        sentiment += [(t, 0) for t in _texts(rng, NEGATIVE, n // 2)]
        topic = [(t, k) for k, words in enumerate(TOPICS) for t in _texts(rng, words, n // 4)]
        for name, rows_ in (("imdb", sentiment), ("ag_news", topic)):
            folder = root / name
            folder.mkdir(parents=True, exist_ok=True)
            frame = pd.DataFrame(rows_, columns=["text", "label"]).sample(frac=1, random_state=0)
            frame.to_parquet(folder / f"{split}.parquet")


@pytest.fixture
def recipe_data(tmp_path):
    root = tmp_path / "recipe_fixture_imdb_agnews"
    write_fixture(root)
    return root, tmp_path / "datasets_cache"


def test_the_recipe_learns_both_tasks_above_chance(recipe_data):
    root, cache = recipe_data
    torch.manual_seed(0)
    trainer, table = imdb_agnews(root, epochs=5, batch_size=16, max_vocab=200, max_length=16,
                                 lr=1e-2, embedding_dim=16, hidden_size=16, cache_dir=cache,
                                 progress=False)
    assert table.loc["sentiment", "accuracy"] > 0.8  # chance: 0.5
    assert table.loc["topic", "accuracy"] > 0.6  # chance: 0.25
    assert table.loc["sentiment", "rows"] == 80 and table.loc["topic", "rows"] == 80
    model = trainer.model
    # the tokenizer travels with the model: raw text in, logits out
    logits = model(["a wonderful superb film", "an awful boring film"],
                   tasks=["sentiment"]).logits["sentiment"]
    assert logits[0].item() > logits[1].item()


def test_a_task_batch_trains_only_its_own_head(recipe_data):
    root, cache = recipe_data
    trainer, _ = imdb_agnews(root, epochs=1, batch_size=16, max_vocab=200, max_length=16,
                             embedding_dim=8, hidden_size=8, cache_dir=cache, progress=False)
    model = trainer.model
    model.zero_grad()
    ids = model.encoder.tokenizer.encode(["the film was great"])
    model(ids, tasks=["topic"]).logits["topic"].sum().backward()
    head_grads = model.heads.output.weight.grad  # (task, k, o): sentiment is row 0
    assert head_grads[0].abs().sum() == 0 and head_grads[1].abs().sum() > 0
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_the_cli_runs_the_recipe(recipe_data, capsys):
    root, cache = recipe_data
    argv = ["train", "--recipe", "imdb-agnews", "--data-dir", str(root), "--cache-dir",
            str(cache), "--epochs", "1", "--batch-size", "32", "--quiet"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "examples/s" not in captured.err  # no datasets bars (they flooded logs)
    assert re.search(r"sentiment accuracy \d\.\d{4}, topic accuracy \d\.\d{4}", out)
    # AUC is the binary task's, macro-F1 the multiclass one's: neither shows as NaN
    assert "NaN" not in out and "nan" not in out


def test_the_cli_compares_the_recipe_with_its_single_task_baseline(recipe_data, capsys):
    root, cache = recipe_data
    argv = ["train", "--recipe", "imdb-agnews", "--data-dir", str(root), "--cache-dir",
            str(cache), "--epochs", "1", "--batch-size", "32", "--quiet",
            "--compare-single-task", "--seeds", "2", "--seed", "5"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "over 2 seed(s) (5..6)" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()
            if line.startswith(("sentiment", "topic"))}
    assert set(rows) == {"sentiment", "topic"}
    for values in rows.values():  # multi, its std, single, its std, difference
        multi, multi_std, single, single_std, difference = map(float, values)
        assert 0 <= multi <= 1 and 0 <= single <= 1 and multi_std >= 0 and single_std >= 0
        assert difference == pytest.approx(multi - single, abs=2e-4)


def test_the_single_task_baseline_shares_nothing(recipe_data):
    root, cache = recipe_data
    trainer, _ = imdb_agnews(root, epochs=1, batch_size=32, cache_dir=cache, progress=False,
                             architecture="single_task")
    model = trainer.model
    assert model.encoder is None and len(model.encoders) == 2
    first, second = (set(map(id, encoder.parameters())) for encoder in model.encoders)
    assert not first & second
    with pytest.raises(mtlzoo.MtlzooError, match="architecture"):
        imdb_agnews(root, architecture="mmoe")


def test_seeds_are_for_the_comparison(recipe_data, capsys):
    root, _ = recipe_data
    argv = ["train", "--recipe", "imdb-agnews", "--data-dir", str(root), "--seeds", "2"]
    assert cli.main(argv) == 1
    assert "--seeds is for --compare-single-task" in capsys.readouterr().err


def test_a_source_without_validation_gets_one_carved_from_train(recipe_data):
    import datasets

    from mtlzoo.recipes import VALIDATION_FRACTION, with_validation

    train = datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(100)],
                                        "label": [i % 2 for i in range(100)]})
    test = datasets.Dataset.from_dict({"text": ["x"], "label": [0]})
    carved = with_validation(datasets.DatasetDict({"train": train, "test": test}), seed=3)
    assert len(carved["validation"]) == int(100 * VALIDATION_FRACTION)
    assert len(carved["train"]) == 100 - len(carved["validation"])
    assert not set(carved["train"]["text"]) & set(carved["validation"]["text"])
    assert carved["test"]["text"] == ["x"]
    own = datasets.DatasetDict({"train": train, "validation": test, "test": test})
    assert with_validation(own)["validation"] is own["validation"]  # a source's own is kept
    root, cache = recipe_data
    trainer, _ = imdb_agnews(root, epochs=2, batch_size=32, cache_dir=cache, progress=False)
    history = trainer.history
    assert {"sentiment/accuracy", "topic/accuracy"} <= set(history.columns)
    assert len(history) == 2  # every epoch evaluated on the validation split


# --- any two corpora: --recipe text-pair ------------------------------------------------

NAMED_TOPICS = {"world": ["election", "senate", "vote"], "sports": ["match", "goal", "season"],
                "business": ["market", "shares", "profit"], "tech": ["software", "chip", "web"],
                "arts": ["gallery", "opera", "novel"]}


def write_named_topics(path, rows: int = 200) -> None:
    """One CSV file (train only) whose labels are class names, not ids."""
    import pandas as pd

    rng = random.Random(1)
    frame = pd.DataFrame([(text, name) for name, words in NAMED_TOPICS.items()
                          for text in _texts(rng, words, rows // len(NAMED_TOPICS))],
                         columns=["text", "label"]).sample(frac=1, random_state=0)
    frame.to_csv(path, index=False)


@pytest.fixture
def pair_data(tmp_path, monkeypatch):
    """A sentiment folder and a topic CSV file with five named classes; the datasets cache
    in tmp_path."""
    import datasets

    write_fixture(tmp_path / "corpora")
    write_named_topics(tmp_path / "corpora" / "news.csv")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "corpora"


def test_text_pair_takes_any_two_corpora_with_their_classes(pair_data, capsys):
    argv = ["train", "--recipe", "text-pair", "--task", f"sentiment={pair_data / 'imdb'}",
            "--task", f"topic={pair_data / 'news.csv'}", "--epochs", "3", "--lr", "1e-2",
            "--batch-size", "16",
            "--max-length", "16", "--embedding-dim", "16", "--hidden-size", "16"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    # the header names each task's source, classes (from the data, sorted names) and splits
    assert "topic: from" in captured.err
    assert "5 classes (arts, business, sports, tech, world)" in captured.err
    assert "(test carved from train (10%); validation carved from train (10%))" in captured.err
    assert "2 classes (0, 1)" in captured.err  # integer labels are named by their ids
    # one line per epoch when stderr is not a terminal, with each task's loss and eval
    epochs = [line for line in captured.err.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 3 and all("topic/loss=" in line for line in epochs)
    assert "examples/s" not in captured.err  # no datasets bars
    accuracies = dict(re.findall(r"(\w+) accuracy (\d\.\d{4})", captured.out))
    assert float(accuracies["sentiment"]) > 0.7 and float(accuracies["topic"]) > 0.5
    assert "NaN" not in captured.out


def test_text_pair_compares_with_single_task_and_trains_by_steps(pair_data, capsys):
    import pandas as pd

    argv = ["train", "--recipe", "text-pair", "--task", f"sentiment={pair_data / 'imdb'}",
            "--task", f"topic={pair_data / 'news.csv'}", "--steps", "6", "--quiet",
            "--max-length", "16", "--embedding-dim", "8", "--hidden-size", "8",
            "--compare-single-task", "--seeds", "2"]
    assert cli.main([*argv, "--out", str(pair_data / "results")]) == 0
    captured = capsys.readouterr()
    assert "steps 6" in captured.err and "epochs" not in captured.err
    report = (pair_data / "results" / "text_pair_compare.md").read_text()
    assert "Command: `mtlzoo train --recipe text-pair" in report and "steps 6" in report
    assert "5 classes (arts, business, sports, tech, world)" in report
    runs = pd.read_csv(pair_data / "results" / "text_pair_compare_runs.csv")
    assert len(runs) == 2 * 2 * 2  # tasks x architectures x seeds
    assert "over 2 seed(s) (0..1)" in captured.out
    assert {line.split()[0] for line in captured.out.splitlines()
            if line.startswith(("sentiment", "topic"))} == {"sentiment", "topic"}


@pytest.mark.parametrize(("extra", "message"), [
    (["--task", "sentiment"], "--task takes NAME=SOURCE, got 'sentiment'"),
    (["--task", "=imdb", "--task", "b=c"], "--task takes NAME=SOURCE, got '=imdb'"),
    (["--task", "a=x", "--task", "a=y"], "--task a is given twice"),
    (["--task", "a=x"], "needs two --task or more, got ['a']"),
    (["--task", "a=x", "--task", "b=y", "--data-dir", "d"], "--data-dir is for the default"),
    (["--task", "a=./x", "--task", "b=y"], "task 'a': text source './x': no such folder"),
])
def test_text_pair_task_errors(extra, message, capsys):
    assert cli.main(["train", "--recipe", "text-pair", "--quiet", *extra]) == 1
    assert message in capsys.readouterr().err


def test_imdb_agnews_reads_its_own_pair(capsys):
    argv = ["train", "--recipe", "imdb-agnews", "--task", "a=x", "--task", "b=y"]
    assert cli.main(argv) == 1
    assert "--task is for --recipe text-pair" in capsys.readouterr().err


def test_the_documented_commands_run_as_written(tmp_path, monkeypatch, capsys):
    """docs/recipes.md: its example writes two small corpora, then its console commands run
    on them exactly as the page gives them."""
    import shlex
    from pathlib import Path

    import datasets

    page = (Path(__file__).resolve().parent.parent / "docs" / "recipes.md").read_text()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    exec(re.findall(r"```python\n(.*?)```", page, re.DOTALL)[0], {})
    commands = [line for block in re.findall(r"```console\n(.*?)```", page, re.DOTALL)
                for line in block.splitlines() if line.strip()]
    assert len(commands) == 2 and all(c.startswith("mtlzoo train ") for c in commands)
    for command in commands:
        assert cli.main(shlex.split(command)[1:]) == 0, command
    out = capsys.readouterr().out
    assert re.search(r"sentiment accuracy \d\.\d{4}, topic accuracy \d\.\d{4}", out)
    assert "over 2 seed(s) (0..1)" in out
