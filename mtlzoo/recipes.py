"""Recipes: published multi-task set-ups, end to end.

``text_pair``: the classic hard-sharing text model. Two (or more) text classification tasks,
IMDb sentiment (binary) and AG News topic (4 classes) by default, one dataset per task, over
one shared Embedding + BiLSTM encoder; each step draws a batch from each dataset, each batch
trains the encoder and only its own head, and the sum of the losses is minimised with Adam.
``imdb_agnews`` is that pair read from one folder; ``compare_single_task`` trains the recipe
and its single-task baseline over seeds.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import torch

from mtlzoo import _checks
from mtlzoo._registry import create_model
from mtlzoo.encoders import TextEncoder
from mtlzoo.errors import DataLoadError, MtlzooError
from mtlzoo.tasks import Task
from mtlzoo.train import Trainer

DEFAULT_TASKS: dict[str, str] = {"sentiment": "imdb", "topic": "ag_news"}
"""The recipe's tasks and their sources by default: IMDb sentiment, AG News topic."""

# the recipe's multi-task model, and the single-task baseline of the same layers
ARCHITECTURES = ("shared_bottom", "single_task")
VALIDATION_FRACTION = 0.1  # of the training rows, where a source has no validation split
TEST_FRACTION = 0.1  # of the training rows, where a source has no test (nor validation) split


@dataclass
class TextTasks:
    """The recipe's data, ready to train: per task its tokenised ``train``, ``validation``
    and ``test`` splits (``data``) and class names, one tokenizer fitted on every train
    split, and how each task's splits were made (``notes``)."""

    data: dict
    classes: dict[str, tuple[str, ...]]
    tokenizer: object
    notes: dict[str, str]

    def describe(self) -> str:
        """One line per task: where its data came from, its classes, its split sizes."""
        lines = []
        for name, data in self.data.items():
            classes = self.classes[name]
            shown = ", ".join(classes[:8]) + (", ..." if len(classes) > 8 else "")
            sizes = " / ".join(f"{split} {len(data[split]):,}"
                               for split in ("train", "validation", "test"))
            lines.append(f"  {name}: {self.notes[name]}; {len(classes)} classes ({shown}); "
                         f"rows {sizes}")
        return "\n".join(lines)


def with_validation(data, seed: int = 0):
    """``data`` (a ``DatasetDict``) with a ``validation`` split: its own when it has one,
    else :data:`VALIDATION_FRACTION` of ``train`` carved out at random from ``seed``."""
    import datasets

    if "validation" in data:
        return data
    parts = data["train"].train_test_split(test_size=VALIDATION_FRACTION, seed=seed)
    return datasets.DatasetDict({**data, "train": parts["train"], "validation": parts["test"]})


def with_splits(data, seed: int = 0) -> tuple[object, str]:
    """``data`` with ``train``, ``validation`` and ``test`` splits, and a note of what was
    made: a missing ``test`` is the source's ``validation`` when it has one (the hub's
    habit when test labels are hidden), else :data:`TEST_FRACTION` of ``train``; a missing
    ``validation`` is carved from ``train`` (:func:`with_validation`). Draws use ``seed``."""
    import datasets

    if "train" not in data:
        raise MtlzooError(f"no 'train' split to train on (splits: {list(data)})")
    made = []
    if "test" not in data:
        if "validation" in data:
            data = datasets.DatasetDict({**data, "test": data["validation"]})
            del data["validation"]
            made.append("test = its validation split")
        else:
            parts = data["train"].train_test_split(test_size=TEST_FRACTION, seed=seed)
            data = datasets.DatasetDict({**data, "train": parts["train"], "test": parts["test"]})
            made.append(f"test carved from train ({TEST_FRACTION:.0%})")
    if "validation" not in data:
        made.append(f"validation carved from train ({VALIDATION_FRACTION:.0%})")
    data = with_validation(data, seed)
    if len(data["train"]) < 2:
        raise MtlzooError(f"only {len(data['train'])} training row(s) left after the splits")
    return data, "; ".join(made)


def load_text_tasks(
    tasks: Mapping[str, object] | None = None,
    *,
    max_vocab: int = 20_000,
    max_length: int = 256,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
) -> TextTasks:
    """Load, split and tokenise each task's source (``mtlzoo.data.text.load_source``: a
    folder, a file, a dict of split files, a ``DatasetDict`` or a hub id); one
    ``WordTokenizer`` (``max_vocab`` words, ``max_length`` tokens) fitted on every train
    split. Splits a source lacks are made by :func:`with_splits`."""
    from mtlzoo.data.text import class_names, load_source, tokenize_dataset
    from mtlzoo.tokenizer import WordTokenizer

    tasks = dict(DEFAULT_TASKS if tasks is None else tasks)
    if len(tasks) < 2:
        raise MtlzooError(f"a multi-task recipe needs two tasks or more, got {list(tasks)}")
    loaded, notes, classes = {}, {}, {}
    for name, source in tasks.items():
        try:
            data, made = with_splits(load_source(source, cache_dir=cache_dir), seed)
        except DataLoadError as error:
            raise DataLoadError(f"task {name!r}: {error.problem}", error.hint) from error
        except MtlzooError as error:
            raise MtlzooError(f"task {name!r}: {error}") from error
        classes[name] = class_names(data)
        if len(classes[name]) < 2:
            raise MtlzooError(f"task {name!r}: its labels hold one class, {classes[name]}")
        loaded[name] = data
        where = source if isinstance(source, str) else type(source).__name__
        notes[name] = f"from {where}" + (f" ({made})" if made else "")
    tokenizer = WordTokenizer(max_vocab=max_vocab, max_length=max_length)
    tokenizer.fit(chain.from_iterable(data["train"]["text"] for data in loaded.values()))
    tokenised = {name: tokenize_dataset(data, tokenizer) for name, data in loaded.items()}
    return TextTasks(tokenised, classes, tokenizer, notes)


def text_pair(
    tasks: Mapping[str, object] | None = None,
    *,
    epochs: int = 2,
    steps: int | None = None,
    batch_size: int = 64,
    max_vocab: int = 20_000,
    max_length: int = 256,
    embedding_dim: int = 128,
    hidden_size: int = 128,
    pooling: str = "lstm",
    batching: str = "by_length",
    architecture: str = "shared_bottom",
    weighting: str = "equal",
    lr: float = 1e-3,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    data: TextTasks | None = None,
):
    """Train the text model; returns ``(trainer, test metrics DataFrame)``.

    ``tasks`` maps each task's name to its source (see :func:`load_text_tasks`; default
    :data:`DEFAULT_TASKS`, IMDb sentiment and AG News topic from the hub). A task with two
    classes is binary, one with more multiclass; classes and their names come from the
    data. One ``WordTokenizer`` is fitted on every training set (``max_vocab`` words, texts
    cut to ``max_length`` tokens) and saved in the model's state dict with the encoder.
    A source without a validation split gets one, :data:`VALIDATION_FRACTION` of its
    training rows drawn with ``seed``; every epoch is evaluated on it (the history's
    ``<task>/<metric>`` columns), the test split only at the end. ``steps`` trains that
    many steps instead of ``epochs`` epochs. ``batching="by_length"`` batches texts of
    similar length together (the trainer's option), so a batch costs its real tokens.
    ``architecture="single_task"`` is the baseline: the same layers, but each task with its
    own copy of the encoder and its own hidden layer, so nothing is shared. ``data``, from
    :func:`load_text_tasks`, skips the loading (``tasks``, ``max_vocab``, ``max_length``
    and ``cache_dir`` are then the data's).
    """
    if architecture not in ARCHITECTURES:
        raise MtlzooError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    if steps is not None:
        _checks.positive_int("steps", steps)
    if data is not None and tasks is not None:
        raise MtlzooError("pass tasks= or data=, not both (data holds its tasks)")
    if data is None:
        data = load_text_tasks(tasks, max_vocab=max_vocab, max_length=max_length, seed=seed,
                               cache_dir=cache_dir)
        if progress:
            print(data.describe(), file=sys.stderr, flush=True)

    torch.manual_seed(seed)
    model_tasks = [
        Task(name) if len(classes) == 2
        else Task(name, kind="multiclass", num_classes=len(classes))
        for name, classes in data.classes.items()
    ]
    encoder = TextEncoder(tokenizer=data.tokenizer, embedding_dim=embedding_dim,
                          hidden_size=hidden_size, pooling=pooling)
    width = {"shared_bottom": "bottom_dims", "single_task": "hidden_dims"}[architecture]
    model = create_model(architecture, tasks=model_tasks, encoder=encoder,
                         **{width: (hidden_size,)}, tower_dims=())
    trainer = Trainer(model, weighting=weighting, lr=lr, batch_size=batch_size,
                      batching=batching, input_key="input_ids", seed=seed, progress=progress)
    length = {"epochs": epochs} if steps is None else {"steps": steps}
    trainer.fit({name: split["train"] for name, split in data.data.items()},
                eval={name: split["validation"] for name, split in data.data.items()},
                **length)
    return trainer, trainer.evaluate({name: split["test"] for name, split in data.data.items()})


def imdb_agnews(data_dir: str | os.PathLike | None = None, **options):
    """:func:`text_pair` on IMDb and AG News: from ``data_dir/imdb/`` and
    ``data_dir/ag_news/`` (local folders of ``train`` and ``test`` parquet or CSV files with
    ``text`` and ``label`` columns) or, without ``data_dir``, from the hub. ``options`` are
    :func:`text_pair`'s, with its defaults."""
    if data_dir is None:
        return text_pair(DEFAULT_TASKS, **options)
    root = Path(data_dir)
    return text_pair({task: root / name for task, name in DEFAULT_TASKS.items()}, **options)


@dataclass
class Comparison:
    """What :func:`compare_single_task` measured: per task the test accuracy's mean and
    standard deviation over the seeds for both models and multi - single (``summary``,
    indexed by task), one row per task, architecture and seed (``runs``), and the data's
    description (:meth:`TextTasks.describe` of the first seed)."""

    summary: object
    runs: object
    data: str


def compare_single_task(tasks: Mapping[str, object] | None = None, *, seeds: int = 3,
                        seed: int = 0, progress: bool = True, **options) -> Comparison:
    """The recipe (multi-task) and its single-task baseline, each on seeds ``seed``,
    ``seed + 1``, ...: a :class:`Comparison`. Each seed loads its data once (its own
    validation draw) for both models. ``options`` are :func:`text_pair`'s."""
    import pandas as pd

    _checks.positive_int("seeds", seeds)
    loading = {key: options.pop(key) for key in ("max_vocab", "max_length", "cache_dir")
               if key in options}
    rows, description = [], ""
    for run_seed in range(seed, seed + seeds):
        data = load_text_tasks(tasks, seed=run_seed, **loading)
        if run_seed == seed:
            description = data.describe()
            if progress:
                print(description, file=sys.stderr, flush=True)
        for architecture in ARCHITECTURES:
            _, table = text_pair(data=data, seed=run_seed, architecture=architecture,
                                 progress=progress, **options)
            rows += [{"task": task, "architecture": architecture, "seed": run_seed,
                      "accuracy": accuracy} for task, accuracy in table.accuracy.items()]
    runs = pd.DataFrame(rows)
    grouped = runs.groupby(["task", "architecture"], sort=False).accuracy

    def column(statistic: str, architecture: str):
        return getattr(grouped, statistic)().xs(architecture, level="architecture")

    summary = pd.DataFrame({
        "multi_task": column("mean", "shared_bottom"),
        "multi_std": column("std", "shared_bottom"),
        "single_task": column("mean", "single_task"),
        "single_std": column("std", "single_task"),
    })
    summary["difference"] = summary.multi_task - summary.single_task
    return Comparison(summary, runs, description)
