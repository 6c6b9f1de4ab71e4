"""One training step: read the batches, forward, per-task losses, the weighting's backward,
clipping, the optimizer step."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn

from mtlzoo.data.batches import Batch
from mtlzoo.data.schedule import JOINT
from mtlzoo.diagnostics import Diagnostics, StepProbe
from mtlzoo.errors import MtlzooError, suggest
from mtlzoo.losses import check_row_weights, task_loss
from mtlzoo.models.base import ModelOutput, MultiTaskModel
from mtlzoo.tasks import Task
from mtlzoo.weighting import Weighting


class NonFiniteLoss(MtlzooError):
    """A task's loss is NaN or infinite: the step is abandoned before the optimizer moves."""


class BatchReader:
    """Takes the model input and each task's labels, mask and row weights out of a batch.

    A task's labels are in its own column (or its ``label_keys`` entry); only a per-task
    dataset (``per_task=True``) may instead have one ``label`` column.
    """

    def __init__(self, tasks: Mapping[str, Task], input_key: str | tuple[str, ...],
                 weight_key: str, label_keys: Mapping[str, str],
                 device: torch.device) -> None:
        self.tasks, self.input_key, self.weight_key = tasks, input_key, weight_key
        self.label_keys, self.device = label_keys, device

    def inputs(self, batch: Batch) -> Tensor | dict[str, Tensor]:
        """One column, or a dict of several (``input_key`` a tuple)."""
        keys = [self.input_key] if isinstance(self.input_key, str) else list(self.input_key)
        for key in keys:
            if key not in batch:
                raise MtlzooError(
                    f"batch has no input column {key!r} (columns: {sorted(batch)}); "
                    "set Trainer(input_key=...)"
                )
        if isinstance(self.input_key, str):
            return _to(batch[self.input_key], self.device)
        return {key: _to(batch[key], self.device) for key in keys}

    def labels(self, batch: Batch, name: str, per_task: bool) -> tuple[Tensor, Tensor | None]:
        """``(labels, mask or None)`` of task ``name``."""
        key = self.label_keys.get(name, name)
        if per_task and key not in batch and name not in self.label_keys and "label" in batch:
            key = "label"  # a per-task dataset's one label column (IMDb, AG News, ...)
        if key not in batch:
            regime = "" if per_task else " (one dataset for every task: a column per task)"
            raise MtlzooError(
                f"task {name!r}: no label column {key!r} in the batch{regime}; its columns "
                f"are {sorted(batch)}.{suggest(key, batch)} Set Trainer(label_keys=...) to "
                "map it"
            )
        return _to(batch[key], self.device), _to(batch.get(f"{name}_mask"), self.device)

    def row_weights(self, batch: Batch) -> Tensor | None:
        """The batch's per-row sample weights (checked), or None."""
        weights = batch.get(self.weight_key)
        if weights is not None:
            check_row_weights(weights, weight_key=self.weight_key)
        return _to(weights, self.device)


@contextlib.contextmanager
def autocast(model: nn.Module, dtype: torch.dtype | None) -> Iterator[None]:
    """The model's forward passes inside under ``torch.autocast`` to ``dtype`` (None: as
    they are), its logits and ``aux_loss`` handed back in fp32: the weights stay fp32, the
    losses are computed in fp32."""
    if dtype is None:
        yield
        return
    handle = model.register_forward_hook(_in_fp32)
    try:
        with torch.autocast(next(model.parameters()).device.type, dtype=dtype):
            yield
    finally:
        handle.remove()


def compiled_model_config(compiled: bool) -> contextlib.AbstractContextManager:
    """The settings a compiled model's forward and backward passes run under (none when
    ``compiled`` is False): dynamo traces ``torch.lstm`` (``allow_rnn``: the text encoder
    compiles as one graph), and the compiled backward keeps its buffers, so that per-task
    gradients and an ``aux_loss`` can back-propagate through one forward more than once
    (``retain_graph=True``)."""
    if not compiled:
        return contextlib.nullcontext()
    import torch._dynamo.config
    import torch._functorch.config

    stack = contextlib.ExitStack()
    stack.enter_context(torch._dynamo.config.patch(allow_rnn=True))
    stack.enter_context(torch._functorch.config.patch(donated_buffer=False))
    return stack


def _in_fp32(module: nn.Module, args: object, out: ModelOutput) -> ModelOutput:
    return out._replace(logits={name: _fp32(logits) for name, logits in out.logits.items()},
                        aux_loss=_fp32(out.aux_loss))


def _fp32(value: Tensor) -> Tensor:
    return value.float() if value.dtype in (torch.bfloat16, torch.float16) else value


class TrainStep:
    """``step(batches, number)`` trains on one step's batches and returns each task's
    ``(loss, weight)``; a step whose batches carry no label returns ``{}``. ``autocast``:
    the dtype the forward passes autocast to (``Trainer(precision="bf16")``), or None;
    ``compiled``: the model is compiled (``Trainer(compile=True)``); ``diagnostics``: what
    ``Trainer(diagnostics_every=N)`` logs (None: nothing), read from the step's own forward
    passes and losses (no RNG drawn, ``.grad`` untouched)."""

    autocast: torch.dtype | None = None
    compiled: bool = False
    diagnostics: Diagnostics | None = None
    probe: StepProbe | None = None  # the diagnostics of this step, on a step they log

    def __init__(self, model: MultiTaskModel, weighting: Weighting,
                 optimizer: torch.optim.Optimizer, reader: BatchReader,
                 grad_clip: float | None) -> None:
        self.model, self.weighting, self.optimizer = model, weighting, optimizer
        self.reader, self.grad_clip = reader, grad_clip
        self.tasks = reader.tasks
        self._parameters: tuple[list, list] | None = None  # (shared, the heads'), listed once

    def __call__(self, step_batches: dict[str | None, Batch], number: int
                 ) -> dict[str, tuple[float, float]]:
        with compiled_model_config(self.compiled):
            return self._train(step_batches, number)

    def _train(self, step_batches: dict[str | None, Batch], number: int
               ) -> dict[str, tuple[float, float]]:
        if not self.model.training:  # train() walks every module: 50-110 us a step here
            self.model.train()
        if self.diagnostics is not None:
            self.probe = self.diagnostics.probe(number)
        representations: list[Tensor] = []  # the encoder's outputs in this step (MGDA-UB)
        encoder = self.model.encoder
        hook = None if encoder is None else encoder.register_forward_hook(
            lambda module, args, output: representations.append(output)
        )
        try:
            with autocast(self.model, self.autocast):
                losses, aux = self._losses(step_batches)
        finally:
            if hook is not None:
                hook.remove()
        if not losses:
            return {}  # no labelled row in the step: nothing to learn from
        # one host sync for every loss and the model's aux_loss (last)
        stacked = torch.stack([*losses.values(), aux.to(next(iter(losses.values())).dtype)])
        *values, aux_value = stacked.detach().tolist()
        for name, value in [*zip(losses, values, strict=True), (None, aux_value)]:
            if not math.isfinite(value):
                what = "the model's aux_loss" if name is None else f"task {name!r}: the loss"
                raise NonFiniteLoss(f"{what} is {value} at step {number}")
        if self.probe is not None:  # before the backward frees the graph
            self.probe.gradients(losses, self.parameters()[0], self.weighting.batched_backward)
        self.optimizer.zero_grad(set_to_none=True)
        weights = self._backward(losses, aux,
                                 representations[0] if len(representations) == 1 else None)
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.weighting.after_step()
        return dict(zip(losses, zip(values, weights.tolist(), strict=True), strict=True))

    def _backward(self, losses: dict[str, Tensor], aux: Tensor,
                  representation: Tensor | None) -> Tensor:
        """Leave the step's gradients in ``.grad``; the weights the weighting applied."""
        if aux.requires_grad:
            aux.backward(retain_graph=True)
        return self.weighting.backward(losses, *self.parameters(), representation)

    def parameters(self) -> tuple[list, list]:
        """The model's shared and task-specific parameters, listed at the first step (the
        same every step; listing them took 35-80 us)."""
        if self._parameters is None:
            self._parameters = (self.model.shared_parameters(), self.model.task_parameters())
        return self._parameters

    def _losses(self, step_batches: dict[str | None, Batch]
                ) -> tuple[dict[str, Tensor], Tensor]:
        losses: dict[str, Tensor] = {}
        aux = None
        for task_name, batch in step_batches.items():
            out = self.model(self.reader.inputs(batch),
                             tasks=None if task_name is JOINT else [task_name])
            aux = out.aux_loss if aux is None else aux + out.aux_loss
            if self.probe is not None:
                self.probe.gates(out.gate_weights, None if task_name is JOINT else [task_name])
            weights = self.reader.row_weights(batch)
            for name, logits in out.logits.items():
                labels, mask = self.reader.labels(batch, name, per_task=task_name is not JOINT)
                loss = task_loss(self.tasks[name], logits, labels, mask, weights,
                                 weight_key=self.reader.weight_key)
                if loss is not None:
                    losses[name] = loss
        return losses, aux


def _to(value, device: torch.device):
    return value.to(device) if isinstance(value, Tensor) else value
