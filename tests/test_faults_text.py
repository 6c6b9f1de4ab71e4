"""Faults in text data, as a new user meets them with bad local files: every loader error
is an MtlzooError that names the wrong file (not just its split, and not the good files
next to it) and keeps the underlying cause; empty or blank texts are rejected as the docs
say; tokenize_dataset names the split and row of a bad text.

Every test writes its own small files in tmp_path and loads with its own datasets cache;
nothing reaches the hub.
"""

from __future__ import annotations

import re

import datasets
import pandas as pd
import pytest

from mtlzoo import MtlzooError
from mtlzoo.data.text import text_classification, tokenize_dataset
from mtlzoo.tokenizer import WordTokenizer


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test here may reach the hub: offline switches on (datasets reads them at import,
    so its config flag too)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)


GOOD = pd.DataFrame({"text": ["a fine film", "too long", "great cast"], "label": [1, 0, 1]})


def put(folder, name: str, content) -> str:
    """Write ``content`` (a DataFrame, str or bytes) to ``folder/name``; return the path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if isinstance(content, pd.DataFrame):
        if name.endswith(".parquet"):
            content.to_parquet(path, index=False)
        else:
            content.to_csv(path, index=False)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


def load_error(tmp_path, files, **kwargs) -> MtlzooError:
    with pytest.raises(MtlzooError) as caught:
        text_classification(data_files=files, cache_dir=tmp_path / "cache", **kwargs)
    return caught.value


def names_only(error: MtlzooError, bad: str, *good: str) -> str:
    """The message names the bad file and none of the good ones; returns the message."""
    message = str(error)
    assert repr(bad) in message, message
    for path in good:
        assert path not in message, message
    return message


# --- files that cannot be read: the file, not its split, and the cause ------------------


@pytest.mark.parametrize(
    ("content", "cause", "short"),
    [
        # a row with more fields than the header
        ("text,label\nfine,1\n\"a, b\",1,extra,more\nok,0\n", pd.errors.ParserError,
         "Expected 2 fields in line 3, saw 4"),
        # a quote that never closes
        ("text,label\nfine,1\n\"never closed,1\nok,0\n", pd.errors.ParserError,
         "EOF inside string"),
        # binary junk named .csv: its first line reads as a header of junk column names
        (bytes(range(256)) * 4, None, "no text column 'text' (columns: ['\\x00\\x01"),
    ],
    ids=["extra-fields", "open-quote", "binary"],
)
def test_an_unreadable_csv_of_the_second_split_is_named_with_its_cause(
        tmp_path, content, cause, short):
    train = put(tmp_path / "files", "train.csv", GOOD)
    test = put(tmp_path / "files", "test.csv", content)
    error = load_error(tmp_path, {"train": train, "test": test})
    message = names_only(error, test, train)
    assert short in message
    if cause is not None:
        assert isinstance(error.__cause__, cause), repr(error.__cause__)


def test_non_utf8_bytes_deep_in_a_csv_name_the_file_and_the_decode_error(tmp_path):
    # past the first rows, so only the full read meets the bad byte
    body = "text,label\n" + "fine words,1\n" * 30_000 + "caf\xe9,0\n"
    train = put(tmp_path / "files", "train.csv", GOOD)
    test = put(tmp_path / "files", "test.csv", body.encode("latin-1"))
    error = load_error(tmp_path, {"train": train, "test": test})
    message = names_only(error, test, train)
    assert "UnicodeDecodeError" in message and "utf-8" in message
    assert isinstance(error.__cause__, UnicodeDecodeError)


@pytest.mark.parametrize("extension", [".csv", ".parquet"])
def test_a_file_of_the_wrong_format_is_named_with_its_cause(tmp_path, extension):
    train = put(tmp_path / "files", "train.csv", GOOD)
    wrong = {".parquet": "text,label\nplain text,1\n",  # a CSV named .parquet
             ".csv": '{"text": "a", "label": 1}\n{"text": broken\n'}[extension]  # JSON lines
    test = put(tmp_path / "files", f"test{extension}", wrong)
    error = load_error(tmp_path, {"train": train, "test": test})
    message = names_only(error, test, train)
    if extension == ".parquet":
        assert "ArrowInvalid" in message and error.__cause__ is not None
    else:  # read as CSV, the JSON line gives no 'text' column: say which columns it has
        assert "no text column 'text'" in message and '{"text": "a"' in message


@pytest.mark.parametrize("extension", [".csv", ".parquet"])
def test_a_missing_column_in_one_of_several_files_of_a_split_names_that_file(
        tmp_path, extension):
    folder = tmp_path / "files"
    first = put(folder, f"train-0{extension}", GOOD)
    second = put(folder, f"train-1{extension}", GOOD.rename(columns={"text": "review"}))
    test = put(folder, f"test{extension}", GOOD)
    error = load_error(tmp_path, {"train": [first, second], "test": test})
    message = names_only(error, second, first, test)
    assert "no text column 'text'" in message and "'review'" in message


def test_a_label_type_clash_between_files_of_a_split_names_the_odd_file(tmp_path):
    folder = tmp_path / "files"
    first = put(folder, "train-0.csv", GOOD)
    second = put(folder, "train-1.csv", GOOD.assign(label=["pos", "neg", "pos"]))
    test = put(folder, "test.csv", GOOD)
    error = load_error(tmp_path, {"train": [first, second], "test": test})
    message = names_only(error, second, test)
    assert "'label'" in message and error.__cause__ is not None


def test_string_labels_in_the_second_split_name_its_file(tmp_path):
    train = put(tmp_path / "files", "train.csv", GOOD)
    test = put(tmp_path / "files", "test.csv", GOOD.assign(label=["pos", "neg", "pos"]))
    error = load_error(tmp_path, {"train": train, "test": test})
    message = str(error)
    assert f"class names (strings) in split 'test'; read from {test!r}" in message
    assert f"class ids (numbers) in split 'train'; read from {train!r}" in message


@pytest.mark.parametrize("name", ["plain_text", "shards.parquet"])
def test_a_folder_given_as_a_data_file_is_called_a_folder(tmp_path, name):
    (tmp_path / name).mkdir()
    error = load_error(tmp_path, {"train": tmp_path / name})
    message = str(error)
    assert repr(str(tmp_path / name)) in message and "is a folder" in message
    assert "data_dir=" in message and "does not exist" not in message


def test_a_split_name_datasets_cannot_take_is_named_before_any_read(tmp_path):
    path = put(tmp_path / "files", "train.csv", GOOD)
    error = load_error(tmp_path, {"my train": path})
    assert "'my train'" in str(error) and "could not read" not in str(error)


# --- errors found after loading still name the split's files ---------------------------


@pytest.mark.parametrize(
    ("frame", "kwargs", "message"),
    [
        (GOOD.assign(text=["fine", None, "ok"]), {}, r"split 'test': 1 rows have no text"),
        (GOOD.assign(label=[1, None, 0]), {}, r"split 'test': 1 rows have no label"),
        (GOOD.assign(label=[0, 5, 1]), {"name": "imdb"}, r"span 0\.\.5, but imdb has 2"),
        (GOOD.assign(label=[0.5, 1.0, 0.0]), {}, r"must hold class ids"),
        (GOOD.assign(text=[1, 2, 3]), {}, r"must hold strings"),
    ],
    ids=["null-text", "null-label", "label-range", "float-labels", "int-text"],
)
def test_content_errors_name_the_file_of_the_split(tmp_path, frame, kwargs, message):
    train = put(tmp_path / "files", "train.parquet", GOOD)
    test = put(tmp_path / "files", "test.parquet", frame)
    error = load_error(tmp_path, {"train": train, "test": test}, **kwargs)
    text = names_only(error, test, train)
    assert re.search(message, text), text


def test_a_split_of_several_files_names_them_all(tmp_path):
    folder = tmp_path / "files"
    first = put(folder, "train-0.parquet", GOOD)
    second = put(folder, "train-1.parquet", GOOD.assign(text=["fine", None, "ok"]))
    error = load_error(tmp_path, {"train": [first, second]})
    assert first in str(error) and second in str(error)


# --- empty and blank texts: the docs say "empty or null text" is an error ----------------


@pytest.mark.parametrize(
    ("extension", "blank"),
    # (an empty CSV field reads as a missing text: the next test)
    [(".parquet", ""), (".parquet", "   "), (".parquet", " \t\n\u3000"), (".csv", "   ")],
    ids=["empty", "spaces", "unicode-whitespace", "csv-spaces"],
)
def test_empty_or_blank_texts_are_rejected_naming_the_file_and_row(tmp_path, extension, blank):
    train = put(tmp_path / "files", f"train{extension}", GOOD)
    test = put(tmp_path / "files", f"test{extension}",
               GOOD.assign(text=["fine", "good", blank]))
    error = load_error(tmp_path, {"train": train, "test": test})
    message = names_only(error, test, train)
    assert "split 'test'" in message and "1 rows" in message and "row 2" in message
    assert "empty" in message


def test_an_empty_csv_field_is_a_missing_text_naming_the_file(tmp_path):
    train = put(tmp_path / "files", "train.csv", GOOD)
    test = put(tmp_path / "files", "test.csv", 'text,label\nfine,1\n"",0\n')
    error = load_error(tmp_path, {"train": train, "test": test})
    assert "rows have no text" in names_only(error, test, train)


def test_a_blank_text_from_the_hub_names_the_split(tmp_path, monkeypatch):
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    fake = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": ["good", "  "], "label": [1, 0]},
                                            features=features),
        "test": datasets.Dataset.from_dict({"text": ["fine"], "label": [1]},
                                           features=features),
    })
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: fake)
    with pytest.raises(MtlzooError, match=r"split 'train': 1 rows have empty.*row 1"):
        text_classification("imdb", cache_dir=tmp_path / "cache")


def test_header_only_and_empty_files_name_the_file(tmp_path):
    train = put(tmp_path / "files", "train.csv", GOOD)
    for name, content in (("header.csv", "text,label\n"), ("nothing.csv", "")):
        bad = put(tmp_path / "files", name, content)
        error = load_error(tmp_path, {"train": train, "test": bad})
        assert "no rows" in names_only(error, bad, train)


# --- tokenisation ----------------------------------------------------------------------


def test_tokenize_dataset_names_the_split_and_row_of_a_non_string_text():
    tokenizer = WordTokenizer().fit(["a b"])
    texts = ["a b"] * 1500 + [None]
    data = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts})})
    with pytest.raises(MtlzooError, match=r"split 'train'.*row 1500.*NoneType") as caught:
        tokenize_dataset(data, tokenizer, batch_size=1000)
    assert caught.value.__cause__ is not None
