"""Training data bigger than memory: a ``datasets.IterableDataset`` read window by window.

``datasets.load_dataset("parquet", data_files="data/*.parquet", split="train",
streaming=True)`` never loads its files whole: the trainer reads ``window_batches`` batches'
rows at a time (a window), shuffles the window's rows from ``(seed, pass, window)`` (a
seeded shuffle buffer as big as the window) and cuts it into batches. An epoch is one pass
over the stream and ends when the stream ends; its length is not known in advance.

Over several ranks the stream is split by ``datasets.distributed.split_dataset_by_node``:
with a number of files divisible by the ranks each rank reads its own files; otherwise
every rank reads every file and keeps its share of the rows (a warning says so). The ranks'
shares may end at different steps: a rank whose share has ended takes empty batches until
every rank's has (one flag summed over the ranks a step), so no rank waits forever and every
row is read once a pass.

The position after each batch is the stream's ``state_dict()`` at the start of its window
and the batches taken of that window: a resumed run re-reads at most one window, without
repeating or skipping a row.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from mtlzoo.data.batches import Batch, Batches, arrow_tensor, take, until_every_rank_ends
from mtlzoo.errors import MtlzooError

WINDOW_BATCHES = 64  # batches whose rows are read, and shuffled, together


class StreamBatches(Batches):
    """The batches of a ``datasets.IterableDataset``, one pass an epoch (see the module).

    ``any_rank(flag)``: True when ``flag`` is True on some rank (a collective), given under
    DDP with ``rank`` of ``world``. ``position`` is where the last batch yielded left the
    pass, for ``passes(..., state=position)`` to resume from."""

    def __init__(self, data, batch_size: int, shuffle: bool, seed: int, name: str,
                 rank: int = 0, world: int = 1,
                 any_rank: Callable[[bool], bool] | None = None,
                 window_batches: int = WINDOW_BATCHES) -> None:
        from datasets.distributed import split_dataset_by_node

        self.shards = data.n_shards
        if world > 1:
            if self.shards % world:
                warnings.warn(
                    f"{name} has {self.shards} file(s) (shards) for {world} ranks: every rank "
                    f"reads every file and keeps 1/{world} of the rows; with a multiple of "
                    f"{world} files each rank reads only its own", UserWarning, stacklevel=4)
            data = split_dataset_by_node(data, rank=rank, world_size=world)
        self.data = data.with_format("arrow")  # windows as Arrow tables: converted here
        self.start = copy.deepcopy(self.data.state_dict())  # the stream's beginning
        self.features = str(data.features)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.name, self.world, self.any_rank = name, world, any_rank
        self.window_batches = window_batches
        self.position: dict | None = None

    def __len__(self) -> int:
        raise MtlzooError(f"{self.name} is a stream: its number of batches is not known")

    def known_length(self) -> int | None:
        return None

    def signature(self) -> dict[str, int | str | None]:
        return {"stream": self.features, "shards": self.shards, "batch_size": self.batch_size,
                "window_batches": self.window_batches, "stream ranks": self.world}

    def passes(self, pass_id: int, skip: int = 0, state: dict | None = None
               ) -> Iterator[Batch]:
        """Pass ``pass_id`` from its start, or from ``state`` (a ``position`` of this pass;
        ``skip`` is then the steps it stands for)."""
        if skip and state is None:
            raise MtlzooError(f"{self.name}: resuming a stream after {skip} batches needs "
                              "the position saved with them")
        if state is not None:
            _check_state(state, pass_id)
        own = self._own(pass_id, state)
        if self.any_rank is None:
            yield from own
            return
        ended = state is not None and state.get("ended")  # padding since the checkpoint
        for batch, padding in until_every_rank_ends(own, self.any_rank, self.name,
                                                    state["empty"] if ended else None):
            if padding:
                self.position = {**self.position, "ended": True, "empty": batch}
            yield batch

    def _own(self, pass_id: int, state: dict | None) -> Iterator[Batch]:
        """This rank's batches of the pass; ``self.position`` follows each one."""
        if state is not None and state.get("ended"):
            self.position = dict(state)
            return
        at = self.start if state is None else state["stream"]
        self.data.load_state_dict(at)
        window, taken = (0, 0) if state is None else (state["window"], state["batches"])
        chunks = self.data.iter(batch_size=self.batch_size * self.window_batches)
        first = True  # before its first chunk the stream's state_dict() is the last pass's
        while True:
            if not first:
                at = copy.deepcopy(self.data.state_dict())  # it changes as the stream is read
            first = False
            table = next(chunks, None)
            if table is None:
                return
            chunk = {name: _column(table.column(name)) for name in table.column_names}
            rows = table.num_rows
            order = torch.arange(rows)
            if self.shuffle:
                generator = torch.Generator().manual_seed(
                    (self.seed * 1_000_003 + pass_id) * 1_000_003 + window)
                order = torch.randperm(rows, generator=generator)
            for number, index in enumerate(order.split(self.batch_size)):
                if number < taken:
                    continue
                self.position = {"pass": pass_id, "stream": at, "window": window,
                                 "batches": number + 1}
                yield {key: _take(value, index) for key, value in chunk.items()}
            window, taken = window + 1, 0


def _column(column) -> Tensor | list:
    """A window's Arrow column as the torch format gives it where it is numbers (or
    equal-length lists of them) without nulls, one tensor converted at once (20x faster
    than the torch format here); else its Python values (strings, ragged lists)."""
    tensor = arrow_tensor(column)
    return column.to_pylist() if tensor is None else tensor


def _take(value, index: Tensor):
    """Rows ``index`` of a column: a tensor, or a list (strings, ragged lists)."""
    if isinstance(value, Tensor):
        return take(value, index)
    return [value[i] for i in index.tolist()]


def _check_state(state: object, pass_id: int) -> None:
    if not (isinstance(state, dict) and {"pass", "stream", "window", "batches"} <= set(state)):
        raise MtlzooError(f"a stream position must hold pass, stream, window and batches, "
                          f"got {state!r:.200}")
    if state["pass"] != pass_id:
        raise MtlzooError(f"the stream position is of pass {state['pass']}, not {pass_id}")


def is_stream(data) -> bool:
    """A ``datasets.IterableDataset``."""
    try:
        from datasets import IterableDataset
    except ImportError:  # pragma: no cover - datasets is a dependency
        return False
    return isinstance(data, IterableDataset)
