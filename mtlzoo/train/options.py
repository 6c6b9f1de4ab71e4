"""The trainer's options, each checked once when the trainer is built, and the optimizer and
weighting they name."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from mtlzoo import _checks
from mtlzoo.data.batches import BATCHING
from mtlzoo.data.schedule import SAMPLING
from mtlzoo.data.streams import WINDOW_BATCHES
from mtlzoo.errors import MtlzooError, suggest
from mtlzoo.tasks import Task
from mtlzoo.weighting import Weighting, create_weighting

STRATEGIES = ("auto", "ddp", "fsdp", "none")  # how many processes train, and how
# the fused optimizers TorchRec's sharded tables train with under DDP (Trainer(table_optimizer=))
TABLE_OPTIMIZERS = ("adagrad", "sgd", "adam")
# precision -> the dtype the forward passes autocast to (None: no autocast)
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}
# the keyword arguments of torch.compile that Trainer(compile={...}) may set
COMPILE_OPTIONS = tuple(name for name in inspect.signature(torch.compile).parameters
                        if name != "model")

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": lambda params, lr, weight_decay: torch.optim.SGD(
        params, lr=lr, momentum=0.9, weight_decay=weight_decay
    ),
}
# the factor of the optimizer's lr at step s (from 0) of a run planned to take n steps
LR_SCHEDULES: dict[str, Callable[[int, int], float]] = {
    "constant": lambda step, total: 1.0,
    "cosine": lambda step, total: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)),
}


@dataclass(frozen=True)
class Options:
    """What ``Trainer(...)`` was given besides the model, the weighting and the optimizer;
    see ``Trainer`` for each. Every value is checked here: a bad one raises ``MtlzooError``
    naming the option before anything runs."""

    lr: float = 1e-3
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    batch_size: int = 256
    batching: str = "shuffle"
    stream_window: int = WINDOW_BATCHES
    sampling: str = "round_robin"
    temperature: float = 2.0
    input_key: str | tuple[str, ...] = "x"
    weight_key: str = "weight"
    label_keys: Mapping[str, str] = field(default_factory=dict)
    grad_clip: float | None = None
    seed: int = 0
    progress: bool = True
    device: torch.device | None = None
    strategy: str = "auto"
    precision: str = "fp32"
    compile: bool | Mapping[str, object] = False
    table_optimizer: str = "adagrad"
    table_lr: float | None = None
    diagnostics_every: int | None = None

    def __post_init__(self) -> None:
        _checks.real("lr", self.lr, positive=True)
        _checks.choice("lr_schedule", self.lr_schedule, tuple(LR_SCHEDULES))
        _checks.real("weight_decay", self.weight_decay)
        _checks.positive_int("batch_size", self.batch_size)
        _checks.choice("batching", self.batching, BATCHING)
        _checks.positive_int("stream_window", self.stream_window)
        if self.sampling not in SAMPLING:
            raise MtlzooError(
                f"unknown sampling {self.sampling!r}.{suggest(str(self.sampling), SAMPLING)} "
                f"Known: {', '.join(SAMPLING)}"
            )
        _checks.real("temperature", self.temperature, positive=True)
        keys = (self.input_key,) if isinstance(self.input_key, str) else self.input_key
        if not isinstance(keys, Sequence) or not keys:
            raise MtlzooError(
                f"input_key must be a column name or a list of them, got {self.input_key!r}"
            )
        for key in keys:
            _checks.name("input_key", key)
        object.__setattr__(self, "input_key", keys[0] if isinstance(self.input_key, str)
                           else tuple(keys))
        if self.batching == "by_length" and not isinstance(self.input_key, str):
            raise MtlzooError(
                f"batching='by_length' sorts by the length of one column of token ids; "
                f"input_key names several, {list(self.input_key)}"
            )
        _checks.name("weight_key", self.weight_key)
        _checks.mapping("label_keys", self.label_keys, "a dict task -> column")
        for task, column in self.label_keys.items():
            _checks.name(f"label_keys[{task!r}]", column)
        object.__setattr__(self, "label_keys", dict(self.label_keys))
        if self.grad_clip is not None:
            _checks.real("grad_clip", self.grad_clip, positive=True)
        _checks.non_negative_int("seed", self.seed)
        _checks.boolean("progress", self.progress)
        object.__setattr__(self, "device", check_device(self.device))
        _checks.choice("strategy", self.strategy, STRATEGIES)
        _checks.choice("precision", self.precision, tuple(PRECISIONS))
        if not isinstance(self.compile, bool):
            _checks.mapping("compile", self.compile,
                            "True, False or a dict of torch.compile's keyword arguments")
            for key in self.compile:
                if key not in COMPILE_OPTIONS:
                    raise MtlzooError(
                        f"compile has the key {key!r}, which torch.compile does not take."
                        f"{suggest(str(key), COMPILE_OPTIONS)} It takes: "
                        f"{', '.join(COMPILE_OPTIONS)}"
                    )
            object.__setattr__(self, "compile", dict(self.compile))
        _checks.choice("table_optimizer", self.table_optimizer, TABLE_OPTIMIZERS)
        if self.table_lr is not None:
            _checks.real("table_lr", self.table_lr, positive=True)
        if self.diagnostics_every is not None:
            _checks.positive_int("diagnostics_every", self.diagnostics_every)


def check_device(value: object) -> torch.device | None:
    """A device this torch build has and can use now, or None (keep the model's)."""
    if value is None:
        return None
    if not isinstance(value, (str, torch.device)):
        raise MtlzooError(f"device must be a name such as 'cpu' or 'cuda', got {value!r}")
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError) as error:
        raise MtlzooError(f"device {value!r} is not a device torch knows ({error})") from None
    if device.type != "cpu":
        backend = getattr(torch, device.type, None)
        available = getattr(backend, "is_available", lambda: False)()
        if not available:
            raise MtlzooError(f"device {value!r}: this torch build has no usable {device.type}")
        count = getattr(backend, "device_count", lambda: 1)()
        if device.index is not None and device.index >= count:
            raise MtlzooError(f"device {value!r}: only {count} {device.type} device(s) here")
    return device


def make_weighting(weighting, tasks: Sequence[Task], options: Mapping | None) -> Weighting:
    """``weighting`` as given to ``Trainer``: a name, a ``Weighting`` or a dict of weights."""
    if options is not None:
        _checks.mapping("weighting_options", options)
    if isinstance(weighting, Weighting):
        if options:
            raise MtlzooError("weighting_options are for a weighting given by name")
        return weighting
    if isinstance(weighting, Mapping):
        return create_weighting("fixed", tasks, weights=dict(weighting))
    if not isinstance(weighting, str):
        raise MtlzooError(
            f"weighting must be a name, a Weighting or a dict of task weights, got {weighting!r}"
        )
    return create_weighting(weighting, tasks, **dict(options or {}))


def make_optimizer(
    optimizer: str | Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
    params: list[nn.Parameter],
    options: Options,
) -> torch.optim.Optimizer:
    """A named optimizer with ``options.lr`` and ``weight_decay``, or ``optimizer(params)``."""
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise MtlzooError(
                f"unknown optimizer {optimizer!r}.{suggest(optimizer, OPTIMIZERS)} "
                f"Known: {', '.join(OPTIMIZERS)}"
            )
        extra = {}
        if optimizer in ("adam", "adamw") and all(  # FSDP2's DTensors: not fused
            p.is_floating_point() and p.device.type in ("cpu", "cuda")
            and not isinstance(p, DTensor) for p in params
        ):
            extra["fused"] = True  # one kernel for every parameter: on CPU 5x the loop's speed
        return OPTIMIZERS[optimizer](params, lr=options.lr, weight_decay=options.weight_decay,
                                     **extra)
    if callable(optimizer):
        built = optimizer(params)
        if not isinstance(built, torch.optim.Optimizer):
            raise MtlzooError(
                f"optimizer(params) must return a torch.optim.Optimizer, got {built!r}"
            )
        return built
    raise MtlzooError(
        f"optimizer must be a name or a function of the parameters, got {optimizer!r}"
    )
