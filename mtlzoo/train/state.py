"""The trainer's state: where the run stands, what it has recorded, typed and versioned.

``TrainerState.to_dict()`` is what a checkpoint stores (plain Python values and tensors, so
it loads with ``weights_only=True``); ``from_dict`` checks it field by field.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from torch import Tensor

from mtlzoo import _checks
from mtlzoo.data.schedule import Position
from mtlzoo.errors import MtlzooError

VERSION = 2  # of the state's layout; a checkpoint of another version is refused


@dataclass
class LossSums:
    """One task's sums over the steps of the current epoch (its mean loss and weight)."""

    loss: float = 0.0
    weight: float = 0.0
    steps: int = 0


@dataclass
class EarlyStopping:
    """The record of early stopping on ``column`` of the history."""

    column: str
    minimise: bool
    best: float | None = None
    epoch: int | None = None  # 1-based, of the best value
    bad_epochs: int = 0  # epochs since the best
    weights: dict[str, Tensor] | None = None  # the model's state at the best epoch

    def update(self, value: float | None, epoch: int, weights) -> None:
        """Record an epoch's ``value``; ``weights()`` gives the model state to keep."""
        better = value is not None and value == value and (  # not NaN
            self.best is None or (value < self.best if self.minimise else value > self.best)
        )
        if better:
            self.best, self.epoch, self.bad_epochs, self.weights = value, epoch, 0, weights()
        else:
            self.bad_epochs += 1


@dataclass
class TrainerState:
    """Where a run stands: optimizer ``step``s taken, ``epoch``s completed, the
    ``position`` within the current epoch and the ``data`` it runs on (its signature), the
    current epoch's loss sums, the ``history`` (one row per epoch), early stopping, and with
    ``Trainer(diagnostics_every=N)`` the ``diagnostics`` rows (one per logged step) and each
    task's loss at its first step (``first_losses``, the loss ratios' denominators)."""

    step: int = 0
    epoch: int = 0
    position: Position = field(default_factory=Position)
    data: dict | None = None
    epoch_sums: dict[str, LossSums] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    stopping: EarlyStopping | None = None
    diagnostics: list[dict] = field(default_factory=list)
    first_losses: dict[str, float] = field(default_factory=dict)

    @property
    def mid_epoch(self) -> bool:
        return self.position.steps > 0

    def to_dict(self, sources: list | None = None) -> dict:
        """``sources``: every rank's ``position.source`` (under DDP), else this one's."""
        stopping, source = self.stopping, self.position.source
        return {
            "version": VERSION,
            "step": self.step,
            "epoch": self.epoch,
            "position": {"steps": self.position.steps,
                         "streams": {k: list(v) for k, v in self.position.streams.items()},
                         "sources": sources or (None if source is None else [source])},
            "data": self.data,
            "epoch_sums": {k: vars(v).copy() for k, v in self.epoch_sums.items()},
            "history": [dict(row) for row in self.history],
            "stopping": None if stopping is None else vars(stopping).copy(),
            "diagnostics": [dict(row) for row in self.diagnostics],
            "first_losses": dict(self.first_losses),
        }

    @classmethod
    def from_dict(cls, state: object, rank: int = 0) -> TrainerState:
        """The state ``to_dict`` wrote, with rank ``rank``'s stream position; anything else
        raises ``MtlzooError`` saying what."""
        if isinstance(state, dict):  # written before diagnostics: none logged
            state = {"diagnostics": [], "first_losses": {}, **state}
        _fields("the trainer state", state, ["version", *(f.name for f in fields(cls))])
        if state["version"] != VERSION:
            raise MtlzooError(
                f"the trainer state is of version {state['version']!r}; this mtlzoo reads "
                f"version {VERSION}"
            )
        for key in ("step", "epoch"):
            _count(key, state[key])
        _kind("data", state["data"], (dict, type(None)))
        _kind("history", state["history"], list)
        for row in state["history"]:
            _kind("a history row", row, dict)
        _kind("diagnostics", state["diagnostics"], list)
        for row in state["diagnostics"]:
            _kind("a diagnostics row", row, dict)
        _kind("first_losses", state["first_losses"], dict)
        position = {"sources": None, **state["position"]}  # sources: since streams
        _fields("the position", position, ["steps", "streams", "sources"])
        _kind("the position's sources", position["sources"], (list, type(None)))
        sources = position["sources"] or []
        for source in sources:
            _kind("a stream position", source, dict)
        _count("the position's steps", position["steps"])
        _kind("the position's streams", position["streams"], dict)
        for name, at in position["streams"].items():
            if not (isinstance(at, (list, tuple)) and len(at) == 2):
                raise MtlzooError(f"the position of task {name!r} is {at!r}, not (pass, batch)")
            for value in at:
                _count(f"the position of task {name!r}", value)
        stopping = state["stopping"]
        if stopping is not None:
            _fields("the early-stopping record", stopping, [f.name for f in
                                                            fields(EarlyStopping)])
        sums = state["epoch_sums"]
        _kind("epoch_sums", sums, dict)
        for value in sums.values():
            _fields("the loss sums", value, [f.name for f in fields(LossSums)])
        return cls(
            step=state["step"],
            epoch=state["epoch"],
            position=Position(position["steps"],
                              {k: tuple(v) for k, v in position["streams"].items()},
                              sources[rank] if rank < len(sources) else None),
            data=state["data"],
            epoch_sums={k: LossSums(**v) for k, v in sums.items()},
            history=list(state["history"]),
            stopping=None if stopping is None else EarlyStopping(**stopping),
            diagnostics=list(state["diagnostics"]),
            first_losses=dict(state["first_losses"]),
        )


def _fields(what: str, value: object, names: list[str]) -> None:
    if not isinstance(value, dict) or sorted(value) != sorted(names):
        found = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise MtlzooError(f"{what} has fields {found}, expected {sorted(names)}")


def _kind(what: str, value: object, kinds: type | tuple[type, ...]) -> None:
    if not isinstance(value, kinds):
        raise MtlzooError(f"{what} is a {type(value).__name__} in the trainer state")


def _count(what: str, value: object) -> None:
    if not _checks.is_int(value) or value < 0:
        raise MtlzooError(f"{what} is {value!r} in the trainer state, not a count")
