"""Which batches make up each training step.

Joint-label regime: one batch a step, one pass over the data an epoch.

Per-task-dataset regime, ``sampling``:

* ``"round_robin"`` (default): every step draws one batch from every task; an epoch is as
  many steps as the longest task has batches, and a shorter task starts a new, reshuffled
  pass whenever it runs out.
* ``"proportional"`` / ``"temperature"``: every step draws one batch from one task, chosen
  with probability proportional to its number of batches n_t (or to n_t^(1/temperature));
  an epoch is as many steps as all tasks have batches together.

Every epoch starts every task afresh, and every random choice is drawn from
``(seed, epoch)``, so any step of any epoch can be replayed to resume a run exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from mtlzoo.data.batches import Batch, Batches
from mtlzoo.errors import MtlzooError

SAMPLING = ("round_robin", "proportional", "temperature")
JOINT = None  # the key of the one batch of a joint-label step


class JointSchedule:
    """One batch a step from one source."""

    def __init__(self, source: Batches) -> None:
        self.source = source

    def steps_per_epoch(self) -> int:
        return len(self.source)

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[dict[str | None, Batch]]:
        for batch in self.source.passes(epoch, skip):
            yield {JOINT: batch}


class TaskSchedule:
    """Batches of several per-task sources, combined into steps by ``sampling``."""

    def __init__(
        self,
        sources: Mapping[str, Batches],
        sampling: str = "round_robin",
        temperature: float = 2.0,
        seed: int = 0,
    ) -> None:
        if sampling not in SAMPLING:
            raise MtlzooError(f"unknown sampling {sampling!r}; expected one of {SAMPLING}")
        if sampling == "temperature" and not temperature > 0:
            raise MtlzooError(f"temperature must be positive, got {temperature!r}")
        self.sources, self.sampling, self.seed = dict(sources), sampling, seed
        sizes = torch.tensor([len(s) for s in self.sources.values()], dtype=torch.float64)
        power = 1.0 / temperature if sampling == "temperature" else 1.0
        self.probabilities = sizes**power / (sizes**power).sum()

    def steps_per_epoch(self) -> int:
        lengths = [len(source) for source in self.sources.values()]
        return max(lengths) if self.sampling == "round_robin" else sum(lengths)

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[dict[str | None, Batch]]:
        names = list(self.sources)
        if self.sampling == "round_robin":
            order = None
            consumed = dict.fromkeys(names, skip)
        else:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.multinomial(
                self.probabilities, self.steps_per_epoch(), replacement=True,
                generator=generator,
            ).tolist()
            consumed = {name: order[:skip].count(i) for i, name in enumerate(names)}
        streams = {name: self._stream(name, epoch, consumed[name]) for name in names}
        for step in range(skip, self.steps_per_epoch()):
            if order is None:
                yield {name: next(stream) for name, stream in streams.items()}
            else:
                name = names[order[step]]
                yield {name: next(streams[name])}

    def _stream(self, name: str, epoch: int, start: int) -> Iterator[Batch]:
        """A task's batches within an epoch, pass after pass, from position ``start``."""
        source = self.sources[name]
        cycle, offset = divmod(start, len(source))
        while True:
            yield from source.passes((epoch << 20) + cycle, offset)
            cycle, offset = cycle + 1, 0
