"""Batches for the trainer, re-iterable epoch after epoch, reproducibly.

Training data is a ``datasets.Dataset`` (one split), a dict of equal-length tensors, or any
re-iterable of dict batches (a ``DataLoader``). A batch is a dict: the input under the
trainer's ``input_key``, labels under each task's name (or its ``label_keys`` entry),
optionally ``<task>_mask`` (True where labelled) and per-row weights under ``weight_key``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import Tensor

from mtlzoo.errors import MtlzooError

Batch = dict[str, Tensor]


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

    def signature(self) -> dict[str, int | str | None]:
        raise NotImplementedError


class IndexedBatches(Batches):
    """Rows fetched by index from a ``datasets.Dataset`` or a dict of tensors; each pass is
    a permutation drawn from ``(seed, pass_id)`` alone, so any pass can be replayed."""

    def __init__(self, data, batch_size: int, shuffle: bool, seed: int) -> None:
        if isinstance(data, Mapping):
            self.rows = _common_length(data)
            self.fetch = lambda index: {key: value[index] for key, value in data.items()}
        else:
            torch_data = data.with_format("torch")
            self.rows = len(torch_data)
            self.fetch = lambda index: torch_data[index.tolist()]
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed

    def __len__(self) -> int:
        return -(-self.rows // self.batch_size)

    def signature(self) -> dict[str, int | str | None]:
        return {"rows": self.rows, "batch_size": self.batch_size}

    def passes(self, pass_id: int, skip: int = 0) -> Iterator[Batch]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + pass_id)
            order = torch.randperm(self.rows, generator=generator)
        else:
            order = torch.arange(self.rows)
        for index in order.split(self.batch_size)[skip:]:
            yield self.fetch(index)


class IterableBatches(Batches):
    """A ``DataLoader`` or another re-iterable of dict batches, in its own order."""

    def __init__(self, data: Iterable, name: str) -> None:
        self.data, self.name = data, name

    def __len__(self) -> int:
        try:
            return len(self.data)
        except TypeError:
            raise MtlzooError(
                f"{self.name} has no len(); pass a DataLoader, a datasets.Dataset or a dict "
                "of tensors"
            ) from None

    def signature(self) -> dict[str, int | str | None]:
        return {"loader": type(self.data).__name__, "batches": len(self)}

    def passes(self, pass_id: int, skip: int = 0) -> Iterator[Batch]:
        # a DataLoader draws its base seed from torch's RNG when a pass starts; a fork keeps
        # that draw out of the RNG that dropout uses, so resuming mid-pass replays it exactly
        with torch.random.fork_rng(devices=[]):
            iterator = iter(self.data)
        for _ in range(skip):
            next(iterator, None)
        for batch in iterator:
            if not isinstance(batch, Mapping):
                raise MtlzooError(
                    f"{self.name} must yield dict batches (column -> tensor), got "
                    f"{type(batch).__name__}"
                )
            yield dict(batch)


def as_batches(data, name: str, batch_size: int, shuffle: bool, seed: int) -> Batches:
    """Wrap user data; ``name`` says what it is in error messages."""
    if _is_dataset_dict(data):
        raise MtlzooError(
            f"{name} is a DatasetDict with splits {list(data)}; pass one split, e.g. data['train']"
        )
    if (isinstance(data, Mapping) and all(isinstance(v, Tensor) for v in data.values())) or (
        _is_dataset(data)
    ):
        source: Batches = IndexedBatches(data, batch_size, shuffle, seed)
    elif isinstance(data, Iterable) and not isinstance(data, (str, bytes, Mapping, Tensor)):
        source = IterableBatches(data, name)
    else:
        raise MtlzooError(
            f"{name} must be a datasets.Dataset, a dict of tensors or a DataLoader, got "
            f"{type(data).__name__}"
        )
    if len(source) == 0:
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
