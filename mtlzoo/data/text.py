"""Text classification data from any labelled source (a hub id, a local folder or files),
tokenised into fixed-shape id columns for an Embedding + BiLSTM encoder.

* ``text_classification(name, data_dir=..., data_files=...)`` returns a ``DatasetDict`` whose
  splits hold exactly two columns, ``text`` (str) and ``label`` (int64, ``0 .. K-1``; a
  ``ClassLabel`` with the class names where the source gives them). IMDb and AG News are
  known by name; any other hub id loads as it is.
* ``load_source`` reads the one-argument form a recipe or the command line takes: a local
  folder, a local file, a dict of split files, or a hub id.
* ``tokenize_dataset`` adds an ``input_ids`` column padded to one length with a fitted
  ``mtlzoo.tokenizer.WordTokenizer``, so the trainer fetches fixed-shape batches with
  ``dataset.with_format("torch")[rows]``.

``datasets``, ``pandas`` and ``pyarrow`` are imported inside the functions that use them.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from mtlzoo import _checks
from mtlzoo.errors import DataLoadError, MtlzooError
from mtlzoo.tokenizer import WordTokenizer, pad_batch

NUM_CLASSES: dict[str, int] = {"imdb": 2, "ag_news": 4}
"""Classes of the known datasets, by canonical name."""

CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "imdb": ("neg", "pos"),
    "ag_news": ("World", "Sports", "Business", "Sci/Tech"),
}
"""Label names of the known datasets (as on the hub), by canonical name."""

HUB_IDS: dict[str, str] = {"imdb": "stanfordnlp/imdb", "ag_news": "fancyzhx/ag_news"}
"""The Hugging Face hub id each known dataset is loaded from."""

_ALIASES = {
    "imdb": "imdb",
    "stanfordnlp/imdb": "imdb",
    "ag_news": "ag_news",
    "fancyzhx/ag_news": "ag_news",
}
# the hub's mark for a split without labels (IMDb's "unsupervised", GLUE's "test")
_UNLABELLED = -1
# a hub id: "name" or "owner/name"
_HUB_ID = re.compile(r"[\w-][\w.-]*(/[\w-][\w.-]*)?")
PROBE_TIMEOUT = 3.0
"""Seconds to wait for the hub's address before loading from the cache only."""
_FORMATS = {".parquet": "parquet", ".csv": "csv"}
_DIR_SPLITS = ("train", "validation", "test")
_REQUIRED_DIR_SPLITS = ("train", "test")
# the split names datasets accepts (its naming._split_re)
_SPLIT_NAME = re.compile(r"\w+(\.\w+)*")


def text_classification(
    name: str | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    data_files: Mapping[str, str | os.PathLike | Sequence[str | os.PathLike]] | None = None,
    text_column: str = "text",
    label_column: str = "label",
    cache_dir: str | os.PathLike | None = None,
):
    """A ``datasets.DatasetDict`` of text classification splits, each with exactly the
    columns ``text`` (str) and ``label`` (int64 in ``0 .. K-1``).

    ``name`` is a Hugging Face hub id. Two are known: ``"imdb"`` (alias
    ``"stanfordnlp/imdb"``, 2 classes) and ``"ag_news"`` (alias ``"fancyzhx/ag_news"``, 4
    classes); their labels are checked against the hub's classes. Any other id (such as
    ``"rotten_tomatoes"`` or ``"SetFit/20_newsgroups"``) loads as it is, its classes from the
    data. With no local files ``name`` is loaded from the hub (a hub that cannot be reached
    within :data:`PROBE_TIMEOUT` seconds is not retried: the cache is read, or the error
    comes at once). Local files need no network:

    * ``data_dir``: a folder with ``train`` and ``test`` files (``validation`` optional),
      each ``<split>.parquet`` or ``<split>.csv``, or shards ``<split>-*.parquet`` /
      ``<split>-*.csv`` as the hub's parquet export names them;
    * ``data_files``: ``{"train": path, "test": path, ...}`` (a path or a list of paths per
      split); the format comes from the extension, ``.parquet`` or ``.csv``.

    ``text_column`` and ``label_column`` name the source columns, renamed to ``text`` and
    ``label``; other columns are dropped. Every text must hold a non-space character:
    empty, whitespace-only and missing texts are errors. Labels are class ids (integers) or
    class names (strings). Names become ids in sorted order (with a known ``name``, in the
    hub's order) and the label a ``ClassLabel`` with those names; ids must be non-negative,
    and below the class count where the source gives one (a ``ClassLabel``, a known
    ``name``). A split whose labels are all -1 (the hub's mark for unlabelled rows, as in
    IMDb's ``unsupervised`` split) is dropped. ``cache_dir`` is the ``datasets`` cache.

    Every problem (no network, missing or unreadable files, missing columns, an empty split,
    empty texts, bad labels) is an ``MtlzooError``. With local files it names the file
    (the one bad file where it can be told, else the files of the split) and keeps the
    reader's error as ``__cause__``; each split is read on its own.
    """
    import datasets

    canonical, hub_id = _resolve(name) if name is not None else (None, None)
    for argument, value in (("text_column", text_column), ("label_column", label_column)):
        if not isinstance(value, str) or not value:
            raise MtlzooError(f"{argument} must be a non-empty column name, got {value!r}")
    if text_column == label_column:
        raise MtlzooError(f"text_column and label_column are both {text_column!r}")
    if data_dir is not None and data_files is not None:
        raise MtlzooError("pass data_dir= or data_files=, not both")
    cache = None if cache_dir is None else os.fspath(cache_dir)

    sources: dict[str, list[str]] = {}  # split -> local files, to name in errors
    if data_dir is not None or data_files is not None:
        sources = (_files_in_dir(data_dir) if data_dir is not None
                   else _normalise_data_files(data_files))
        loaded = _load_local(sources, cache, text_column, label_column)
    elif hub_id is None:
        raise MtlzooError(
            "text_classification needs a dataset name (a hub id such as 'imdb' or "
            "'ag_news') or local files (data_dir= or data_files=)"
        )
    else:
        loaded = _load_hub(canonical, hub_id, cache, text_column, label_column)

    splits = {split: dataset for split, dataset in loaded.items()
              if not _unlabelled(dataset, label_column)}
    if not splits:
        raise MtlzooError(f"no labelled split found (splits: {list(loaded)})")
    names = _label_names(splits, canonical, label_column, sources)
    return datasets.DatasetDict(
        {
            split: _standardise(dataset, split, canonical, text_column, label_column,
                                sources.get(split), names)
            for split, dataset in splits.items()
        }
    )


def load_source(source, *, cache_dir: str | os.PathLike | None = None):
    """:func:`text_classification` of one source given as one value, as recipes and the
    command line take it (each split's columns ``text`` and ``label``):

    * a local folder: its ``train``/``test``/``validation`` files (``data_dir=``);
    * a local ``.parquet`` or ``.csv`` file: the ``train`` split alone;
    * a dict ``{split: path or paths}`` (``data_files=``);
    * a ``datasets.DatasetDict``, already loaded: returned as it is;
    * otherwise a hub id (``"imdb"``, ``"ag_news"``, ``"rotten_tomatoes"``, ...).

    A local path wins over a hub id of the same name; a path that does not exist and cannot
    be a hub id (``./data/imdb``, ``reviews.csv``) is an error naming it.
    """
    if type(source).__name__ == "DatasetDict":
        return source
    if isinstance(source, Mapping):
        return text_classification(data_files=source, cache_dir=cache_dir)
    if not isinstance(source, (str, os.PathLike)):
        raise MtlzooError(
            "a text source is a folder, a file, a dict of split files or a hub id, got "
            f"{type(source).__name__}"
        )
    path = Path(source)
    if path.is_dir():
        return text_classification(data_dir=path, cache_dir=cache_dir)
    if path.is_file():
        return text_classification(data_files={"train": os.fspath(path)}, cache_dir=cache_dir)
    text = os.fspath(source)
    if isinstance(source, os.PathLike) or not _HUB_ID.fullmatch(text) or (
        Path(text).suffix.lower() in _FORMATS
    ):
        raise MtlzooError(f"text source {text!r}: no such folder or file")
    return text_classification(text, cache_dir=cache_dir)


def num_classes(data) -> int:
    """The number of classes of a ``DatasetDict`` (or ``Dataset``) with a ``label`` column:
    from its ``ClassLabel`` feature when it has one, else the largest label + 1."""
    splits = _splits(data, "num_classes")
    for dataset in splits.values():
        feature = dataset.features.get("label")
        if type(feature).__name__ == "ClassLabel":
            return int(feature.num_classes)
    import pyarrow.compute as pc

    largest = None
    for split, dataset in splits.items():
        if "label" not in dataset.column_names:
            raise MtlzooError(
                f"split {split!r} has no 'label' column (columns: {dataset.column_names})"
            )
        if len(dataset):
            high = pc.max(dataset.with_format("arrow")["label"]).as_py()
            if high is not None:
                largest = high if largest is None else max(largest, high)
    if largest is None:
        raise MtlzooError("num_classes: no labels found (every split is empty)")
    return int(largest) + 1


def class_names(data) -> tuple[str, ...]:
    """The class names of a ``DatasetDict`` (or ``Dataset``) with a ``label`` column, in id
    order: its ``ClassLabel``'s names, else the ids as text (``"0"``, ``"1"``, ...)."""
    for dataset in _splits(data, "class_names").values():
        feature = dataset.features.get("label")
        if type(feature).__name__ == "ClassLabel":
            return tuple(feature.names)
    return tuple(str(k) for k in range(num_classes(data)))


# --------------------------------------------------------------------------- loading


def _resolve(name: object) -> tuple[str | None, str]:
    """``(canonical name or None, hub id)`` of a dataset name."""
    if not isinstance(name, str) or not _HUB_ID.fullmatch(name):
        raise MtlzooError(
            f"name must be a hub id such as 'imdb' or 'owner/dataset', got {name!r}"
        )
    canonical = _ALIASES.get(name.lower())
    return canonical, HUB_IDS[canonical] if canonical else name


def _layout_hint(canonical: str | None, text_column: str, label_column: str) -> str:
    classes = (
        f"an integer in 0..{NUM_CLASSES[canonical] - 1}" if canonical
        else "a class id or name"
    )
    return (
        "pass data_dir= a folder holding train.parquet and test.parquet (or .csv; "
        "validation.* optional) or data_files={'train': path, 'test': path}; each file needs "
        f"a {text_column!r} column (str) and a {label_column!r} column ({classes})"
    )


def hub_reachable(timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether the hub's host answers within ``timeout`` seconds (True behind a proxy,
    which this cannot tell)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if any(os.environ.get(key) for key in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY")):
        return True
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _load_hub(canonical: str | None, hub_id: str, cache: str | None, text_column: str,
              label_column: str):
    """The hub's copy of ``hub_id``; a hub that cannot be reached fails at once, or loads
    from the cache, rather than retrying for half a minute."""
    import contextlib
    from unittest import mock

    import datasets
    from huggingface_hub import constants

    offline = contextlib.ExitStack()
    unreachable = not constants.HF_HUB_OFFLINE and not hub_reachable()
    if unreachable:
        # datasets' own offline mode (HF_HUB_OFFLINE), for this call only: the cache or a
        # quick error; the variable itself is read once, when datasets is imported
        for module in (constants, datasets.config):
            offline.enter_context(mock.patch.object(module, "HF_HUB_OFFLINE", True))
    try:
        with offline:
            return datasets.load_dataset(hub_id, cache_dir=cache)
    except Exception as error:  # ConnectionError (offline, unreachable), not found, ...
        close = [] if canonical else difflib.get_close_matches(hub_id.lower(), _ALIASES, 1)
        why = (f"{constants.ENDPOINT} did not answer within {PROBE_TIMEOUT:g} s and the "
               "datasets cache has no copy" if unreachable else _short(error))
        raise DataLoadError(
            f"could not load {hub_id!r} from the Hugging Face hub ({why})"
            + (f"; did you mean {close[0]!r}?" if close else ""),
            "Without a network (or with HF_HUB_OFFLINE set), download the data elsewhere and "
            + _layout_hint(canonical, text_column, label_column),
        ) from error


def _files_in_dir(data_dir) -> dict[str, list[str]]:
    folder = Path(data_dir)
    if not folder.is_dir():
        raise DataLoadError(f"data_dir {os.fspath(data_dir)!r} is not a folder")
    files: dict[str, list[str]] = {}
    for split in _DIR_SPLITS:
        found = {}
        for extension in _FORMATS:
            paths = [p for p in (folder / f"{split}{extension}",) if p.is_file()]
            paths += sorted(p for p in folder.glob(f"{split}-*{extension}") if p.is_file())
            found[extension] = paths
        found = {extension: paths for extension, paths in found.items() if paths}
        if len(found) > 1:
            raise MtlzooError(
                f"data_dir {str(folder)!r} holds {split} files in two formats: "
                f"{[p.name for paths in found.values() for p in paths]}; keep one"
            )
        if found:
            files[split] = [str(p) for p in next(iter(found.values()))]
    missing = [split for split in _REQUIRED_DIR_SPLITS if split not in files]
    if missing:
        present = sorted(p.name for p in folder.iterdir())
        raise MtlzooError(
            f"data_dir {str(folder)!r} has no {' or '.join(missing)} file; expected "
            "train.parquet and test.parquet (or .csv, or shards such as "
            f"train-00000-of-00001.parquet; validation.* optional), found {present}"
        )
    return files


def _normalise_data_files(data_files) -> dict[str, list[str]]:
    if not isinstance(data_files, Mapping) or not data_files:
        raise MtlzooError(
            "data_files must be a non-empty dict of split -> path, e.g. "
            f"{{'train': 'train.parquet', 'test': 'test.parquet'}}, got {data_files!r}"
        )
    files: dict[str, list[str]] = {}
    for split, paths in data_files.items():
        if not isinstance(split, str) or not _SPLIT_NAME.fullmatch(split):
            raise MtlzooError(
                "data_files keys must be split names (letters, digits and '_', parts joined "
                f"by '.'), got {split!r}"
            )
        group = [paths] if isinstance(paths, (str, os.PathLike)) else paths
        if not isinstance(group, Sequence) or not group or not all(
            isinstance(p, (str, os.PathLike)) for p in group
        ):
            raise MtlzooError(
                f"data_files[{split!r}] must be a path or a list of paths, got {paths!r}"
            )
        files[split] = [os.fspath(p) for p in group]
    return files


def _file_format(path: str) -> str:
    file = Path(path)
    if file.is_dir():
        raise MtlzooError(
            f"data file {path!r} is a folder, not a file; pass data_files= the files in it, "
            "or data_dir= a folder of <split>.parquet / <split>.csv files"
        )
    if not file.is_file():
        raise MtlzooError(f"data file {path!r} does not exist")
    extension = file.suffix.lower()
    if extension not in _FORMATS:
        raise MtlzooError(
            f"cannot tell the format of {path!r}: expected a .parquet or .csv file"
        )
    return _FORMATS[extension]


def _short(error: BaseException) -> str:
    """``Type: message`` on one line, cut to a readable length."""
    text = " ".join(str(error).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _root_cause(error: BaseException) -> BaseException:
    """The reader's own error under ``datasets``' "An error occurred while generating the
    dataset" wrapper."""
    while type(error).__name__ == "DatasetGenerationError" and error.__cause__ is not None:
        error = error.__cause__
    return error


def _check_file(path: str, file_format: str, columns: Sequence[str]) -> None:
    """A readable file with rows and the text and label columns (metadata and the header
    only; the rows are read when the split loads)."""
    try:
        if file_format == "parquet":
            import pyarrow.parquet as pq

            metadata = pq.read_metadata(path)
            rows, present = metadata.num_rows, metadata.schema.to_arrow_schema().names
        else:
            import pandas as pd

            try:
                head = pd.read_csv(path, nrows=1)
            except pd.errors.EmptyDataError:
                rows, present = 0, []
            else:
                rows, present = len(head), [str(c) for c in head.columns]
    except Exception as error:  # not a parquet file, unreadable CSV, ...
        raise MtlzooError(f"could not read {file_format} file {path!r}: {_short(error)}"
                          ) from error
    if rows == 0:
        raise MtlzooError(f"data file {path!r} has no rows: every split needs examples")
    for role, column in zip(("text", "label"), columns, strict=True):
        if column not in present:
            raise MtlzooError(
                f"data file {path!r} has no {role} column {column!r} (columns: {present}); "
                f"pass {role}_column= the column that holds the {role}"
            )


def _column_types(path: str, file_format: str, columns: list[str]) -> dict:
    """The Arrow type of each of ``columns`` in one file, read in full on its own."""
    import pyarrow as pa

    if file_format == "parquet":
        import pyarrow.parquet as pq

        schema = pq.read_table(path, columns=columns).schema
    else:
        import pandas as pd

        schema = pa.Table.from_pandas(pd.read_csv(path, usecols=columns)).schema
    return {column: schema.field(column).type for column in columns}


def _odd_file(paths: list[str], file_format: str, columns: list[str]):
    """For a split of several files that failed to load together: ``(path, reason, error)``
    for the first file that fails read alone, or that holds a column with another type
    than the first file; ``None`` when no one file is to blame."""
    types = []
    for path in paths:
        try:
            types.append(_column_types(path, file_format, columns))
        except Exception as error:
            return path, _short(error), error
    for path, found in zip(paths[1:], types[1:], strict=True):
        for column in columns:
            if found[column] != types[0][column]:
                return path, (f"column {column!r} holds {found[column]}, but in "
                              f"{paths[0]!r} it holds {types[0][column]}"), None
    return None


def _load_split(split: str, paths: list[str], file_format: str, cache: str | None,
                columns: list[str]):
    """One split's files, only the text and label columns, with the packaged readers."""
    import datasets

    # parquet: read only the two columns; CSV: every column, as pandas' usecols= would let
    # a row with too many fields pass
    options = {"columns": columns} if file_format == "parquet" else {}
    try:
        return datasets.load_dataset(file_format, data_files={split: paths}, cache_dir=cache,
                                     **options)[split]
    except Exception as error:  # a malformed file: name it, keep the cause
        cause = _root_cause(error)
        odd = _odd_file(paths, file_format, columns) if len(paths) > 1 else None
        if len(paths) == 1:
            where, reason = f"{file_format} file {paths[0]!r}", _short(cause)
        elif odd is not None:
            where = f"{file_format} file {odd[0]!r}"
            reason = odd[1] if odd[2] is not None else f"{odd[1]} ({_short(cause)})"
        else:
            where, reason = f"the {file_format} files {paths}", _short(cause)
        raise MtlzooError(f"could not read {where} (split {split!r}): {reason}") from cause


def _load_local(files: dict[str, list[str]], cache: str | None, text_column: str,
                label_column: str) -> dict:
    """Each split's files, checked (all of them first, cheaply), then loaded one split at a
    time so that an error names that split's files and a split never takes its column types
    from another."""
    columns = [text_column, label_column]
    formats = {}
    for split, paths in files.items():
        found = {_file_format(p) for p in paths}
        if len(found) > 1:
            raise MtlzooError(f"split {split!r} mixes formats: {paths}; use one")
        formats[split] = found.pop()
        for path in paths:
            _check_file(path, formats[split], columns)
    return {split: _load_split(split, paths, formats[split], cache, columns)
            for split, paths in files.items()}


def _read_from(paths: list[str] | None) -> str:
    """Where a split's rows came from, for its error messages ("" for the hub)."""
    if not paths:
        return ""
    if len(paths) == 1:
        return f"; read from {paths[0]!r}"
    return f"; read from {paths} (rows in that order)"


def _first_row(mask) -> int:
    import pyarrow.compute as pc

    return pc.index(mask, True).as_py()


def _unlabelled(dataset, label_column: str) -> bool:
    """Whether every label of a split is the hub's unlabelled mark, -1."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if label_column not in dataset.column_names or not len(dataset):
        return False
    labels = dataset.with_format("arrow")[label_column]
    if not pa.types.is_integer(labels.type) or labels.null_count:
        return False
    extremes = pc.min_max(labels)
    return extremes["min"].as_py() == extremes["max"].as_py() == _UNLABELLED


def _label_names(splits: dict, canonical: str | None, label_column: str,
                 sources: dict[str, list[str]]) -> tuple[str, ...] | None:
    """The class names of labels given as names (strings): a known dataset's, else every
    name found in any split, sorted; ``None`` for integer labels."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kinds, found = {}, set()
    for split, dataset in splits.items():
        if label_column not in dataset.column_names:
            continue  # _standardise names the missing column
        labels = dataset.with_format("arrow")[label_column]
        kinds[split] = pa.types.is_string(labels.type) or pa.types.is_large_string(labels.type)
        if kinds[split]:
            found.update(v for v in pc.unique(labels).to_pylist() if v is not None)
    if not any(kinds.values()):
        return None
    if not all(kinds.values()):
        def where(named: bool) -> str:
            return ", ".join(f"split {split!r}{_read_from(sources.get(split))}"
                             for split, kind in kinds.items() if kind == named)

        raise MtlzooError(
            f"labels in column {label_column!r} are class names (strings) in {where(True)} "
            f"but class ids (numbers) in {where(False)}; give every split's labels one way"
        )
    return CLASS_NAMES[canonical] if canonical else tuple(sorted(found))


def _standardise(dataset, split: str, canonical: str | None, text_column: str,
                 label_column: str, paths: list[str] | None = None,
                 names: tuple[str, ...] | None = None):
    """Exactly ``text`` (str) and ``label`` (int64, or a ``ClassLabel``), validated; labels
    given as class ``names`` become their ids; errors name ``paths``, the local files the
    split was read from."""
    import datasets
    import pyarrow as pa
    import pyarrow.compute as pc

    source = _read_from(paths)
    from_csv = any(Path(p).suffix.lower() == ".csv" for p in paths or ())
    columns = dataset.column_names
    for role, column in (("text", text_column), ("label", label_column)):
        if column not in columns:
            raise MtlzooError(
                f"split {split!r} has no {role} column {column!r} (columns: {columns}); "
                f"pass {role}_column= the column that holds the {role}{source}"
            )
    if len(dataset) == 0:
        raise MtlzooError(f"split {split!r} is empty: every split needs examples{source}")
    dataset = dataset.remove_columns([c for c in columns if c not in (text_column, label_column)])
    renames = {old: new for old, new in ((text_column, "text"), (label_column, "label"))
               if old != new}
    if renames:
        dataset = dataset.rename_columns(renames)

    table = dataset.with_format("arrow")
    text = table["text"]
    if not (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)):
        raise MtlzooError(
            f"split {split!r}: text column {text_column!r} must hold strings, got {text.type}"
            + source
        )
    if text.null_count:
        raise MtlzooError(
            f"split {split!r}: {text.null_count} rows have no text in column {text_column!r} "
            f"(first: row {_first_row(pc.is_null(text))}, counting from 0"
            + ("; an empty CSV field reads as no text" if from_csv else "") + f"){source}"
        )
    blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0)
    blanks = pc.sum(blank).as_py() or 0
    if blanks:
        raise MtlzooError(
            f"split {split!r}: {blanks} rows have empty or whitespace-only text in column "
            f"{text_column!r} (first: row {_first_row(blank)}, counting from 0); every text "
            f"needs a non-space character{source}"
        )
    labels = table["label"]
    if labels.null_count:
        raise MtlzooError(
            f"split {split!r}: {labels.null_count} rows have no label in column "
            f"{label_column!r} (first: row {_first_row(pc.is_null(labels))}, counting from 0)"
            + source
        )
    if names is not None:
        unknown = pc.filter(labels, pc.invert(pc.is_in(labels, pa.array(names))))
        if len(unknown):
            raise MtlzooError(
                f"split {split!r}: label {unknown[0].as_py()!r} in column {label_column!r} "
                f"is not a class of {canonical or 'this dataset'} ({', '.join(names)}){source}"
            )
        return dataset.cast_column("label", datasets.ClassLabel(names=list(names)))
    if not pa.types.is_integer(labels.type):
        raise MtlzooError(
            f"split {split!r}: label column {label_column!r} must hold class ids (integers "
            f"0..K-1) or class names (strings), got {labels.type}{source}"
        )
    feature = dataset.features["label"]
    class_label = feature if isinstance(feature, datasets.ClassLabel) else None
    if canonical is not None:
        limit = NUM_CLASSES[canonical]
    elif class_label is not None:
        limit = class_label.num_classes
    else:
        limit = None
    extremes = pc.min_max(labels)
    low, high = extremes["min"].as_py(), extremes["max"].as_py()
    if low < 0 or (limit is not None and high >= limit):
        allowed = f"0..{limit - 1}" if limit is not None else "non-negative integers"
        what = f"{canonical} has {limit} classes" if canonical else "labels are class ids"
        raise MtlzooError(
            f"split {split!r}: labels in column {label_column!r} span {low}..{high}, but "
            f"{what} ({allowed} allowed){source}"
        )
    if class_label is None:
        target = (
            datasets.ClassLabel(names=list(CLASS_NAMES[canonical]))
            if canonical is not None
            else datasets.Value("int64")
        )
        if target != feature:
            dataset = dataset.cast_column("label", target)
    return dataset


def _splits(data, caller: str) -> dict:
    kind = type(data).__name__
    if kind == "DatasetDict":
        return dict(data)
    if kind == "Dataset":
        return {"data": data}
    raise MtlzooError(f"{caller} needs a datasets.DatasetDict or Dataset, got {kind}")


# --------------------------------------------------------------------------- tokenised datasets


def tokenize_dataset(data, tokenizer: WordTokenizer, *, max_length: int | None = None,
                     batch_size: int = 1000, keep_text: bool = False):
    """Add an ``input_ids`` column to every split of a ``DatasetDict`` (or to a
    ``Dataset``): each row's ids truncated to ``max_length`` (default
    ``tokenizer.max_length``) and right-padded with 0 to exactly that length, stored as
    int32 (``with_format("torch")`` returns int64 batches of shape ``(b, max_length)``).

    The ``text`` column is removed unless ``keep_text`` (strings in every batch cost time
    and are not tensors); other columns such as ``label`` stay. One fitted tokenizer can
    serve datasets of different lengths through ``max_length``. Results are cached by
    ``datasets`` under a fingerprint of the data, the tokenizer and the options.
    """
    import datasets

    if not isinstance(tokenizer, WordTokenizer):
        raise MtlzooError(f"tokenizer must be a WordTokenizer, got {type(tokenizer).__name__}")
    key = tokenizer.fingerprint()  # an unfitted tokenizer is an error here
    length = tokenizer.max_length if max_length is None else _checks.positive_int(
        "max_length", max_length
    )
    _checks.positive_int("batch_size", batch_size)
    single = type(data).__name__ == "Dataset"
    splits = _splits(data, "tokenize_dataset")
    pad = tokenizer.pad_id
    list_type = getattr(datasets, "List", None) or datasets.Sequence
    ids_feature = list_type(datasets.Value("int32"), length=length)

    def add_ids(texts, indices, where):
        try:
            rows = tokenizer.encode_ids(texts, max_length=length)
        except MtlzooError as error:  # name the dataset row, not the row of the batch
            for row, text in zip(indices, texts, strict=True):
                if not isinstance(text, str):
                    raise MtlzooError(
                        f"tokenize_dataset: {where}row {row} has a {type(text).__name__} "
                        "text, not str"
                    ) from error
            raise
        return {"input_ids": pad_batch(rows, pad_id=pad, length=length, dtype=torch.int32).numpy()}

    out = {}
    for split, dataset in splits.items():
        if "text" not in dataset.column_names:
            raise MtlzooError(
                f"split {split!r} has no 'text' column (columns: {dataset.column_names})"
            )
        features = dataset.features.copy()
        if not keep_text:
            del features["text"]
        features["input_ids"] = ids_feature
        source = getattr(dataset, "_fingerprint", None)
        fingerprint = None if source is None else hashlib.sha256(
            f"mtlzoo-tokenize-v1|{source}|{key}|{length}|{keep_text}".encode()
        ).hexdigest()[:16]
        out[split] = dataset.map(
            add_ids,
            batched=True,
            batch_size=batch_size,
            input_columns="text",
            with_indices=True,
            fn_kwargs={"where": "" if single else f"split {split!r} "},
            remove_columns=None if keep_text else ["text"],
            features=features,
            new_fingerprint=fingerprint,
            desc=f"Tokenizing {split}",
        )
    return out["data"] if single else datasets.DatasetDict(out)
