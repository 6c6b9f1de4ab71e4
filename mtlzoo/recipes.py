"""Recipes: published multi-task set-ups, end to end.

``imdb_agnews``: the classic hard-sharing text model. IMDb sentiment (binary) and AG News
topic (4 classes), one dataset per task, over one shared Embedding + BiLSTM encoder; each
step draws a batch from each dataset, each batch trains the encoder and only its own head,
and the sum of the two losses is minimised with Adam.
"""

from __future__ import annotations

import os
from itertools import chain
from pathlib import Path

import torch

from mtlzoo._registry import create_model
from mtlzoo.encoders import TextEncoder
from mtlzoo.errors import MtlzooError
from mtlzoo.tasks import Task
from mtlzoo.train import Trainer

# the recipe's multi-task model, and the single-task baseline of the same layers
ARCHITECTURES = ("shared_bottom", "single_task")
VALIDATION_FRACTION = 0.1  # of the training rows, where a source has no validation split


def with_validation(data, seed: int = 0):
    """``data`` (a ``DatasetDict``) with a ``validation`` split: its own when it has one,
    else :data:`VALIDATION_FRACTION` of ``train`` carved out at random from ``seed``."""
    import datasets

    if "validation" in data:
        return data
    parts = data["train"].train_test_split(test_size=VALIDATION_FRACTION, seed=seed)
    return datasets.DatasetDict({**data, "train": parts["train"], "validation": parts["test"]})


def imdb_agnews(
    data_dir: str | os.PathLike | None = None,
    *,
    epochs: int = 2,
    batch_size: int = 64,
    max_vocab: int = 20_000,
    max_length: int = 256,
    embedding_dim: int = 128,
    hidden_size: int = 128,
    pooling: str = "lstm",
    architecture: str = "shared_bottom",
    weighting: str = "equal",
    lr: float = 1e-3,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
):
    """Train the sentiment + topic model; returns ``(trainer, test metrics DataFrame)``.

    ``data_dir`` holds ``imdb/`` and ``ag_news/`` folders of local files (``train`` and
    ``test`` parquet or CSV with ``text`` and ``label`` columns, see
    ``mtlzoo.data.text.text_classification``); without it both come from the Hugging Face
    hub. One ``WordTokenizer`` is fitted on both training sets (``max_vocab`` words, texts
    cut to ``max_length`` tokens) and saved in the model's state dict with the encoder.
    A source without a validation split gets one: :data:`VALIDATION_FRACTION` of its
    training rows, drawn with ``seed``; every epoch is evaluated on it (the history's
    ``<task>/<metric>`` columns), the test split only at the end.
    ``architecture="single_task"`` is the baseline: the same layers, but each task with its
    own copy of the encoder and its own hidden layer, so nothing is shared.
    """
    if architecture not in ARCHITECTURES:
        raise MtlzooError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    from mtlzoo.data.text import num_classes, text_classification, tokenize_dataset
    from mtlzoo.tokenizer import WordTokenizer

    def load(name: str):
        local = None if data_dir is None else Path(data_dir) / name
        return with_validation(text_classification(name, data_dir=local, cache_dir=cache_dir),
                               seed)

    sentiment, topic = load("imdb"), load("ag_news")
    tokenizer = WordTokenizer(max_vocab=max_vocab, max_length=max_length)
    tokenizer.fit(chain(sentiment["train"]["text"], topic["train"]["text"]))
    topic_classes = num_classes(topic)
    sentiment, topic = tokenize_dataset(sentiment, tokenizer), tokenize_dataset(topic, tokenizer)

    torch.manual_seed(seed)
    tasks = [Task("sentiment"), Task("topic", kind="multiclass", num_classes=topic_classes)]
    encoder = TextEncoder(tokenizer=tokenizer, embedding_dim=embedding_dim,
                          hidden_size=hidden_size, pooling=pooling)
    width = {"shared_bottom": "bottom_dims", "single_task": "hidden_dims"}[architecture]
    model = create_model(architecture, tasks=tasks, encoder=encoder,
                         **{width: (hidden_size,)}, tower_dims=())
    trainer = Trainer(model, weighting=weighting, lr=lr, batch_size=batch_size,
                      input_key="input_ids", seed=seed, progress=progress)
    trainer.fit({"sentiment": sentiment["train"], "topic": topic["train"]},
                eval={"sentiment": sentiment["validation"], "topic": topic["validation"]},
                epochs=epochs)
    return trainer, trainer.evaluate({"sentiment": sentiment["test"], "topic": topic["test"]})
