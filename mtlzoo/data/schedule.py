"""Which batches make up each training step, and where in its data an epoch stands.

Joint-label regime: one batch a step, one pass over the data an epoch.

Per-task-dataset regime, ``sampling``:

* ``"round_robin"`` (default): every step draws one batch from every task; the epoch ends
  when every task has been through its data once, and a shorter task starts a new,
  reshuffled pass whenever it runs out.
* ``"proportional"`` / ``"temperature"``: every step draws one batch from one task, chosen
  with probability proportional to its number of batches n_t (or to n_t^(1/temperature));
  an epoch is as many steps as all tasks have batches together.

Every epoch starts every task afresh, and every random choice is drawn from
``(seed, epoch)``. ``epoch(e, position)`` yields each step's batches with the position
after it; started again from that position it yields the same remaining steps, which is
what lets a run resume exactly. An epoch ends when its data ends, not after a count of
batches it expected (a ``len()`` is only a hint).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch

from mtlzoo.data.batches import Batch, Batches
from mtlzoo.errors import MtlzooError

SAMPLING = ("round_robin", "proportional", "temperature")
JOINT = None  # the key of the one batch of a joint-label step


@dataclass(frozen=True)
class Position:
    """Where an epoch stands: ``steps`` taken in it and, per task in the per-task regime,
    the ``(pass, batches)`` consumed of its current pass; ``source``: where a stream
    (``StreamBatches.position``) stands, in the joint regime, else None."""

    steps: int = 0
    streams: dict[str, tuple[int, int]] = field(default_factory=dict)
    source: dict | None = None


class JointSchedule:
    """One batch a step from one source."""

    def __init__(self, source: Batches) -> None:
        self.source = source

    def steps_per_epoch(self) -> int | None:
        """The expected number of steps (a hint for progress bars), or None (a stream)."""
        return self.source.known_length()

    def signature(self) -> dict:
        return {"data": self.source.signature()}

    def epoch(self, epoch: int, position: Position = Position()) -> Iterator[
        tuple[dict[str | None, Batch], Position]
    ]:
        steps = position.steps
        passes = (self.source.passes(epoch, steps) if position.source is None
                  else self.source.passes(epoch, steps, position.source))
        for batch in passes:
            steps += 1
            yield {JOINT: batch}, Position(steps, source=self.source.position)
        if steps == 0:
            raise MtlzooError(f"the training data yielded no batches in epoch {epoch + 1}")


class TaskSchedule:
    """Batches of several per-task sources, combined into steps by ``sampling`` (one of
    ``SAMPLING``; ``temperature`` > 0, both checked by the trainer's options)."""

    def __init__(
        self,
        sources: Mapping[str, Batches],
        sampling: str = "round_robin",
        temperature: float = 2.0,
        seed: int = 0,
    ) -> None:
        self.sources, self.sampling, self.seed = dict(sources), sampling, seed
        self.temperature = temperature if sampling == "temperature" else None
        unknown = [name for name, s in self.sources.items() if s.known_length() is None]
        if unknown:
            raise MtlzooError(
                f"the training data of task(s) {unknown} has no known length (a stream): one "
                "dataset per task needs each task's number of batches to combine them into "
                "steps; give those tasks a datasets.Dataset or a dict of tensors"
            )
        sizes = torch.tensor([len(s) for s in self.sources.values()], dtype=torch.float64)
        power = 1.0 / temperature if sampling == "temperature" else 1.0
        self.probabilities = sizes**power / (sizes**power).sum()

    def steps_per_epoch(self) -> int:
        """The number of steps of an epoch (round robin: expected, a progress-bar hint)."""
        lengths = [len(source) for source in self.sources.values()]
        return max(lengths) if self.sampling == "round_robin" else sum(lengths)

    def signature(self) -> dict:
        sampling = {"sampling": self.sampling, "temperature": self.temperature}
        return {**sampling, **{f"task {name!r}": s.signature() for name, s in self.sources.items()}}

    def epoch(self, epoch: int, position: Position = Position()) -> Iterator[
        tuple[dict[str | None, Batch], Position]
    ]:
        names = list(self.sources)
        at = {name: position.streams.get(name, (0, 0)) for name in names}
        streams = {name: self._stream(name, epoch, *at[name]) for name in names}
        if self.sampling == "round_robin":
            # look one batch ahead: the epoch ends once every task has begun its second pass
            ahead = {name: next(stream) for name, stream in streams.items()}
            steps = position.steps
            while any(cycle == 0 for cycle, _, _ in ahead.values()):
                batches = {}
                for name, (cycle, offset, batch) in ahead.items():
                    batches[name], at[name] = batch, (cycle, offset)
                    ahead[name] = next(streams[name])
                steps += 1
                yield batches, Position(steps, dict(at))
            return
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.multinomial(
            self.probabilities, self.steps_per_epoch(), replacement=True, generator=generator
        ).tolist()
        for step in range(position.steps, len(order)):
            name = names[order[step]]
            cycle, offset, batch = next(streams[name])
            at[name] = (cycle, offset)
            yield {name: batch}, Position(step + 1, dict(at))

    def _stream(self, name: str, epoch: int, cycle: int, offset: int) -> Iterator[
        tuple[int, int, Batch]
    ]:
        """A task's batches within an epoch, pass after pass, from batch ``offset`` of pass
        ``cycle``; each with its ``(pass, batches consumed of that pass)``."""
        source = self.sources[name]
        while True:
            for batch in source.passes((epoch << 20) + cycle, offset):
                offset += 1
                yield cycle, offset, batch
            if offset == 0:
                raise MtlzooError(
                    f"the training data of task {name!r} yielded no batches in epoch "
                    f"{epoch + 1}"
                )
            cycle, offset = cycle + 1, 0
