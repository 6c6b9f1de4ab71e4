"""Text classification data: the IMDb / AG News loader on small local parquet and CSV files
(the hub is mocked, never reached), the word tokenizer (``mtlzoo.tokenizer``), and tokenised
fixed-shape batches.

Fixture folders have distinct names and every load uses a per-test datasets cache: a local
folder named like a hub id can fill the cache and be returned later for that id.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import datasets
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import mtlzoo.data
import mtlzoo.data.text
from mtlzoo import MtlzooError
from mtlzoo.data.batches import as_batches
from mtlzoo.data.text import (
    NUM_CLASSES,
    class_names,
    load_source,
    num_classes,
    text_classification,
    tokenize_dataset,
)
from mtlzoo.tokenizer import WordTokenizer, pad_batch

LOAD_DATASET = datasets.load_dataset

TRAIN = pd.DataFrame({
    "headline": ["Stocks rally on earnings", "Team wins the final", "New chip is fast",
                 "Talks resume in Geneva", "Markets slip", "Striker signs"],
    "topic": [2, 1, 3, 0, 2, 1],
    "source": ["a", "b", "c", "d", "e", "f"],
})
TEST = pd.DataFrame({
    "headline": ["Chip maker buys rival", "Cup final tonight"],
    "topic": [3, 1],
    "source": ["g", "h"],
})


def write(folder, name: str, frame: pd.DataFrame) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if name.endswith(".parquet"):
        frame.to_parquet(folder / name, index=False)
    else:
        frame.to_csv(folder / name, index=False)


@pytest.fixture(autouse=True)
def hub_answers(monkeypatch):
    """The tests that mock datasets.load_dataset make no network call, not even the probe."""
    monkeypatch.setattr(mtlzoo.data.text, "hub_reachable", lambda: True)


def load(tmp_path, name=None, **kwargs):
    return text_classification(name, cache_dir=tmp_path / "cache", text_column="headline",
                               label_column="topic", **kwargs)


# --- loading local files ---------------------------------------------------------------


@pytest.mark.parametrize("extension", [".parquet", ".csv"])
def test_data_dir_loads_renames_and_drops_columns(tmp_path, extension):
    folder = tmp_path / f"mtlzoo_text_dir_{extension[1:]}"
    write(folder, f"train{extension}", TRAIN)
    write(folder, f"test{extension}", TEST)
    data = load(tmp_path, "ag_news", data_dir=folder)
    assert list(data) == ["train", "test"]
    for split, frame in (("train", TRAIN), ("test", TEST)):
        assert data[split].column_names == ["text", "label"]
        assert data[split]["text"][:] == list(frame["headline"])
        assert data[split]["label"][:] == list(frame["topic"])
    label = data["train"].features["label"]
    assert isinstance(label, datasets.ClassLabel)
    assert label.names == ["World", "Sports", "Business", "Sci/Tech"]
    assert num_classes(data) == 4 == NUM_CLASSES["ag_news"]
    batch = data["train"].with_format("torch")[[0, 1]]
    assert batch["label"].dtype == torch.int64


@pytest.mark.parametrize("extension", [".parquet", ".csv"])
def test_data_files_without_a_name_keeps_plain_int64_labels(tmp_path, extension):
    folder = tmp_path / f"mtlzoo_text_files_{extension[1:]}"
    write(folder, f"fit{extension}", TRAIN)
    write(folder, f"held_out{extension}", TEST)
    data = load(tmp_path, data_files={"train": folder / f"fit{extension}",
                                      "test": str(folder / f"held_out{extension}")})
    assert list(data) == ["train", "test"]
    assert data["train"].features["label"] == datasets.Value("int64")
    assert data["test"]["text"][:] == list(TEST["headline"])
    assert num_classes(data) == 4  # max label + 1
    assert num_classes(data["test"]) == 4


def test_default_columns_validation_split_and_shards(tmp_path):
    folder = tmp_path / "mtlzoo_text_shards"
    plain = TRAIN.rename(columns={"headline": "text", "topic": "label"})
    write(folder, "train-00000-of-00002.parquet", plain.iloc[:4])
    write(folder, "train-00001-of-00002.parquet", plain.iloc[4:])
    write(folder, "validation.parquet", plain.iloc[:2])
    write(folder, "test-00000-of-00001.parquet", plain.iloc[2:])
    write(folder, "unsupervised-00000-of-00001.parquet", plain)  # not a split we read
    data = text_classification(data_dir=folder, cache_dir=tmp_path / "cache")
    assert sorted(data) == ["test", "train", "validation"]
    assert data["train"]["text"][:] == list(plain["text"])  # shards in name order
    assert data["train"].column_names == ["text", "label"]


def test_data_files_accepts_a_list_of_paths_per_split(tmp_path):
    folder = tmp_path / "mtlzoo_text_lists"
    write(folder, "a.csv", TRAIN.iloc[:3])
    write(folder, "b.csv", TRAIN.iloc[3:])
    write(folder, "c.csv", TEST)
    data = load(tmp_path, data_files={"train": [folder / "a.csv", folder / "b.csv"],
                                      "test": folder / "c.csv"})
    assert len(data["train"]) == len(TRAIN) and len(data["test"]) == len(TEST)


def test_mixed_formats_across_splits(tmp_path):
    folder = tmp_path / "mtlzoo_text_mixed"
    write(folder, "train.parquet", TRAIN)
    write(folder, "test.csv", TEST)
    data = load(tmp_path, "ag_news", data_dir=folder)
    assert list(data) == ["train", "test"]
    assert data["test"]["label"][:] == list(TEST["topic"])


def test_narrow_integer_labels_become_int64(tmp_path):
    folder = tmp_path / "mtlzoo_text_int8"
    write(folder, "train.parquet", TRAIN.astype({"topic": "int8"}))
    write(folder, "test.parquet", TEST.astype({"topic": "uint8"}))
    data = load(tmp_path, data_dir=folder)
    assert data["train"].features["label"] == datasets.Value("int64")
    assert data["test"].features["label"] == datasets.Value("int64")


# --- loading errors --------------------------------------------------------------------


def test_missing_column_names_it_and_the_columns_present(tmp_path):
    folder = tmp_path / "mtlzoo_text_no_label"
    write(folder, "train.parquet", TRAIN.drop(columns="topic"))
    write(folder, "test.parquet", TEST.drop(columns="topic"))
    with pytest.raises(MtlzooError, match=r"no label column 'topic'.*'headline'.*'source'"):
        load(tmp_path, data_dir=folder)
    with pytest.raises(MtlzooError, match=r"no text column 'body'"):
        text_classification(data_dir=folder, text_column="body", label_column="source",
                            cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("extension", [".parquet", ".csv"])
def test_an_empty_split_is_an_error(tmp_path, extension):
    folder = tmp_path / f"mtlzoo_text_empty_{extension[1:]}"
    write(folder, f"train{extension}", TRAIN)
    if extension == ".parquet":
        schema = pa.schema([("headline", pa.string()), ("topic", pa.int64())])
        pq.write_table(schema.empty_table(), folder / "test.parquet")
    else:
        (folder / "test.csv").write_text("headline,topic\n")
    with pytest.raises(MtlzooError, match="no rows"):
        load(tmp_path, data_dir=folder)


def test_an_empty_split_from_the_hub_is_an_error(tmp_path, monkeypatch):
    empty = datasets.Dataset.from_dict({"text": [], "label": []},
                                       features=datasets.Features({
                                           "text": datasets.Value("string"),
                                           "label": datasets.Value("int64")}))
    fake = datasets.DatasetDict({"train": hub_split(["good"], [1]), "test": empty})
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: fake)
    with pytest.raises(MtlzooError, match="split 'test' is empty"):
        text_classification("imdb", cache_dir=tmp_path / "cache")


@pytest.mark.parametrize(
    ("name", "labels", "message"),
    [
        ("imdb", [0, 1, 2, 1, 0, 1], r"span 0\.\.2, but imdb has 2 classes \(0\.\.1"),
        ("ag_news", [0, 1, 4, 1, 0, 1], r"span 0\.\.4, but ag_news has 4 classes"),
        ("ag_news", [0, -1, 2, 1, 0, 1], r"span -1\.\.2"),
        (None, [0, -1, 2, 1, 0, 1], r"span -1\.\.2.*non-negative"),
        (None, [0.0, 1.5, 2.0, 1.0, 0.0, 1.0], r"must hold class ids.*double"),
        (None, ["pos", "neg", "pos", "neg", "pos", "neg"],
             r"class names \(strings\) in split 'train'.*class ids \(numbers\) in split 'test'"),
        (None, [True, False, True, False, True, False], r"must hold class ids.*bool"),
    ],
)
def test_bad_labels(tmp_path, name, labels, message):
    folder = tmp_path / f"mtlzoo_text_labels_{name}"
    write(folder, "train.parquet", TRAIN.assign(topic=labels))
    write(folder, "test.parquet", TEST)
    with pytest.raises(MtlzooError, match=message):
        load(tmp_path, name, data_dir=folder)


def test_null_labels_and_null_text_are_errors(tmp_path):
    folder = tmp_path / "mtlzoo_text_nulls"
    (folder).mkdir()
    (folder / "train.csv").write_text("headline,topic\nfine,1\n,0\n")
    (folder / "test.csv").write_text("headline,topic\nfine,1\nno label,\n")
    with pytest.raises(MtlzooError, match=r"split 'train': 1 rows have no text"):
        load(tmp_path, data_files={"train": folder / "train.csv"})
    with pytest.raises(MtlzooError, match=r"split 'test': 1 rows have no label"):
        load(tmp_path, data_files={"test": folder / "test.csv"})


def test_non_string_text_is_an_error(tmp_path):
    folder = tmp_path / "mtlzoo_text_numbers"
    write(folder, "train.parquet", TRAIN.assign(headline=range(len(TRAIN))))
    with pytest.raises(MtlzooError, match="must hold strings, got int64"):
        load(tmp_path, data_files={"train": folder / "train.parquet"})


def test_data_dir_errors(tmp_path):
    folder = tmp_path / "mtlzoo_text_partial"
    write(folder, "train.parquet", TRAIN)
    write(folder, "notes.csv", TEST)
    with pytest.raises(MtlzooError, match=r"no test file.*found \['notes.csv', 'train.parquet'\]"):
        load(tmp_path, data_dir=folder)
    with pytest.raises(MtlzooError, match="is not a folder"):
        load(tmp_path, data_dir=folder / "train.parquet")
    write(folder, "test.parquet", TEST)
    write(folder, "test.csv", TEST)
    with pytest.raises(MtlzooError, match="two formats"):
        load(tmp_path, data_dir=folder)


def test_data_files_errors(tmp_path):
    folder = tmp_path / "mtlzoo_text_bad_files"
    write(folder, "train.parquet", TRAIN)
    (folder / "train.json").write_text("{}")
    with pytest.raises(MtlzooError, match=r"does not exist"):
        load(tmp_path, data_files={"train": folder / "missing.parquet"})
    with pytest.raises(MtlzooError, match=r"\.parquet or \.csv"):
        load(tmp_path, data_files={"train": folder / "train.json"})
    with pytest.raises(MtlzooError, match="non-empty dict"):
        load(tmp_path, data_files=str(folder / "train.parquet"))
    with pytest.raises(MtlzooError, match="a path or a list of paths"):
        load(tmp_path, data_files={"train": 3})
    with pytest.raises(MtlzooError, match="not both"):
        load(tmp_path, data_dir=folder, data_files={"train": folder / "train.parquet"})
    (folder / "broken.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(MtlzooError, match=r"could not read parquet file .*broken\.parquet"):
        load(tmp_path, data_files={"train": folder / "broken.parquet"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "needs a dataset name"),
        ({"name": "./imdb"}, "name must be a hub id"),
        ({"name": 3}, "name must be a hub id"),
        ({"name": "imdb", "text_column": ""}, "text_column must be a non-empty"),
        ({"name": "imdb", "text_column": "x", "label_column": "x"}, "both 'x'"),
    ],
)
def test_argument_errors(tmp_path, kwargs, message):
    with pytest.raises(MtlzooError, match=message):
        text_classification(cache_dir=tmp_path / "cache", **kwargs)


# --- the hub, mocked -------------------------------------------------------------------


def hub_split(texts, labels, names=("neg", "pos")):
    return datasets.Dataset.from_dict(
        {"text": texts, "label": labels},
        features=datasets.Features({"text": datasets.Value("string"),
                                    "label": datasets.ClassLabel(names=list(names))}),
    )


@pytest.mark.parametrize(
    ("name", "hub_id"),
    [
        ("imdb", "stanfordnlp/imdb"),
        ("stanfordnlp/imdb", "stanfordnlp/imdb"),
        ("IMDb", "stanfordnlp/imdb"),
        ("ag_news", "fancyzhx/ag_news"),
        ("fancyzhx/ag_news", "fancyzhx/ag_news"),
    ],
)
def test_names_and_aliases_load_the_hub_id(tmp_path, monkeypatch, name, hub_id):
    calls = []
    names = ("neg", "pos") if "imdb" in hub_id else ("World", "Sports", "Business", "Sci/Tech")
    fake = datasets.DatasetDict({
        "train": hub_split(["good film", "bad film"], [1, 0], names),
        "test": hub_split(["fine"], [1], names),
    })
    if "imdb" in hub_id:  # IMDb's unlabelled reviews carry label -1 and must not come back
        fake["unsupervised"] = datasets.Dataset.from_dict({"text": ["?"], "label": [-1]})

    def fake_load(path, **kwargs):
        calls.append((path, kwargs))
        return fake

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    data = text_classification(name, cache_dir=tmp_path / "cache")
    assert calls == [(hub_id, {"cache_dir": str(tmp_path / "cache")})]
    assert list(data) == ["train", "test"]
    assert num_classes(data) == len(names)


def test_ag_news_keeps_every_labelled_split(tmp_path, monkeypatch):
    names = ("World", "Sports", "Business", "Sci/Tech")
    fake = datasets.DatasetDict({"train": hub_split(["a", "b"], [0, 3], names),
                                 "test": hub_split(["c"], [2], names)})
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: fake)
    data = text_classification("ag_news", cache_dir=tmp_path / "cache")
    assert list(data) == ["train", "test"] and num_classes(data) == 4


@pytest.mark.parametrize(
    "error",
    [
        ConnectionError("Couldn't reach 'stanfordnlp/imdb' on the Hub (OfflineModeIsEnabled)"),
        ConnectionError("Couldn't reach 'stanfordnlp/imdb' on the Hub (LocalEntryNotFoundError)"),
        TimeoutError("timed out"),
    ],
)
def test_offline_hub_asks_for_local_files(tmp_path, monkeypatch, error):
    def offline(*args, **kwargs):
        raise error

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(MtlzooError) as caught:
        text_classification("imdb", cache_dir=tmp_path / "cache")
    message = str(caught.value)
    assert "'stanfordnlp/imdb'" in message and type(error).__name__ in message
    for hint in ("data_dir=", "data_files=", "train.parquet", "test.parquet", ".csv",
                 "'text' column", "'label' column", "0..1"):
        assert hint in message
    assert caught.value.__cause__ is error


def test_offline_hint_names_the_columns_asked_for(tmp_path, monkeypatch):
    from huggingface_hub.errors import OfflineModeIsEnabled

    def offline(*args, **kwargs):
        raise OfflineModeIsEnabled("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(MtlzooError, match=r"'body' column.*'stars' column \(an integer in 0\.\.3"):
        text_classification("ag_news", text_column="body", label_column="stars",
                            cache_dir=tmp_path / "cache")


def test_local_files_never_reach_the_hub(tmp_path, monkeypatch):
    folder = tmp_path / "mtlzoo_text_offline"
    write(folder, "train.csv", TRAIN)
    write(folder, "test.csv", TEST)
    real = datasets.load_dataset

    def packaged_only(path, *args, **kwargs):
        assert path in ("parquet", "csv"), path
        return real(path, *args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", packaged_only)
    assert len(load(tmp_path, "ag_news", data_dir=folder)["train"]) == len(TRAIN)


def test_num_classes_errors():
    with pytest.raises(MtlzooError, match="DatasetDict or Dataset"):
        num_classes({"train": [1, 2]})
    with pytest.raises(MtlzooError, match="no 'label' column"):
        num_classes(datasets.Dataset.from_dict({"text": ["a"]}))


# --- the tokenizer ---------------------------------------------------------------------

TEXTS = ["the cat sat on the mat", "The dog ate the cat's food", "a cat"]


def test_vocabulary_order_size_cap_and_special_ids():
    tokenizer = WordTokenizer().fit(TEXTS)
    # the 4, cat 2 (cat's is its own word), then count-1 words alphabetically
    assert tokenizer.vocab == ["<pad>", "<unk>", "the", "cat", "a", "ate", "cat's", "dog",
                               "food", "mat", "on", "sat"]
    assert tokenizer.pad_id == 0 and tokenizer.unk_id == 1
    assert len(tokenizer) == len(tokenizer.vocab) == 12
    capped = WordTokenizer(max_vocab=3).fit(TEXTS)
    assert capped.vocab == ["<pad>", "<unk>", "the", "cat", "a"]
    assert len(capped) == 3 + 2


def test_ties_are_alphabetical_whatever_the_text_order():
    texts = ["zebra apple mango", "mango zebra apple", "kiwi"]
    forward = WordTokenizer().fit(texts)
    backward = WordTokenizer().fit(list(reversed(texts)))
    assert forward.vocab == backward.vocab == ["<pad>", "<unk>", "apple", "mango", "zebra",
                                               "kiwi"]


def test_fit_is_deterministic_and_refit_replaces():
    first, second = WordTokenizer().fit(TEXTS), WordTokenizer().fit(iter(TEXTS))
    assert first.state_dict() == second.state_dict()
    assert first.fingerprint() == second.fingerprint()
    first.fit(["only words here"])
    assert first.vocab == ["<pad>", "<unk>", "here", "only", "words"]
    assert first.fingerprint() != second.fingerprint()


@pytest.mark.parametrize(
    ("text", "lowercase", "words"),
    [
        ("Don't STOP_now!", True, ["don't", "stop", "now"]),
        ("Don't STOP_now!", False, ["Don't", "STOP", "now"]),
        ("Great!<br /><br />Loved it<BR>", True, ["great", "loved", "it"]),
        ("'quoted' rock'n'roll 3.14", True, ["quoted", "rock'n'roll", "3", "14"]),
        ("Café Zürich — naïve", True, ["café", "zürich", "naïve"]),
        ("", True, []),
        ("... !!! --", True, []),
    ],
)
def test_tokenize_rules(text, lowercase, words):
    assert WordTokenizer(lowercase=lowercase).tokenize(text) == words


def test_lowercase_setting_changes_the_vocabulary():
    assert WordTokenizer().fit(["Cat cat CAT"]).vocab == ["<pad>", "<unk>", "cat"]
    assert WordTokenizer(lowercase=False).fit(["Cat cat CAT"]).vocab == [
        "<pad>", "<unk>", "CAT", "Cat", "cat"]


def test_encode_truncates_pads_and_maps_unknown_words_to_one():
    tokenizer = WordTokenizer(max_length=4).fit(TEXTS)
    ids = tokenizer.encode(["the cat", "the zebra sat on the big mat", "CAT"])
    the, cat, sat, on = (tokenizer.vocab.index(w) for w in ("the", "cat", "sat", "on"))
    assert ids.dtype == torch.int64
    assert ids.tolist() == [[the, cat, 0, 0], [the, 1, sat, on], [cat, 0, 0, 0]]
    # L is the longest row of the call, never more than max_length
    assert tokenizer.encode(["the cat"]).shape == (1, 2)
    assert tokenizer.encode(["the cat"], max_length=1).tolist() == [[the]]
    assert tokenizer.encode_ids(["the zebra sat on the mat"]) == [[the, 1, sat, on]]


def test_a_text_with_no_word_is_one_unk_never_all_padding():
    tokenizer = WordTokenizer().fit(TEXTS)
    ids = tokenizer.encode(["", "   ", "?!", "the"])
    assert ids.tolist() == [[1], [1], [1], [tokenizer.vocab.index("the")]]
    assert (ids != tokenizer.pad_id).any(dim=1).all()
    assert tokenizer.encode_ids(["..."]) == [[1]]


def test_encode_edge_cases_and_errors():
    tokenizer = WordTokenizer()
    with pytest.raises(MtlzooError, match="call fit"):
        tokenizer.encode(["x"])
    with pytest.raises(MtlzooError, match="call fit"):
        tokenizer.state_dict()
    assert len(tokenizer) == 2 and tokenizer.vocab == ["<pad>", "<unk>"]
    assert not tokenizer.fitted and "unfitted" in repr(tokenizer)
    tokenizer.fit(TEXTS)
    assert tokenizer.fitted
    assert tokenizer.encode([]).shape == (0, 0)
    with pytest.raises(MtlzooError, match="list of texts"):
        tokenizer.encode("the cat")
    with pytest.raises(MtlzooError, match="text 1 is int"):
        tokenizer.encode(["the", 3])
    with pytest.raises(MtlzooError, match="text 0 is NoneType"):
        WordTokenizer().fit([None])
    with pytest.raises(MtlzooError, match="max_length must be a positive integer"):
        tokenizer.encode(["the"], max_length=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_vocab": 0}, "max_vocab"),
        ({"max_length": 2.5}, "max_length"),
        ({"max_length": True}, "max_length"),
        ({"lowercase": "yes"}, "lowercase"),
    ],
)
def test_constructor_errors(kwargs, message):
    with pytest.raises(MtlzooError, match=message):
        WordTokenizer(**kwargs)


def plain(value) -> bool:
    """Only the types torch.load(weights_only=True) rebuilds without an allow-list."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(plain(v) for v in value)
    return isinstance(value, (str, int, bool))


def test_state_dict_round_trip_through_a_weights_only_checkpoint(tmp_path):
    tokenizer = WordTokenizer(max_vocab=50, max_length=7, lowercase=False).fit(
        [*TEXTS, "Café déjà vu"])
    state = tokenizer.state_dict()
    assert plain(state)
    assert state["vocab"] == tokenizer.vocab
    checkpoint = {"model": {"weight": torch.randn(3, 2)}, "tokenizer": state}
    torch.save(checkpoint, tmp_path / "checkpoint.pt")
    loaded = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    restored = WordTokenizer.from_state_dict(loaded["tokenizer"])
    assert restored.state_dict() == state
    assert (restored.max_vocab, restored.max_length, restored.lowercase) == (50, 7, False)
    probe = ["The cat ate", "Café unknown", ""]
    assert torch.equal(restored.encode(probe), tokenizer.encode(probe))


def test_json_save_and_load(tmp_path):
    tokenizer = WordTokenizer(max_length=5).fit([*TEXTS, "naïve café"])
    tokenizer.save(tmp_path / "tokenizer.json")
    state = json.loads((tmp_path / "tokenizer.json").read_text("utf-8"))
    assert state["vocab"] == tokenizer.vocab and state["max_length"] == 5
    restored = WordTokenizer.load(tmp_path / "tokenizer.json")
    assert restored.vocab == tokenizer.vocab
    assert torch.equal(restored.encode(TEXTS), tokenizer.encode(TEXTS))
    with pytest.raises(MtlzooError, match="cannot read a WordTokenizer"):
        WordTokenizer.load(tmp_path / "missing.json")
    (tmp_path / "garbage.json").write_text("not json")
    with pytest.raises(MtlzooError, match="cannot read a WordTokenizer"):
        WordTokenizer.load(tmp_path / "garbage.json")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "other"}, "not a WordTokenizer state_dict"),
        ({"version": 99}, "version 99"),
        ({"vocab": ["<unk>", "<pad>", "a"]}, "starting with"),
        ({"vocab": ["<pad>", "<unk>", "a", "a"]}, "distinct"),
        ({"vocab": ["<pad>", "<unk>", 3]}, "list of distinct str"),
        ({"max_length": -1}, "max_length"),
    ],
)
def test_from_state_dict_rejects_bad_states(change, message):
    state = {**WordTokenizer().fit(["a b"]).state_dict(), **change}
    with pytest.raises(MtlzooError, match=message):
        WordTokenizer.from_state_dict(state)
    missing = WordTokenizer().fit(["a b"]).state_dict()
    del missing["vocab"]
    with pytest.raises(MtlzooError, match=r"lacks \['vocab'\]"):
        WordTokenizer.from_state_dict(missing)


def test_pad_batch():
    assert pad_batch([[3, 4, 5], [6], []]).tolist() == [[3, 4, 5], [6, 0, 0], [0, 0, 0]]
    padded = pad_batch([(3,), [6, 7]], pad_id=9, length=4, dtype=torch.int32)
    assert padded.dtype == torch.int32 and padded.tolist() == [[3, 9, 9, 9], [6, 7, 9, 9]]
    assert pad_batch([]).shape == (0, 0)
    with pytest.raises(MtlzooError, match="does not fit length=2"):
        pad_batch([[1, 2, 3]], length=2)


# --- tokenised datasets ----------------------------------------------------------------


def small_dict():
    return datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": [*TEXTS, "", "cat"],
                                             "label": [0, 1, 0, 1, 1]}),
        "test": datasets.Dataset.from_dict({"text": ["the unknown cat", "mat"],
                                            "label": [1, 0]}),
    })


def test_tokenize_dataset_gives_fixed_shape_torch_batches():
    data = small_dict()
    tokenizer = WordTokenizer(max_length=5).fit(data["train"]["text"])
    tokenized = tokenize_dataset(data, tokenizer, batch_size=2)
    for split in ("train", "test"):
        assert tokenized[split].column_names == ["label", "input_ids"]
        feature = tokenized[split].features["input_ids"]
        assert feature.feature == datasets.Value("int32") and feature.length == 5
        batch = tokenized[split].with_format("torch")[list(range(len(data[split])))]
        assert batch["input_ids"].shape == (len(data[split]), 5)
        assert batch["input_ids"].dtype == torch.int64
        assert batch["label"].tolist() == data[split]["label"][:]
        expected = pad_batch(tokenizer.encode_ids(data[split]["text"][:]), length=5)
        assert torch.equal(batch["input_ids"], expected)
        assert ((batch["input_ids"] != 0).sum(1) >= 1).all()  # lengths from the ids
    # the trainer's own fetcher reads equal-shape batches
    source = as_batches(tokenized["train"], "train", batch_size=2, shuffle=True, seed=0)
    shapes = [tuple(b["input_ids"].shape) for b in source.passes(0)]
    assert shapes == [(2, 5), (2, 5), (1, 5)]


def test_tokenize_dataset_options():
    data = small_dict()
    tokenizer = WordTokenizer(max_length=5).fit(data["train"]["text"])
    short = tokenize_dataset(data, tokenizer, max_length=2, keep_text=True)
    assert short["train"].column_names == ["text", "label", "input_ids"]
    assert short["train"].with_format("torch")[[0]]["input_ids"].shape == (1, 2)
    single = tokenize_dataset(data["test"], tokenizer)
    assert isinstance(single, datasets.Dataset) and single.column_names == ["label", "input_ids"]
    assert len(single[0]["input_ids"]) == 5
    with pytest.raises(MtlzooError, match="call fit"):
        tokenize_dataset(data, WordTokenizer())
    with pytest.raises(MtlzooError, match="no 'text' column"):
        tokenize_dataset(datasets.Dataset.from_dict({"body": ["a"]}), tokenizer)
    with pytest.raises(MtlzooError, match="must be a WordTokenizer"):
        tokenize_dataset(data, object())
    with pytest.raises(MtlzooError, match="DatasetDict or Dataset"):
        tokenize_dataset({"train": ["a"]}, tokenizer)


def test_loaded_files_to_batches_end_to_end(tmp_path):
    folder = tmp_path / "mtlzoo_text_end_to_end"
    write(folder, "train.parquet", TRAIN)
    write(folder, "test.csv", TEST)
    data = load(tmp_path, "ag_news", data_dir=folder)
    tokenizer = WordTokenizer(max_length=6).fit(data["train"]["text"])
    first = tokenize_dataset(data, tokenizer)
    again = tokenize_dataset(data, tokenizer)  # the same fingerprint: read from the cache
    assert first["train"]._fingerprint == again["train"]._fingerprint
    other = tokenize_dataset(data, WordTokenizer(max_length=6, max_vocab=2).fit(
        data["train"]["text"]))
    assert other["train"]._fingerprint != first["train"]._fingerprint
    batch = first["test"].with_format("torch")[[0, 1]]
    assert batch["input_ids"].shape == (2, 6) and batch["label"].tolist() == [3, 1]


def test_one_vocabulary_over_two_datasets():
    reviews = ["a great film", "a dull film"]
    news = ["film studio shares rise", "great match"]
    tokenizer = WordTokenizer().fit(itertools.chain(reviews, news))
    assert tokenizer.vocab[:5] == ["<pad>", "<unk>", "film", "a", "great"]


def test_tokenizer_is_one_class_under_every_documented_import_path():
    assert mtlzoo.data.WordTokenizer is WordTokenizer
    assert mtlzoo.data.pad_batch is pad_batch
    assert mtlzoo.data.text.WordTokenizer is WordTokenizer  # as in docs/data_text.md


def test_import_stays_light():
    code = ("import sys, mtlzoo, mtlzoo.data.text, mtlzoo.tokenizer, mtlzoo.encoders; "
            "print('pandas' in sys.modules, 'datasets' in sys.modules, "
            "'pyarrow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.split() == ["False", "False", "False"]


def test_real_offline_mode_gives_the_guidance(tmp_path):
    """With HF_HUB_OFFLINE set (read when datasets is imported) the real loader fails at once,
    with no network call, and the error says how to load local files."""
    code = (
        "from mtlzoo import MtlzooError\n"
        "from mtlzoo.data.text import text_classification\n"
        "try:\n"
        f"    text_classification('ag_news', cache_dir={str(tmp_path / 'cache')!r})\n"
        "except MtlzooError as error:\n"
        "    print(type(error.__cause__).__name__, 'data_dir=' in str(error))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf_home")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, env=env, timeout=120)
    assert result.stdout.split()[-1] == "True", result.stdout + result.stderr


# --- classes from the data, any source -------------------------------------------------


def test_class_names_given_as_strings_become_sorted_ids(tmp_path):
    folder = tmp_path / "mtlzoo_text_named_labels"
    names = ["earn", "acq", "crude", "trade", "acq", "earn"]
    write(folder, "train.csv", TRAIN.assign(topic=names))
    write(folder, "test.csv", TEST.assign(topic=["trade", "crude"]))
    data = load(tmp_path, data_dir=folder)
    assert class_names(data) == ("acq", "crude", "earn", "trade") and num_classes(data) == 4
    assert data["train"]["label"] == [2, 0, 1, 3, 0, 2]
    assert data["test"]["label"] == [3, 1]


def test_known_dataset_names_keep_the_hubs_order(tmp_path):
    folder = tmp_path / "mtlzoo_text_named_imdb"
    write(folder, "train.parquet", TRAIN.assign(topic=["pos", "neg"] * 3))
    write(folder, "test.parquet", TEST.assign(topic=["neg", "neg"]))
    data = load(tmp_path, "imdb", data_dir=folder)
    assert class_names(data) == ("neg", "pos") and data["train"]["label"][:2] == [1, 0]
    write(folder, "test.parquet", TEST.assign(topic=["neg", "good"]))
    with pytest.raises(MtlzooError, match=r"label 'good'.*not a class of imdb \(neg, pos\)"):
        load(tmp_path, "imdb", data_dir=folder)


def test_integer_labels_are_named_by_their_ids(tmp_path):
    folder = tmp_path / "mtlzoo_text_eight_classes"
    write(folder, "train.parquet", TRAIN.assign(topic=[0, 7, 3, 5, 1, 2]))
    write(folder, "test.parquet", TEST)
    data = load(tmp_path, data_dir=folder)
    assert num_classes(data) == 8 and class_names(data) == tuple("01234567")


def test_any_hub_id_loads_with_its_own_classes(tmp_path, monkeypatch):
    names = ("negative", "neutral", "positive")
    fake = datasets.DatasetDict({
        "train": hub_split(["good", "bad", "so so"], [2, 0, 1], names),
        "validation": hub_split(["fine"], [2], names),
        "test": hub_split(["?", "!"], [-1, -1], names),  # GLUE-style: no test labels
    })
    calls = []
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda path, **kwargs: calls.append(path) or fake)
    data = text_classification("someone/tweets", cache_dir=tmp_path / "cache")
    assert calls == ["someone/tweets"]
    assert list(data) == ["train", "validation"] and class_names(data) == names


def test_an_unknown_hub_id_offline_suggests_a_known_one(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'imbd' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(MtlzooError, match=r"could not load 'imbd'.*did you mean 'imdb'\?"):
        text_classification("imbd", cache_dir=tmp_path / "cache")


def test_load_source_takes_a_folder_a_file_files_a_dataset_or_a_hub_id(tmp_path, monkeypatch):
    folder = tmp_path / "mtlzoo_source_folder"
    write(folder, "train.parquet", TRAIN.rename(columns={"headline": "text", "topic": "label"}))
    write(folder, "test.parquet", TEST.rename(columns={"headline": "text", "topic": "label"}))
    cache = tmp_path / "cache"
    from_folder = load_source(folder, cache_dir=cache)
    assert list(from_folder) == ["train", "test"] and len(from_folder["train"]) == 6
    from_file = load_source(str(folder / "train.parquet"), cache_dir=cache)
    assert list(from_file) == ["train"] and len(from_file["train"]) == 6
    from_files = load_source({"train": folder / "train.parquet", "test": folder / "test.parquet"},
                             cache_dir=cache)
    assert list(from_files) == ["train", "test"]
    assert load_source(from_folder) is from_folder
    monkeypatch.setattr(datasets, "load_dataset", lambda path, **kwargs: datasets.DatasetDict(
        {"train": hub_split(["good", "bad"], [1, 0])}))
    assert class_names(load_source("rotten_tomatoes", cache_dir=cache)) == ("neg", "pos")
    for missing in ("./no_such_folder", "reviews.csv", str(tmp_path / "nope"), "/abs/nope"):
        with pytest.raises(MtlzooError, match=f"text source {missing!r}: no such folder or file"):
            load_source(missing, cache_dir=cache)
    with pytest.raises(MtlzooError, match="a folder, a file, a dict of split files or a hub id"):
        load_source(3)


def test_an_unreachable_hub_fails_in_seconds_not_half_a_minute(tmp_path):
    """The hub's address is probed first; when it does not answer, datasets' offline mode
    is used for the call instead of five retries with back-off (27 s before)."""
    code = (
        "import time\n"
        "from mtlzoo import MtlzooError\n"
        "from mtlzoo.data.text import text_classification\n"
        "start = time.perf_counter()\n"
        "try:\n"
        f"    text_classification('imdb', cache_dir={str(tmp_path / 'cache')!r})\n"
        "except MtlzooError as error:\n"
        "    print(error)\n"
        "    print('data_dir=' in str(error), round(time.perf_counter() - start, 1))\n"
    )
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("HF_") and "proxy" not in key.lower()}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf_home"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=120)
    found, seconds = result.stdout.split()[-2:]
    assert found == "True", result.stdout + result.stderr
    assert "http://127.0.0.1:9 did not answer within 3 s" in result.stdout
    assert float(seconds) < 10, result.stderr


def test_a_local_folder_wins_over_the_hub_id_of_its_name(tmp_path, monkeypatch):
    """As datasets.load_dataset("imdb") itself does: an imdb/ folder in the working
    directory is read, not the hub (docs/data_text.md)."""
    asked = []

    def load_dataset(path, *args, **kwargs):
        asked.append(path)
        return LOAD_DATASET(path, *args, **kwargs)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    for split, frame in (("train", TRAIN), ("test", TEST)):
        write(tmp_path / "imdb", f"{split}.parquet",
              frame.rename(columns={"headline": "text", "topic": "label"}))
    data = load_source("imdb", cache_dir=tmp_path / "cache")
    assert set(asked) == {"parquet"} and list(data) == ["train", "test"]
    assert num_classes(data) == 4  # not IMDb's 2: the folder's own labels
