"""The trainer: ``L = sum_t w_t L_t`` minimised with Adam, in both data regimes.

* Joint-label regime (recsys): ``fit(data)``; every batch carries the input and a label per
  task. A missing label (``<task>_mask`` False, or NaN) adds nothing to the loss or the
  metrics; optional per-row weights come under ``weight_key``.
* Per-task-dataset regime: ``fit({"sentiment": data_a, "topic": data_b})``; every step draws
  batches as ``sampling`` says (``mtlzoo.data.schedule``), each batch runs through the
  shared layers and only its own task's head, and the weighted sum of the losses is
  back-propagated once, then the optimizer steps once.

The weighting (``mtlzoo.weighting``) turns the per-task losses into the update.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from mtlzoo import _checks
from mtlzoo.data.batches import Batch, as_batches
from mtlzoo.data.schedule import JOINT, JointSchedule, TaskSchedule
from mtlzoo.errors import MtlzooError, suggest
from mtlzoo.losses import check_row_weights, labelled_rows, task_loss
from mtlzoo.metrics import task_metrics
from mtlzoo.models.base import MultiTaskModel
from mtlzoo.weighting import Weighting, create_weighting

CHECKPOINT_FORMAT = 1
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": lambda params, lr, weight_decay: torch.optim.SGD(
        params, lr=lr, momentum=0.9, weight_decay=weight_decay
    ),
}


class Trainer:
    """Trains a ``MultiTaskModel``; see the module docstring for the two data regimes.

    ``weighting`` is a registered name (``mtlzoo.list_weightings()``), a ``Weighting``, or a
    dict ``{task: weight}`` (fixed weights). ``optimizer`` is ``"adam"``, ``"adamw"``,
    ``"sgd"`` (momentum 0.9) or a function ``params -> torch.optim.Optimizer``. Data that the
    trainer batches itself (a ``datasets.Dataset`` or a dict of tensors) is shuffled from
    ``seed`` and the epoch alone, so a run resumed from a checkpoint replays it exactly.
    ``input_key`` names the input column, or several (a dict of them reaches the model's
    encoder, e.g. ``("categorical", "numeric")`` for a ``TabularEncoder``).

    >>> trainer = Trainer(model, weighting="uncertainty", lr=1e-3)      # doctest: +SKIP
    >>> history = trainer.fit(data["train"], eval=data["validation"], epochs=3)
    >>> trainer.evaluate(data["test"])                  # per-task metrics, a DataFrame
    """

    def __init__(
        self,
        model: MultiTaskModel,
        weighting: str | Weighting | Mapping[str, float] = "equal",
        optimizer: str | Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        *,
        weighting_options: Mapping | None = None,
        batch_size: int = 256,
        sampling: str = "round_robin",
        temperature: float = 2.0,
        input_key: str | Sequence[str] = "x",
        weight_key: str = "weight",
        label_keys: Mapping[str, str] | None = None,
        grad_clip: float | None = None,
        seed: int = 0,
        progress: bool = True,
        device: str | torch.device | None = None,
    ) -> None:
        if not isinstance(model, MultiTaskModel):
            raise MtlzooError(f"Trainer needs an mtlzoo model, got {type(model).__name__}")
        self.model = model if device is None else model.to(device)
        self.device = next(model.parameters()).device
        self.tasks = {task.name: task for task in model.tasks}
        self.weighting = _make_weighting(weighting, model.task_names, weighting_options)
        self.weighting.to(self.device)
        params = [*model.parameters(), *self.weighting.parameters()]
        self.optimizer = _make_optimizer(optimizer, params, lr, weight_decay)
        self.batch_size = _checks.positive_int("batch_size", batch_size)
        self.sampling, self.temperature = sampling, temperature
        self.input_key, self.weight_key = input_key, weight_key
        self.label_keys = dict(label_keys or {})
        for name in self.label_keys:
            self._check_task(name, "label_keys")
        self.grad_clip, self.seed, self.progress = grad_clip, seed, progress
        self.step = 0  # optimizer steps taken
        self.epoch = 0  # epochs completed
        self.step_in_epoch = 0
        self._epoch_sums: dict[str, list[float]] = {}  # task -> [loss sum, weight sum, steps]
        self._history: list[dict] = []
        self._stopping: dict | None = None  # early stopping: column, best, epoch, state...
        self._representations: list[Tensor] = []  # the encoder's outputs in this step
        if model.encoder is not None:
            model.encoder.register_forward_hook(self._keep_representation)

    # --- training -------------------------------------------------------------------------

    def fit(
        self,
        train,
        eval=None,
        *,
        epochs: int | None = None,
        steps: int | None = None,
        checkpoint: str | Path | None = None,
        checkpoint_every: int | None = None,
        early_stopping: str | None = None,
        patience: int = 3,
    ):
        """Train until ``epochs`` epochs or ``steps`` steps in all (counting those of a
        loaded checkpoint); evaluate on ``eval`` after every epoch; with ``checkpoint``,
        save there after every epoch and every ``checkpoint_every`` steps. Returns the
        history (one row per epoch, a DataFrame).

        ``early_stopping`` names an eval column of the history (``"income/auc"``,
        ``"y1/mse"``; its direction from ``mtlzoo.metrics.METRIC_DIRECTIONS``): training
        stops after ``patience`` epochs without improvement, and the weights of the best
        epoch are restored (``best_epoch``)."""
        if (epochs is None) == (steps is None):
            raise MtlzooError("give exactly one of epochs= and steps=")
        limit = _checks.positive_int("epochs" if epochs else "steps", epochs or steps)
        if checkpoint_every is not None:
            _checks.positive_int("checkpoint_every", checkpoint_every)
        if early_stopping is not None:
            self._start_early_stopping(early_stopping, patience, eval)
        schedule = self._schedule(train)
        per_epoch = schedule.steps_per_epoch()

        def done() -> bool:
            if self._stopping is not None and self._stopping["bad_epochs"] >= patience:
                return True
            return self.epoch >= limit if epochs else self.step >= limit

        while not done():
            bar = self._bar(per_epoch, limit if epochs else None)
            for step_batches in schedule.epoch(self.epoch, self.step_in_epoch):
                self._train_step(step_batches)
                bar.update()
                bar.set_postfix_str(self._running_losses())
                if checkpoint and checkpoint_every and self.step % checkpoint_every == 0:
                    self.save(checkpoint)
                if steps and self.step >= limit:
                    break
            bar.close()
            if self.step_in_epoch == per_epoch:
                self._end_epoch(eval)
                if checkpoint:
                    self.save(checkpoint)
            elif checkpoint:
                self.save(checkpoint)
        if self._stopping is not None and self._stopping["state"] is not None:
            self.model.load_state_dict(self._stopping["state"])
        return self.history

    @property
    def best_epoch(self) -> int | None:
        """The epoch (1-based) whose weights early stopping kept, or None."""
        return None if self._stopping is None else self._stopping["epoch"]

    def _start_early_stopping(self, column: str, patience: int, eval) -> None:
        from mtlzoo.metrics import METRIC_DIRECTIONS

        _checks.positive_int("patience", patience)
        if eval is None:
            raise MtlzooError("early_stopping needs eval= data to measure")
        task, _, metric = column.partition("/")
        if task not in self.tasks or metric not in [*METRIC_DIRECTIONS, "loss"]:
            raise MtlzooError(
                f"early_stopping={column!r} must be '<task>/<metric>' with a task of "
                f"{list(self.tasks)} and a metric of {[*METRIC_DIRECTIONS, 'loss']}"
            )
        if self._stopping is None or self._stopping["column"] != column:
            self._stopping = {"column": column, "best": None, "epoch": None, "bad_epochs": 0,
                              "state": None}
        self._stopping["minimise"] = METRIC_DIRECTIONS.get(metric, "min") == "min"

    def _track_best(self, row: dict) -> None:
        stopping = self._stopping
        value = row.get(stopping["column"])
        best = stopping["best"]
        better = value is not None and value == value and (  # not NaN
            best is None or (value < best if stopping["minimise"] else value > best)
        )
        if better:
            stopping.update(best=value, epoch=row["epoch"], bad_epochs=0,
                            state={k: v.detach().clone() for k, v in
                                   self.model.state_dict().items()})
        else:
            stopping["bad_epochs"] += 1

    def _keep_representation(self, module: nn.Module, args, output: Tensor) -> None:
        if module.training:  # training forward passes only, not evaluation
            self._representations.append(output)

    def _train_step(self, step_batches: dict[str | None, Batch]) -> None:
        self.model.train()
        self._representations.clear()
        losses: dict[str, Tensor] = {}
        aux = None
        for task_name, batch in step_batches.items():
            x = self._input(batch)
            out = self.model(x, tasks=None if task_name is JOINT else [task_name])
            aux = out.aux_loss if aux is None else aux + out.aux_loss
            for name, logits in out.logits.items():
                loss = task_loss(self.tasks[name], logits, *self._labels(batch, name))
                if loss is not None:
                    losses[name] = loss
        self.step += 1
        self.step_in_epoch += 1
        if not losses:
            return  # no labelled row in the step: nothing to learn from
        values = torch.stack([loss.detach() for loss in losses.values()])
        if not torch.isfinite(values).all():
            name, value = next((n, v) for n, v in zip(losses, values.tolist(), strict=True)
                               if not math.isfinite(v))
            raise MtlzooError(f"task {name!r}: the loss is {value} at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        if aux is not None and aux.requires_grad:
            aux.backward(retain_graph=True)
        one_pass = len(self._representations) == 1  # MGDA-UB needs one shared Z a step
        weights = self.weighting.backward(
            losses, self.model.shared_parameters(), self.model.task_parameters(),
            self._representations[0] if one_pass else None,
        )
        self._representations.clear()
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.weighting.after_step()
        for name, loss, weight in zip(losses, values.tolist(), weights.tolist(), strict=True):
            sums = self._epoch_sums.setdefault(name, [0.0, 0.0, 0])
            sums[0] += loss
            sums[1] += weight
            sums[2] += 1

    def _end_epoch(self, eval) -> None:
        means = {name: s[0] / s[2] for name, s in self._epoch_sums.items() if s[2]}
        self.weighting.epoch_end(means)
        row = {"epoch": self.epoch + 1, "step": self.step}
        for name, (loss_sum, weight_sum, count) in self._epoch_sums.items():
            row[f"{name}/train_loss"] = loss_sum / count
            row[f"{name}/weight"] = weight_sum / count
        if eval is not None:
            for name, metrics in self.evaluate(eval).iterrows():
                row.update({f"{name}/{key}": value for key, value in metrics.items()})
        self._history.append(row)
        if self._stopping is not None:
            self._track_best(row)
        self.epoch += 1
        self.step_in_epoch = 0
        self._epoch_sums = {}

    # --- evaluation -----------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, data):
        """Per-task metrics over the whole of ``data`` (joint, or a dict task -> data), as a
        DataFrame indexed by task: ``rows`` labelled, ``loss``, and the task kind's metrics
        (``mtlzoo.metrics.task_metrics``)."""
        import pandas as pd

        was_training = self.model.training
        self.model.eval()
        collected: dict[str, tuple[list[Tensor], list[Tensor]]] = {}
        for task_name, source in self._eval_sources(data):
            for batch in source.passes(0):
                out = self.model(self._input(batch), tasks=task_name and [task_name])
                for name, logits in out.logits.items():
                    labels, mask, _ = self._labels(batch, name)
                    labels, labelled = labelled_rows(self.tasks[name], labels, mask)
                    kept = collected.setdefault(name, ([], []))
                    kept[0].append(logits[labelled].float().cpu())
                    kept[1].append(labels[labelled].cpu())
        self.model.train(was_training)
        rows = {}
        for name, (logits, labels) in collected.items():
            task, logits, labels = self.tasks[name], torch.cat(logits), torch.cat(labels)
            loss = task_loss(task, logits, labels) if len(labels) else None
            rows[name] = {
                "rows": len(labels),
                "loss": float("nan") if loss is None else loss.item(),
                **task_metrics(task.kind, logits, labels),
            }
        return pd.DataFrame.from_dict(rows, orient="index")

    @property
    def history(self):
        """One row per completed epoch: train loss and mean weight per task, eval metrics."""
        import pandas as pd

        return pd.DataFrame(self._history)

    # --- checkpoints ----------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write model, optimizer, weighting state, RNG states and position atomically (a
        temporary file in the same folder, then a rename): a crash never leaves half a file."""
        path = Path(path)
        state = {
            "format": CHECKPOINT_FORMAT,
            "tasks": list(self.tasks),
            "weighting": type(self.weighting).__name__,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "weighting_state": self.weighting.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
            "position": {"step": self.step, "epoch": self.epoch,
                         "step_in_epoch": self.step_in_epoch},
            "epoch_sums": self._epoch_sums,
            "history": self._history,
            "early_stopping": self._stopping,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(handle, "wb") as file:
                torch.save(state, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def load(self, path: str | Path) -> None:
        """Restore a checkpoint written by ``save`` (read with ``weights_only=True``); the
        next ``fit`` continues where it stopped."""
        path = Path(path)
        if not path.is_file():
            raise MtlzooError(f"no checkpoint at {str(path)!r}")
        state = torch.load(path, map_location=self.device, weights_only=True)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise MtlzooError(f"{str(path)!r} is not an mtlzoo checkpoint of this version")
        if state["tasks"] != list(self.tasks):
            raise MtlzooError(
                f"checkpoint tasks {state['tasks']} differ from the model's {list(self.tasks)}"
            )
        if state["weighting"] != type(self.weighting).__name__:
            raise MtlzooError(
                f"checkpoint was trained with weighting {state['weighting']!r}, this trainer "
                f"has {type(self.weighting).__name__!r}"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.weighting.load_state_dict(state["weighting_state"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        random.setstate(state["rng"]["python"])
        position = state["position"]
        self.step, self.epoch = position["step"], position["epoch"]
        self.step_in_epoch = position["step_in_epoch"]
        self._epoch_sums = state["epoch_sums"]
        self._history = state["history"]
        self._stopping = state["early_stopping"]

    # --- data -----------------------------------------------------------------------------

    def _schedule(self, train) -> JointSchedule | TaskSchedule:
        if not _is_per_task(train):
            return JointSchedule(self._source(train, "the training data", shuffle=True))
        for name in train:
            self._check_task(name, "the training data")
        missing = [name for name in self.tasks if name not in train]
        if missing:
            raise MtlzooError(
                f"the training data has no dataset for task(s) {missing}; the model's tasks "
                f"are {list(self.tasks)}"
            )
        sources = {
            name: self._source(data, f"the training data of task {name!r}", shuffle=True,
                               offset=index)
            for index, (name, data) in enumerate(train.items())
        }
        return TaskSchedule(sources, self.sampling, self.temperature, self.seed)

    def _eval_sources(self, data):
        if not _is_per_task(data):
            return [(JOINT, self._source(data, "the evaluation data", shuffle=False))]
        for name in data:
            self._check_task(name, "the evaluation data")
        return [
            (name, self._source(d, f"the evaluation data of task {name!r}", shuffle=False))
            for name, d in data.items()
        ]

    def _source(self, data, what: str, shuffle: bool, offset: int = 0):
        return as_batches(data, what, self.batch_size, shuffle, self.seed + 7919 * offset)

    def _input(self, batch: Batch) -> Tensor | dict[str, Tensor]:
        """The model input: one column, or a dict of several (``input_key`` a sequence)."""
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

    def _labels(self, batch: Batch, name: str) -> tuple[Tensor, Tensor | None, Tensor | None]:
        key = self.label_keys.get(name, name)
        if key not in batch and name not in self.label_keys and "label" in batch:
            key = "label"  # a per-task dataset's one label column (IMDb, AG News, ...)
        if key not in batch:
            raise MtlzooError(
                f"task {name!r}: no label column {key!r} in the batch (columns: "
                f"{sorted(batch)}).{suggest(key, batch)} Set Trainer(label_keys=...) to map it"
            )
        mask = batch.get(f"{name}_mask")
        weights = batch.get(self.weight_key)
        if weights is not None:
            check_row_weights(weights)
        return tuple(_to(t, self.device) if t is not None else None
                     for t in (batch[key], mask, weights))

    def _check_task(self, name: str, where: str) -> None:
        if name not in self.tasks:
            raise MtlzooError(
                f"{where} names task {name!r}, which the model lacks.{suggest(name, self.tasks)}"
                f" The model's tasks: {list(self.tasks)}"
            )

    # --- progress -------------------------------------------------------------------------

    def _bar(self, per_epoch: int, epochs: int | None):
        from tqdm import tqdm

        of = f"/{epochs}" if epochs else ""
        return tqdm(
            total=per_epoch, initial=self.step_in_epoch, desc=f"epoch {self.epoch + 1}{of}",
            disable=None if self.progress else True,  # None: shown on a terminal only
            leave=False, dynamic_ncols=True,
        )

    def _running_losses(self) -> str:
        if not self.progress:
            return ""
        return " ".join(f"{name} {s[0] / s[2]:.4g}" for name, s in self._epoch_sums.items())


def _make_weighting(weighting, task_names, options) -> Weighting:
    if isinstance(weighting, Weighting):
        return weighting
    if isinstance(weighting, Mapping):
        return create_weighting("fixed", task_names, weights=dict(weighting))
    if not isinstance(weighting, str):
        raise MtlzooError(
            f"weighting must be a name, a Weighting or a dict of task weights, got {weighting!r}"
        )
    return create_weighting(weighting, task_names, **dict(options or {}))


def _make_optimizer(optimizer, params, lr: float, weight_decay: float):
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
        raise MtlzooError(f"lr must be a positive number, got {lr!r}")
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise MtlzooError(
                f"unknown optimizer {optimizer!r}.{suggest(optimizer, OPTIMIZERS)} "
                f"Known: {', '.join(OPTIMIZERS)}"
            )
        return OPTIMIZERS[optimizer](params, lr=lr, weight_decay=weight_decay)
    if callable(optimizer):
        return optimizer(params)
    raise MtlzooError(
        f"optimizer must be a name or a function of the parameters, got {optimizer!r}"
    )


def _is_per_task(data) -> bool:
    """A dict of data sets (per task), as opposed to one data set or a dict of tensors."""
    return (
        isinstance(data, Mapping) and bool(data)
        and not any(isinstance(value, Tensor) for value in data.values())
        and type(data).__name__ not in ("DatasetDict", "IterableDatasetDict")
    )


def _to(value, device: torch.device):
    return value.to(device) if isinstance(value, Tensor) else value
