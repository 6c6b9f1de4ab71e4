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
    logits = model(["a wonderful superb film"], tasks=["sentiment"]).logits["sentiment"]
    assert logits.item() > 0


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
