"""Batches for the trainer, re-iterable epoch after epoch, reproducibly.

Training data is a ``datasets.Dataset`` (one split), a dict of equal-length tensors, or any
re-iterable of dict batches (a ``DataLoader``). A batch is a dict: the input under the
trainer's ``input_key``, labels under each task's name (or its ``label_keys`` entry),
optionally ``<task>_mask`` (True where labelled) and per-row weights under ``weight_key``.
A ``datasets.Dataset``'s columns of numbers are read straight from its Arrow table
(``ArrowColumns``): a batch of them costs what a dict of tensors' does.

Batching of data the trainer batches itself (``BATCHING``): ``"shuffle"`` cuts each pass's
permutation into batches; ``"by_length"`` (token ids) sorts the rows of each window of
``WINDOW_BATCHES`` batches by length, shuffles the order of the pass's batches and trims
every batch to its longest row, so that a batch of short texts costs short texts.

Sharded over ``world`` ranks (DDP), data the trainer batches itself keeps the order of one
process: each global batch is ``world * batch_size`` consecutive rows of the pass's order
(by length: the same windows and batch order, at the global batch size), and rank ``rank``
takes its slice of each (``tensor_split``), so the ranks together see every row once a pass,
step by step as one process with the global batch does. A ``DataLoader`` is not sharded.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping

import torch
from torch import Tensor

from mtlzoo.errors import MtlzooError

Batch = dict[str, Tensor]

BATCHING = ("shuffle", "by_length")
WINDOW_BATCHES = 50  # "by_length": the batches whose rows are sorted together
LENGTH_CHUNK_ROWS = 8192  # rows of token ids read at a time to measure their lengths
PAD_ID = 0
MATERIALIZE_BYTES = 2 << 30  # at most this much of a datasets.Dataset copied into tensors


class Batches:
    """A data source that yields the batches of one pass, about ``len()`` batches long.

    ``len()`` is a hint (progress bars, sampling probabilities): a pass ends when its data
    ends. ``signature()`` describes the data well enough to tell, on a resume, whether the
    position saved in a checkpoint still points at the same batches.
    """

    def passes(self, pass_id: int, skip: int = 0) -> Iterator[Batch]:
        """The batches of pass ``pass_id``, without the first ``skip``."""
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    # where a source that resumes from a saved state (a stream) stands after the last batch
    # it yielded; None where the number of batches taken is enough
    position: dict | None = None

    def known_length(self) -> int | None:
        """``len()``, or None where the number of batches is not known (a stream)."""
        return len(self)

    def signature(self) -> dict[str, int | str | None]:
        raise NotImplementedError


class IndexedBatches(Batches):
    """Rows fetched by index from a ``datasets.Dataset`` or a dict of tensors; each pass is
    a permutation drawn from ``(seed, pass_id)`` alone, so any pass can be replayed.

    With ``length_key`` (``batching="by_length"``) the rows are batched by the length of
    their token ids in that column: a shuffled pass sorts each window of
    ``WINDOW_BATCHES`` batches by length and shuffles the order of all its batches (from
    the same generator); an unshuffled one (evaluation) is sorted by length throughout.
    Every batch's ``length_key`` column is trimmed to its longest row. ``rank`` of
    ``world``: this rank's slice of every batch of ``world * batch_size`` rows."""

    def __init__(self, data, batch_size: int, shuffle: bool, seed: int,
                 length_key: str | None = None, name: str = "the data", rank: int = 0,
                 world: int = 1) -> None:
        if isinstance(data, Mapping):
            self.rows = _common_length(data)
            self.fetch = lambda index: {key: take(value, index) for key, value in data.items()}
            lengths_of = data
        else:
            columns = ArrowColumns(data)
            self.rows, self.fetch = len(data), columns.fetch
            lengths_of = columns.lengths_source(length_key) or data
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world = rank, world
        self.length_key = length_key
        self.lengths = (None if length_key is None
                        else token_lengths(lengths_of, length_key, name))
        if lengths_of is not data and self.lengths is not None:  # the table's rows -> ours
            self.lengths = columns.in_order(self.lengths)

    def __len__(self) -> int:
        return -(-self.rows // (self.batch_size * self.world))

    def signature(self) -> dict[str, int | str | None]:
        return {"rows": self.rows, "batch_size": self.batch_size}

    def passes(self, pass_id: int, skip: int = 0) -> Iterator[Batch]:
        for index in self._batch_rows(pass_id)[skip:]:
            if self.world > 1:
                index = index.tensor_split(self.world)[self.rank]
            batch = self.fetch(index)
            if self.lengths is not None:
                longest = int(self.lengths[index].max()) if len(index) else 0
                width = max(longest, 1)  # an all-pad row reads one pad
                batch[self.length_key] = batch[self.length_key][:, :width]
            yield batch

    def _batch_rows(self, pass_id: int) -> list[Tensor]:
        """The row numbers of each (global) batch of pass ``pass_id``, in the order they
        come."""
        size = self.batch_size * self.world
        if not self.shuffle:
            order = (torch.arange(self.rows) if self.lengths is None
                     else self.lengths.sort(stable=True).indices)
            return list(order.split(size))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + pass_id)
        order = torch.randperm(self.rows, generator=generator)
        if self.lengths is None:
            return list(order.split(size))
        windows = order.split(WINDOW_BATCHES * size)
        batches = [batch for window in windows
                   for batch in window[self.lengths[window].sort(stable=True).indices]
                   .split(size)]
        return [batches[i] for i in torch.randperm(len(batches), generator=generator)]


class ArrowColumns:
    """The rows of a ``datasets.Dataset`` as its torch format gives them, fetched fast.

    A column of numbers or booleans, or of equal-length lists of them, without nulls, is
    read straight from the Arrow table as one tensor: without a copy where the table holds
    it in one chunk (memory-mapped files stay on disk), copied once where it is chunked or
    bit-packed (booleans), while those copies total at most ``MATERIALIZE_BYTES``. A batch
    is then an index into that tensor, converted as the torch format converts (integers to
    int64, floats to float32), as fast as a dict of tensors. The other columns (text,
    ragged lists, nested types, nulls, a table too big to copy) go through the torch format
    batch by batch, as before. A shuffled or selected dataset (an indices mapping) is read
    through its mapping, the table left as it is."""

    def __init__(self, data) -> None:
        self.names = list(data.column_names)
        table, self.mapping = _table_and_mapping(data)
        self.tensors: dict[str, tuple[Tensor, torch.dtype]] = {}
        copied = 0
        for name in self.names:
            read = _column_tensor(table.column(name), MATERIALIZE_BYTES - copied)
            if read is not None:
                tensor, dtype, copy = read
                self.tensors[name], copied = (tensor, dtype), copied + copy
        others = [name for name in self.names if name not in self.tensors]
        self.rest = data.with_format("torch", columns=others) if others else None

    def fetch(self, index: Tensor) -> Batch:
        rows = index if self.mapping is None else take(self.mapping, index)
        rest = {} if self.rest is None else self.rest[index.tolist()]
        batch = {}
        for name in self.names:
            if name in self.tensors:
                tensor, dtype = self.tensors[name]
                batch[name] = take(tensor, rows).to(dtype)
            else:
                batch[name] = rest[name]
        return batch

    def lengths_source(self, key: str | None) -> Mapping | None:
        """A view of column ``key`` over the table's rows for ``token_lengths`` (None when
        it is not read as a tensor); ``in_order`` maps its lengths to the dataset's rows."""
        if key not in self.tensors:
            return None
        return {key: _Converted(*self.tensors[key])}

    def in_order(self, values: Tensor) -> Tensor:
        return values if self.mapping is None else values[self.mapping]


def take(tensor: Tensor, rows: Tensor) -> Tensor:
    """``tensor[rows]`` (``rows`` 1-D int64) through ``index_select``, which copies whole
    rows: on the CPU 5x faster than indexing for a batch of 1024 rows of 128 floats at one
    thread, and under two threads on a busy machine a hundredfold faster, not starting a
    team of threads for every column."""
    return tensor.index_select(0, rows.to(tensor.device))


class _Converted:
    """Slices of a tensor converted to ``dtype`` (what ``token_lengths`` reads)."""

    def __init__(self, tensor: Tensor, dtype: torch.dtype) -> None:
        self.tensor, self.dtype = tensor, dtype

    def __len__(self) -> int:
        return len(self.tensor)

    def __getitem__(self, rows: slice) -> Tensor:
        return self.tensor[rows].to(self.dtype)


def _table_and_mapping(data) -> tuple[object, Tensor | None]:
    """The dataset's Arrow table and its indices mapping (the table's row of each of the
    dataset's rows, int64), or None when it has none."""
    indices = getattr(data, "_indices", None)
    table = getattr(getattr(data, "data", None), "table", None)
    if table is None or (indices is not None and not hasattr(indices, "column")):
        return data.with_format("arrow")[:], None  # gathered once, in the dataset's order
    if indices is None:
        return table, None
    rows = indices.column(0).to_numpy()  # uint64
    return table, torch.from_numpy(rows.astype("int64"))


def arrow_tensor(column) -> Tensor | None:
    """An Arrow column (an array or a chunked array, e.g. a stream's window read in
    ``"arrow"`` format) as the torch format gives it: numbers, or equal-length lists of
    them, without nulls, as one tensor (integers int64, floats float32); None for any
    other column, which the torch format must convert."""
    import pyarrow as pa

    if not isinstance(column, pa.ChunkedArray):
        column = pa.chunked_array([column], type=column.type)
    read = _column_tensor(column, budget=1 << 62)
    return None if read is None else read[0].to(read[1])


def _column_tensor(column, budget: int) -> tuple[Tensor, torch.dtype, int] | None:
    """An Arrow column as ``(tensor, the dtype the torch format gives it, bytes copied)``,
    or None when it is not numbers (or equal-length lists of them) without nulls, or
    reading it would copy more than ``budget`` bytes."""
    import numpy as np
    import pyarrow as pa

    copied = 0
    if column.num_chunks == 1:
        array = column.chunk(0)
    else:
        copied = column.nbytes
        if copied > budget:
            return None
        array = column.combine_chunks()
    if array.null_count:
        return None
    kind, width = array.type, None
    if pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or \
            pa.types.is_large_list(kind):
        values = array.flatten()
        if pa.types.is_fixed_size_list(kind):
            width = kind.list_size
        else:
            offsets = np.asarray(array.offsets)
            sizes = np.diff(offsets)
            if len(sizes) and (sizes != sizes[0]).any():
                return None  # ragged
            width = int(sizes[0]) if len(sizes) else 0
        array, kind = values, values.type
        if array.null_count:
            return None
    if pa.types.is_boolean(kind):
        copied += len(array)
        if copied > budget:
            return None
        dtype = torch.bool
    elif pa.types.is_integer(kind) and kind != pa.uint64():
        dtype = torch.int64
    elif pa.types.is_floating(kind):
        dtype = torch.float32
    else:
        return None
    numbers = array.to_numpy(zero_copy_only=False)
    if numbers.dtype in (np.uint16, np.uint32):  # no such torch dtype
        copied += 8 * len(numbers)
        if copied > budget:
            return None
        numbers = numbers.astype(np.int64)
    with warnings.catch_warnings():  # read-only Arrow memory: only ever indexed (a copy)
        warnings.simplefilter("ignore", UserWarning)
        tensor = torch.from_numpy(numbers)
    if width is not None:
        tensor = tensor.reshape(len(tensor) // width if width else len(column), width)
    return tensor, dtype, copied


def token_lengths(data, key: str, name: str) -> Tensor:
    """The length of each row's token ids in column ``key`` of a ``datasets.Dataset`` or a
    dict of tensors: its ids up to the last non-pad one (the count of non-pad ids, since
    rows are right-padded with ``PAD_ID``); (rows,) int64. Read ``LENGTH_CHUNK_ROWS``
    rows at a time; ``MtlzooError`` unless the column holds a 2-D integer tensor."""
    columns = list(data) if isinstance(data, Mapping) else data.column_names
    if key not in columns:
        raise MtlzooError(
            f"{name} has no input column {key!r} (columns: {sorted(columns)}); set "
            "Trainer(input_key=...)"
        )
    if isinstance(data, Mapping):
        column, rows = data[key], len(data[key])
    else:  # one column, formatted a chunk at a time (through any indices mapping)
        column, rows = data.with_format("torch", columns=[key]), len(data)

    def chunk(start: int) -> object:
        ids = column[start:start + LENGTH_CHUNK_ROWS]
        return ids if isinstance(data, Mapping) else ids[key]

    lengths = [_extent(chunk(start), key, name) for start in range(0, rows, LENGTH_CHUNK_ROWS)]
    return torch.cat(lengths) if lengths else torch.zeros(0, dtype=torch.int64)


def _extent(ids: object, key: str, name: str) -> Tensor:
    """Per row of token ids (b, l): the position after its last non-pad id, (b,) int64."""
    integer = (isinstance(ids, Tensor) and ids.dim() == 2 and not ids.is_floating_point()
               and not ids.is_complex() and ids.dtype != torch.bool)
    if not integer:
        found = (f"{ids.dtype} {tuple(ids.shape)}" if isinstance(ids, Tensor)
                 else type(ids).__name__)
        raise MtlzooError(
            f"batching='by_length' needs {name}'s input column {key!r} to be a 2-D integer "
            f"tensor of token ids (rows, length), got {found}"
        )
    if ids.shape[1] == 0:
        return torch.zeros(len(ids), dtype=torch.int64)
    positions = torch.arange(1, ids.shape[1] + 1)
    return ((ids != PAD_ID) * positions).amax(dim=1)


class IterableBatches(Batches):
    """A ``DataLoader`` or another re-iterable of dict batches, in its own order, of a known
    length or not (a loader over a torch ``IterableDataset``: an epoch ends with it).

    Under DDP (``any_rank`` given) the loader must yield this rank's share (its dataset
    reads ``torch.distributed.get_rank()``; docs/data.md); a rank whose share has ended
    takes empty batches while another's has not (``until_every_rank_ends``). A resumed pass
    replays the batches it skips, or, from a loader with ``state_dict()`` and
    ``load_state_dict()`` (torchdata's ``StatefulDataLoader``), restores its saved state."""

    def __init__(self, data: Iterable, name: str,
                 any_rank: Callable[[bool], bool] | None = None) -> None:
        self.data, self.name, self.any_rank = data, name, any_rank
        self.stateful = callable(getattr(data, "state_dict", None)) and callable(
            getattr(data, "load_state_dict", None))

    def __len__(self) -> int:
        length = self.known_length()
        if length is None:
            raise MtlzooError(f"{self.name} has no len(): its number of batches is not known")
        return length

    def known_length(self) -> int | None:
        try:
            return len(self.data)
        except TypeError:  # a DataLoader over an IterableDataset, a generator's iterable
            return None

    def signature(self) -> dict[str, int | str | None]:
        return {"loader": type(self.data).__name__, "batches": self.known_length()}

    def passes(self, pass_id: int, skip: int = 0, state: dict | None = None
               ) -> Iterator[Batch]:
        iterator, empty = self._start(skip, state)
        own = self._checked(iterator)
        if self.any_rank is None:
            yield from own
            return
        for batch, padding in until_every_rank_ends(own, self.any_rank, self.name, empty):
            if padding and self.stateful:
                self.position = {**self.position, "ended": True, "empty": batch}
            yield batch

    def _start(self, skip: int, state: dict | None) -> tuple[Iterator, Batch | None]:
        """The pass's iterator after ``skip`` batches (restored from a stateful loader's
        ``state``, else replayed), and the no-row batch a rank whose share ended before
        them pads with (None if it has not)."""
        if state is not None and self.stateful:
            if state.get("ended"):
                return iter(()), state["empty"]
            self.data.load_state_dict(state["loader"])
            skip = 0
        # a DataLoader draws its base seed from torch's RNG when a pass starts; a fork keeps
        # that draw out of the RNG that dropout uses, so resuming mid-pass replays it exactly
        with torch.random.fork_rng(devices=[]):
            iterator = iter(self.data)
        last = None
        for _ in range(skip):
            last = next(iterator, None) or last
        return iterator, None if last is None else {k: v[:0] for k, v in dict(last).items()}

    def _checked(self, iterator: Iterator) -> Iterator[Batch]:
        for batch in iterator:
            if not isinstance(batch, Mapping):
                raise MtlzooError(
                    f"{self.name} must yield dict batches (column -> tensor), got "
                    f"{type(batch).__name__}"
                )
            if self.stateful:
                self.position = {"loader": self.data.state_dict()}
            yield dict(batch)


def until_every_rank_ends(batches: Iterator[Batch], any_rank: Callable[[bool], bool],
                          name: str, empty: Batch | None = None
                          ) -> Iterator[tuple[Batch, bool]]:
    """This rank's ``batches``, then empty ones (no rows, the columns of its last batch, or
    ``empty``) while another rank still has batches: ``(batch, padding)``. Every step the
    ranks sum one flag (``any_rank``), so no rank waits for a batch that never comes."""
    while True:
        batch = next(batches, None)
        if not any_rank(batch is not None):
            return
        if batch is None:
            if empty is None:
                raise MtlzooError(f"{name}: this rank's share has no rows while another "
                                  "rank's has; give every rank at least one batch")
            yield dict(empty), True
        else:
            empty = {key: value[:0] for key, value in batch.items()}
            yield batch, False


def as_batches(data, name: str, batch_size: int, shuffle: bool, seed: int,
               length_key: str | None = None, rank: int = 0, world: int = 1,
               any_rank: Callable[[bool], bool] | None = None) -> Batches:
    """Wrap user data; ``name`` says what it is in error messages. ``length_key``: batch by
    the length of the token ids in that column (``IndexedBatches``). ``rank`` of ``world``:
    this rank's shard; only data the trainer batches itself can be sharded, and a loader
    over an ``IterableDataset`` that yields this rank's rows (``any_rank``: a flag summed
    over the ranks, see ``until_every_rank_ends``)."""
    if _is_dataset_dict(data):
        raise MtlzooError(
            f"{name} is a DatasetDict with splits {list(data)}; pass one split, e.g. data['train']"
        )
    if (isinstance(data, Mapping) and all(isinstance(v, Tensor) for v in data.values())) or (
        _is_dataset(data)
    ):
        source: Batches = IndexedBatches(data, batch_size, shuffle, seed, length_key, name,
                                         rank, world)
    elif isinstance(data, torch.utils.data.IterableDataset):  # rows: batched here
        loader = torch.utils.data.DataLoader(data, batch_size=batch_size)
        return as_batches(loader, name, batch_size, shuffle, seed, length_key, rank, world,
                          any_rank)
    elif isinstance(data, Iterable) and not isinstance(data, (str, bytes, Mapping, Tensor)):
        iterable_rows = isinstance(getattr(data, "dataset", None),
                                   torch.utils.data.IterableDataset)
        if world > 1 and not iterable_rows:
            raise MtlzooError(
                f"{name} is a {type(data).__name__}: under DDP ({world} ranks) the trainer "
                "shards only data it batches itself, so that the ranks together take the "
                "steps of one process; pass a datasets.Dataset or a dict of tensors. (A "
                "DataLoader would have every rank read every row; a DistributedSampler "
                "shards it but pads and reorders the rows, so its steps are not those of "
                "one process. A DataLoader over an IterableDataset that yields each rank's "
                "share is taken: docs/data.md)"
            )
        if length_key is not None:
            raise MtlzooError(
                f"batching='by_length' applies to data the trainer batches itself (a "
                f"datasets.Dataset or a dict of tensors); {name} is a {type(data).__name__}: "
                "order its batches yourself, or use batching='shuffle'"
            )
        source = IterableBatches(data, name, any_rank if world > 1 else None)
    if source.known_length() == 0:
        raise MtlzooError(f"{name} is empty")
    return source


def _common_length(columns: Mapping[str, Tensor]) -> int:
    lengths = {key: len(value) for key, value in columns.items()}
    if len(set(lengths.values())) > 1:
        raise MtlzooError(f"the tensors of a dict must have one length, got {lengths}")
    return next(iter(lengths.values()), 0)


def _is_dataset(data) -> bool:
    return type(data).__name__ == "Dataset" and hasattr(data, "with_format")


def _is_dataset_dict(data) -> bool:
    return type(data).__name__ in ("DatasetDict", "IterableDatasetDict")
