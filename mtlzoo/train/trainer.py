"""The trainer: the loop over steps and epochs, evaluation, and saving and loading its state.

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

import copy
import dataclasses
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from pathlib import Path

import torch
from torch import Tensor, nn

from mtlzoo import _checks
from mtlzoo.data.batches import as_batches
from mtlzoo.data.schedule import JOINT, JointSchedule, Position, TaskSchedule
from mtlzoo.data.streams import WINDOW_BATCHES, StreamBatches, is_stream
from mtlzoo.diagnostics import Diagnostics, epoch_summary
from mtlzoo.encoders import sharding
from mtlzoo.errors import MtlzooError, suggest
from mtlzoo.losses import labelled_rows, task_loss
from mtlzoo.metrics import KIND_METRICS, METRIC_DIRECTIONS, task_metrics
from mtlzoo.models.base import MultiTaskModel
from mtlzoo.train import distributed
from mtlzoo.train.checkpoint import (
    check_fits,
    check_writable,
    read_checkpoint,
    record,
    shapes,
    write_checkpoint,
)
from mtlzoo.train.options import (
    LR_SCHEDULES,
    PRECISIONS,
    Options,
    make_optimizer,
    make_weighting,
)
from mtlzoo.train.state import EarlyStopping, LossSums, TrainerState
from mtlzoo.train.step import (
    BatchReader,
    NonFiniteLoss,
    TrainStep,
    autocast,
    compiled_model_config,
)
from mtlzoo.weighting import Weighting
from mtlzoo.weighting.base import GradientWeighting


class Trainer:
    """Trains a ``MultiTaskModel``; see the module docstring for the two data regimes.

    ``weighting`` is a registered name (``mtlzoo.list_weightings()``), a ``Weighting``, or a
    dict ``{task: weight}`` (fixed weights). ``optimizer`` is ``"adam"``, ``"adamw"``,
    ``"sgd"`` (momentum 0.9) or a function ``params -> torch.optim.Optimizer``. Data that the
    trainer batches itself (a ``datasets.Dataset`` or a dict of tensors) is shuffled from
    ``seed`` and the epoch alone, so a run resumed from a checkpoint replays it exactly.
    ``input_key`` names the input column, or several (a dict of them reaches the model's
    encoder, e.g. ``("categorical", "numeric")`` for a ``TabularEncoder``). ``grad_clip``
    caps the gradient's global norm. ``lr_schedule``: ``"constant"``, or ``"cosine"``, the
    lr decayed from ``lr`` to 0 over the steps each ``fit`` plans to take (``epochs`` times
    the steps of an epoch, or ``steps``): lr(s) = lr (1 + cos(pi s / n)) / 2 at step s of
    n. It is a function of the step alone, so a resumed run (the same ``fit`` arguments)
    follows it exactly. ``batching`` (data the trainer batches itself): ``"shuffle"``, or
    ``"by_length"`` for token ids (``input_key`` one 2-D integer column, right-padded with
    0): each pass sorts the rows of every window of ``WINDOW_BATCHES`` (50) shuffled
    batches by length, shuffles the order of the batches and trims each batch to its
    longest row; evaluation runs sorted by length, trimmed. A BiLSTM ``TextEncoder`` then
    reads a batch's real tokens, not its padding (docs/training.md, "Length-aware
    batching"). A ``datasets.IterableDataset`` (``streaming=True``) is read
    ``stream_window`` (64) batches' rows at a time, each window's rows shuffled (a seeded
    buffer; docs/data.md). ``strategy``: ``"auto"`` (DDP when more than one rank runs: a
    process group of more than one rank exists, or torchrun's environment describes one, which the
    trainer then starts), ``"ddp"``, ``"fsdp"`` (FSDP2: the model's parameters, gradients
    and optimizer state sharded across the ranks, experts on the expert axis; loss
    weightings only), or ``"none"`` (one process); under DDP and FSDP2 the ranks together
    take exactly the steps one process takes with their global batch (docs/distributed.md).
    Under DDP the tables of a ``SparseEncoder(backend="torchrec")`` are sharded over the
    ranks by TorchRec and trained by its fused ``table_optimizer`` (``"adagrad"``,
    ``"sgd"``, ``"adam"`` on CUDA) at ``table_lr`` (None: ``lr``), the rest by DDP and
    ``optimizer``; in one process the trainer's optimizer trains the tables too
    (docs/distributed.md, "Sharded embedding tables").
    Every option is checked here, before anything runs.

    ``precision``: ``"fp32"``, or ``"bf16"``: the forward passes (training and evaluation)
    under ``torch.autocast`` to bfloat16 on the model's device, the weights, the losses,
    the metrics and the gradient methods' Gram matrices in fp32. ``compile``: True
    compiles the model in place (``nn.Module.compile``, so its state dict keeps its keys),
    a dict gives ``torch.compile``'s keyword arguments (``{"mode": "max-autotune"}``). See
    docs/training.md, "Precision and compilation".

    ``diagnostics_every``: every N steps, log the gates' entropy and expert load per task,
    the cosine of the tasks' gradients on the shared parameters and each task's loss over
    its first, one row per logged step in ``trainer.diagnostics`` (``mtlzoo.diagnostics``;
    docs/training.md, "Diagnostics"), and each epoch's mean of the entropies, effective
    experts, cosines and loss ratios in its ``history`` row; the weights trained are those of
    a run without.
    One process only: under DDP and FSDP2 it is refused.

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
        lr_schedule: str = "constant",
        weighting_options: Mapping | None = None,
        batch_size: int = 256,
        batching: str = "shuffle",
        stream_window: int = WINDOW_BATCHES,
        sampling: str = "round_robin",
        temperature: float = 2.0,
        input_key: str | Sequence[str] = "x",
        weight_key: str = "weight",
        label_keys: Mapping[str, str] | None = None,
        grad_clip: float | None = None,
        seed: int = 0,
        progress: bool = True,
        device: str | torch.device | None = None,
        strategy: str = "auto",
        precision: str = "fp32",
        compile: bool | Mapping[str, object] = False,
        table_optimizer: str = "adagrad",
        table_lr: float | None = None,
        diagnostics_every: int | None = None,
    ) -> None:
        if not isinstance(model, MultiTaskModel):
            raise MtlzooError(f"Trainer needs an mtlzoo model, got {type(model).__name__}")
        self.options = Options(
            lr=lr, lr_schedule=lr_schedule, weight_decay=weight_decay, batch_size=batch_size,
            batching=batching, stream_window=stream_window, sampling=sampling,
            temperature=temperature, input_key=input_key, weight_key=weight_key,
            label_keys=label_keys if label_keys is not None else {}, grad_clip=grad_clip,
            seed=seed, progress=progress, device=device, strategy=strategy,
            precision=precision, compile=compile, table_optimizer=table_optimizer,
            table_lr=table_lr, diagnostics_every=diagnostics_every,
        )
        self.ranks = distributed.resolve(self.options.strategy)  # None: one process
        if self.ranks is not None and diagnostics_every is not None:
            raise MtlzooError(
                f"diagnostics_every={diagnostics_every}: diagnostics are logged in one process "
                f"only, and this trainer runs on {self.ranks.size} ranks (strategy="
                f"{self.options.strategy!r}); train with strategy='none', or without "
                "diagnostics_every"
            )
        if self.ranks is not None:
            if self.ranks.rank != 0:  # rank 0 alone writes progress
                self.options = dataclasses.replace(self.options, progress=False)
            if device is None and self.ranks.device.type == "cuda":
                self.options = dataclasses.replace(self.options, device=self.ranks.device)
        self.tasks = {task.name: task for task in model.tasks}
        for name in self.options.label_keys:
            self._check_task(name, "label_keys")
        self.model = model if self.options.device is None else model.to(self.options.device)
        self.device = next(model.parameters()).device
        self.weighting = make_weighting(weighting, model.tasks, weighting_options)
        self.weighting.to(self.device)
        if self.options.compile is not False:  # a compiled backward cannot be batched
            self.weighting.batched_backward = False
        # TorchRec tables under DDP: sharded, trained by their fused optimizer in backward
        self._tables = None  # the DistributedModelParallel that holds them
        self._table_lr = self.options.table_lr or self.options.lr
        if self.ranks is not None and sharding.table_state_names(model):
            self._check_table_sharding()
            self._tables = sharding.shard_tables(model, lr=self._table_lr,
                                                 optimizer=self.options.table_optimizer)
        if self.ranks is not None and self.ranks.sharded:  # before the optimizer sees them
            distributed.shard(model, self.weighting, self.ranks)
        tables = set(sharding.table_parameter_names(model)) if self._tables else set()
        params = [*(p for name, p in model.named_parameters() if name not in tables),
                  *self.weighting.parameters()]
        self.optimizer = make_optimizer(optimizer, params, self.options)
        self._base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.reader = BatchReader(self.tasks, self.options.input_key, self.options.weight_key,
                                  self.options.label_keys, self.device)
        self._step = (
            TrainStep(model, self.weighting, self.optimizer, self.reader, self.options.grad_clip)
            if self.ranks is None else
            distributed.DistributedStep(model, self.weighting, self.optimizer, self.reader,
                                        self.options.grad_clip, self.ranks)
        )
        self._step.autocast = PRECISIONS[self.options.precision]
        self._step.compiled = self.options.compile is not False
        self._diagnostics = (None if diagnostics_every is None
                             else Diagnostics(diagnostics_every, model.task_names))
        self._step.diagnostics = self._diagnostics
        if self.options.compile is not False:  # in place: the state dict keeps its keys
            model.compile(**({} if self.options.compile is True else self.options.compile))
        self.state = TrainerState()
        self._saved: tuple[Path, int] | None = None  # the last checkpoint written or read
        self._resumed = False  # a checkpoint was loaded and no fit has run since

    @property
    def step(self) -> int:
        """Optimizer steps taken (those of a loaded checkpoint included)."""
        return self.state.step

    @property
    def epoch(self) -> int:
        """Epochs completed (those of a loaded checkpoint included)."""
        return self.state.epoch

    @property
    def best_epoch(self) -> int | None:
        """The epoch (1-based) whose weights early stopping kept, or None."""
        return None if self.state.stopping is None else self.state.stopping.epoch

    @property
    def history(self):
        """One row per completed epoch: train loss and mean weight per task, eval metrics
        (and with ``diagnostics_every`` the epoch's mean of the per-row diagnostics)."""
        import pandas as pd

        return pd.DataFrame(self.state.history)

    @property
    def diagnostics(self):
        """One row per step logged by ``diagnostics_every``: ``step``, ``epoch`` and the
        columns of ``mtlzoo.diagnostics`` (docs/training.md, "Diagnostics")."""
        import pandas as pd

        return pd.DataFrame(self.state.diagnostics)

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
        save there after every epoch, every ``checkpoint_every`` steps and when the run
        stops mid-epoch. Returns the history (one row per epoch, a DataFrame).

        ``early_stopping`` names an eval column of the history (``"income/auc"``,
        ``"y1/mse"``; its direction from ``mtlzoo.metrics.METRIC_DIRECTIONS``): training
        stops after ``patience`` epochs without improvement, and when the run ends at an
        epoch's end the weights of the best epoch are restored (``best_epoch``).

        An epoch ends when its data ends. A run resumed mid-epoch must see the data it was
        saved with (rows, batch size, batching, seed, sampling); otherwise ``MtlzooError`` says what
        changed. At an epoch boundary other data is taken, with a warning. Every argument
        is checked before anything changes."""
        if (epochs is None) == (steps is None):
            raise MtlzooError("give exactly one of epochs= and steps=")
        by_epochs = epochs is not None
        limit = _checks.positive_int("epochs" if by_epochs else "steps", epochs or steps)
        if checkpoint_every is not None:
            _checks.positive_int("checkpoint_every", checkpoint_every)
        _checks.positive_int("patience", patience)
        if early_stopping is not None:
            self._check_early_stopping(early_stopping, eval)
        schedule = self._schedule(train)
        if (self._tables is not None and isinstance(schedule, TaskSchedule)
                and schedule.sampling == "round_robin"
                and self.options.table_optimizer != "sgd"):
            raise MtlzooError(
                f"sampling='round_robin' with the TorchRec tables sharded and trained by the "
                f"fused {self.options.table_optimizer!r}: a step runs every task's batch "
                "through the tables, and the fused kernels update them once per pass, which "
                f"{self.options.table_optimizer!r} (unlike 'sgd') does not make the one "
                "update of the step's summed gradient; use sampling='proportional' or "
                "'temperature' (one task's batch a step), or table_optimizer='sgd'")
        eval_sources = None if eval is None else self._eval_sources(eval)
        changed = self._check_data(schedule)
        if by_epochs and schedule.steps_per_epoch() is None and \
                self.options.lr_schedule != "constant":
            raise MtlzooError(
                f"lr_schedule={self.options.lr_schedule!r} runs over the steps planned, and "
                "the training data is a stream of unknown length: train it with steps=, or "
                "lr_schedule='constant'"
            )
        if checkpoint is not None:
            checkpoint = check_writable(checkpoint)

        # every check passed: from here on the state changes
        if changed:
            warnings.warn(f"epoch {self.state.epoch + 1} starts on other data than the "
                          f"checkpoint's: {changed}", UserWarning, stacklevel=2)
        self._resumed = False
        stopping = self.state.stopping
        if early_stopping is not None and (stopping is None or
                                           stopping.column != early_stopping):
            self.state.stopping = EarlyStopping(
                early_stopping, METRIC_DIRECTIONS.get(early_stopping.split("/")[1]) != "max"
            )

        def stop_reason() -> str | None:
            state, stopping = self.state, self.state.stopping
            if (state.epoch if by_epochs else state.step) >= limit:
                return f"{'epochs' if by_epochs else 'steps'}={limit} reached"
            if early_stopping and stopping.bad_epochs >= patience:
                return f"{patience} epochs without a better {early_stopping}"
            return None

        if stop_reason():
            warnings.warn(f"nothing to train at step {self.state.step}, epoch "
                          f"{self.state.epoch}: {stop_reason()} (counting the steps and "
                          "epochs done)", UserWarning, stacklevel=2)
        per_epoch = schedule.steps_per_epoch()  # None: a stream
        planned = limit if not by_epochs else None if per_epoch is None else limit * per_epoch
        try:
            goal = ("epochs" if by_epochs else "steps", limit)
            for event in self._run(schedule, eval_sources, stop_reason, bool(early_stopping),
                                   planned, goal):
                every = checkpoint_every and self.state.step % checkpoint_every == 0
                if checkpoint is not None and (event != "step" or every):
                    self.save(checkpoint)
        except NonFiniteLoss as error:
            if self._saved is None:
                raise
            path, step = self._saved
            raise NonFiniteLoss(
                f"{error}; the last good checkpoint, {str(path)!r} (step {step}), is unchanged"
            ) from None
        stopping = self.state.stopping
        if early_stopping and not self.state.mid_epoch and stopping.weights is not None:
            self._load_model_state(stopping.weights)
        return self.history

    def _run(self, schedule, eval_sources, stop_reason: Callable[[], str | None], early: bool,
             planned: int | None, goal: tuple[str, int] | None = None) -> Iterator[str]:
        """Train until ``stop_reason()``; yields ``"step"`` after every step, ``"epoch"``
        after every epoch, ``"stop"`` when it stops mid-epoch (the moments to checkpoint).
        ``planned``: the steps the run expects in all, over which the lr schedule runs (None:
        unknown, a stream, with a constant lr);
        ``goal``: ``("epochs" or "steps", limit)``, for the epoch lines (``_report``)."""
        state = self.state
        progress = self.options.progress
        count_rows = progress or self.ranks is not None  # under DDP: summed over the ranks
        run_start, run_first_step = time.perf_counter(), state.step
        factor = (None if self.options.lr_schedule == "constant"  # the optimizer's lr untouched
                  else LR_SCHEDULES[self.options.lr_schedule])
        while not stop_reason():
            state.data = self._signature(schedule)
            per_epoch = schedule.steps_per_epoch()  # None: a stream
            bar = self._bar(per_epoch)
            epoch_start, rows = time.perf_counter(), 0
            for (batches, position), last in _with_last(
                schedule.epoch(state.epoch, state.position)
            ):
                if factor is not None:
                    for group, base in zip(self.optimizer.param_groups, self._base_lrs,
                                           strict=True):
                        group["lr"] = base * factor(state.step, planned)
                    if self._tables is not None:  # the tables' fused optimizer too
                        sharding.set_table_lr(self._tables,
                                              self._table_lr * factor(state.step, planned))
                result = self._step(batches, state.step + 1)
                self._record(result)
                step_rows = self._rows(batches) if count_rows else 0
                rows += step_rows
                state.step += 1
                state.position = position
                if self._diagnostics is not None:
                    self._log_diagnostics(result)
                bar.update(1 if per_epoch is not None else step_rows)
                bar.set_postfix_str(self._running_losses())
                if last:
                    break
                if stop_reason():
                    bar.close()
                    yield "stop"
                    return
                yield "step"
            bar.close()
            trained = time.perf_counter() - epoch_start
            if self.ranks is not None:
                rows = int(self.ranks.sum(torch.tensor(rows, device=self.ranks.device)))
            self._end_epoch(eval_sources, early)
            if progress:
                self._report(schedule, goal, rows / trained if trained > 0 else float("inf"),
                             early, (time.perf_counter() - run_start)
                             / max(state.step - run_first_step, 1))
            yield "epoch"

    def _record(self, result: dict[str, tuple[float, float]]) -> None:
        for name, (loss, weight) in result.items():
            sums = self.state.epoch_sums.setdefault(name, LossSums())
            sums.loss += loss
            sums.weight += weight
            sums.steps += 1

    def _log_diagnostics(self, result: dict[str, tuple[float, float]]) -> None:
        """Keep each task's first loss; the row of a step ``diagnostics_every`` logs."""
        state = self.state
        for name, (loss, _) in result.items():
            state.first_losses.setdefault(name, loss)
        row = self._diagnostics.row(state.step, state.epoch + 1, result, state.first_losses)
        if row is not None:
            state.diagnostics.append(row)

    def _end_epoch(self, eval_sources, early: bool) -> None:
        """Close the epoch: the weighting's epoch end, the history row (with the metrics
        of ``eval_sources``, from ``_eval_sources``), and with ``early`` stopping the
        record of the best epoch."""
        state = self.state
        self.weighting.epoch_end({name: s.loss / s.steps for name, s in state.epoch_sums.items()
                                  if s.steps})
        row = {"epoch": state.epoch + 1, "step": state.step}
        for name, sums in state.epoch_sums.items():
            row[f"{name}/train_loss"] = sums.loss / sums.steps
            row[f"{name}/weight"] = sums.weight / sums.steps
        if self._diagnostics is not None:  # the epoch's mean of the per-row diagnostics
            row.update(epoch_summary([logged for logged in state.diagnostics
                                      if logged["epoch"] == row["epoch"]]))
        if eval_sources is not None:
            for name, metrics in self._evaluate(eval_sources).iterrows():
                row.update({f"{name}/{key}": _plain(value) for key, value in metrics.items()})
        if early:
            column = state.stopping.column
            if column not in row:
                raise MtlzooError(
                    f"early_stopping={column!r}: the evaluation gave no such column (it gave "
                    f"{[key for key in row if '/' in key]}); does the eval data label the task?"
                )
            state.stopping.update(row[column], row["epoch"], lambda: {
                k: v.detach().clone() for k, v in self._weights().items()
            })
        state.history.append(row)
        state.epoch += 1
        state.position = Position()
        state.epoch_sums = {}

    def _check_early_stopping(self, column: str, eval) -> None:
        if eval is None:
            raise MtlzooError("early_stopping needs eval= data to measure")
        task, _, metric = column.partition("/") if isinstance(column, str) else ("", "", "")
        if task not in self.tasks:
            raise MtlzooError(
                f"early_stopping={column!r} must be '<task>/<metric>' with a task of "
                f"{list(self.tasks)}.{suggest(task, self.tasks)}"
            )
        metrics = ["loss", *KIND_METRICS[self.tasks[task].kind]]
        if metric not in metrics:
            raise MtlzooError(
                f"early_stopping={column!r}: a {self.tasks[task].kind} task has the metrics "
                f"{metrics}"
            )
        if _is_per_task(eval) and task not in eval:
            raise MtlzooError(
                f"early_stopping={column!r}: the eval data has no dataset for task {task!r} "
                f"(it has {list(eval)})"
            )

    # --- evaluation -----------------------------------------------------------------------

    def evaluate(self, data):
        """Per-task metrics over the whole of ``data`` (joint, or a dict task -> data), as a
        DataFrame indexed by task: ``rows`` labelled, ``loss``, and the task kind's metrics
        (``mtlzoo.metrics.task_metrics``)."""
        return self._evaluate(self._eval_sources(data))

    @torch.no_grad()
    def _evaluate(self, sources):
        """``evaluate`` on the sources ``_eval_sources`` made."""
        import pandas as pd

        was_training = self.model.training
        self.model.eval()
        collected: dict[str, tuple[list[Tensor], list[Tensor]]] = {}
        for task_name, source in sources:
            for batch in source.passes(0):
                with (autocast(self.model, PRECISIONS[self.options.precision]),
                      compiled_model_config(self.options.compile is not False)):
                    out = self.model(self.reader.inputs(batch),
                                     tasks=task_name and [task_name])
                for name, logits in out.logits.items():
                    labels, mask = self.reader.labels(batch, name, task_name is not JOINT)
                    labels, labelled = labelled_rows(self.tasks[name], labels, mask)
                    kept = collected.setdefault(name, ([], []))
                    kept[0].append(logits[labelled].float().cpu())
                    kept[1].append(labels[labelled].cpu())
        self.model.train(was_training)
        if self.ranks is not None:  # every rank's slice of each batch, in one process's order
            collected = _interleave(self.ranks.gather(collected))
        whole = {name: (torch.cat(logits), torch.cat(labels))
                 for name, (logits, labels) in collected.items()}
        rows = {}
        for name, (logits, labels) in whole.items():
            task = self.tasks[name]
            loss = task_loss(task, logits, labels) if len(labels) else None
            rows[name] = {
                "rows": len(labels),
                "loss": float("nan") if loss is None else loss.item(),
                **task_metrics(task.kind, logits, labels),
            }
        return pd.DataFrame.from_dict(rows, orient="index")

    # --- checkpoints ----------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write the model, optimizer, weighting, trainer state and RNG states to ``path``,
        atomically and with a checksum (``mtlzoo.train.checkpoint``). A model whose weights
        are no longer finite is never saved: ``MtlzooError``, and the file stays as it was.
        Under DDP every rank calls it: rank 0 writes, with every rank's RNG states."""
        path = Path(path)
        model_state = distributed.full_state(self._weights())  # FSDP2: gathered
        self._check_finite(path, model_state)
        weighting_state = self.weighting.state_dict()
        optimizer_state = distributed.full_state(self.optimizer.state_dict())
        if self._tables is not None:  # the fused table optimizer's state, whole
            optimizer_state["tables"] = sharding.gather_table_optimizer(self._tables)
        rng = _rng_state(self.device)
        sources = None  # every rank's stream position, where a stream is read
        if self.ranks is not None:
            rng["ranks"] = self.ranks.gather(rng)
            if self.state.position.source is not None:
                sources = self.ranks.gather(self.state.position.source)
        self._on_rank_zero(lambda: write_checkpoint(path, {
            "model": record(self.model, model_state, self._model_layout(model_state)),
            "weighting": record(self.weighting, weighting_state, shapes(weighting_state)),
            "optimizer": record(self.optimizer, optimizer_state, self._optimizer_layout()),
            "trainer": distributed.full_state(self.state.to_dict(sources)),
            "rng": rng,
        }))
        self._saved = (path, self.state.step)

    def load(self, path: str | Path) -> None:
        """Restore a checkpoint written by ``save``; the next ``fit`` continues where it
        stopped. The file is verified (checksum) and checked against this trainer (model
        class, tasks, parameter shapes, weighting and optimizer kind): ``MtlzooError`` says
        what differs, and a load that fails changes nothing. The optimizer's
        hyperparameters (``lr``, ``weight_decay``, ...) stay those this trainer was built
        with, so a resume may change them. Under DDP every rank calls it: rank 0 reads the
        file and every rank loads what it read, each its own RNG states."""
        path = Path(path)
        payload = (read_checkpoint(path, map_location=self.device) if self.ranks is None
                   else self._on_rank_zero(lambda: read_checkpoint(path, map_location="cpu")))
        rank = 0 if self.ranks is None else self.ranks.rank
        try:
            state = TrainerState.from_dict(payload["trainer"], rank)
            self._check_tables_fit(payload["optimizer"])
            model_state = self._weights()
            check_fits("model", payload["model"], self.model, self._model_layout(model_state))
            check_fits("weighting", payload["weighting"], self.weighting,
                       shapes(self.weighting.state_dict()))
            check_fits("optimizer", payload["optimizer"], self.optimizer,
                       self._optimizer_layout())
            _check_rng_state(payload["rng"])
        except MtlzooError as error:
            raise MtlzooError(f"checkpoint {str(path)!r} does not fit this trainer: {error}"
                              ) from None
        before = self._snapshot()
        try:
            self._restore(payload["model"]["state"], payload["weighting"]["state"],
                          payload["optimizer"]["state"], _rank_rng_state(payload["rng"], rank))
        except Exception as error:  # a checksummed file whose contents are not ours
            self._restore(*before)
            raise MtlzooError(f"checkpoint {str(path)!r} cannot be restored: {error}"
                              ) from error
        self.state = state
        self._saved, self._resumed = (path, state.step), True

    def _on_rank_zero(self, action: Callable[[], object]) -> object:
        """``action()``, under DDP on rank 0 alone while the others wait: its result on
        every rank, or its error (an ``MtlzooError`` on the other ranks)."""
        if self.ranks is None:
            return action()
        result, failure = None, None
        if self.ranks.rank == 0:
            try:
                result = action()
            except Exception as error:
                self.ranks.broadcast((None, str(error)))
                raise
        result, failure = self.ranks.broadcast((result, failure))
        if failure is not None:
            raise MtlzooError(f"on rank 0: {failure}")
        return result

    def _snapshot(self) -> tuple[dict, dict, dict, dict]:
        """Copies of what ``_restore`` sets, to roll a failed load back."""
        optimizer = copy.deepcopy(self.optimizer.state_dict())
        if self._tables is not None:
            optimizer["tables"] = sharding.gather_table_optimizer(self._tables)
        return (copy.deepcopy(self._weights()), copy.deepcopy(self.weighting.state_dict()),
                optimizer, _rng_state(self.device))

    def _restore(self, model: dict, weighting: dict, optimizer: dict, rng: dict) -> None:
        self._load_model_state(model)
        self.weighting.load_state_dict(weighting)
        hyperparameters = [{k: v for k, v in group.items() if k != "params"}
                           for group in self.optimizer.param_groups]
        optimizer = dict(optimizer)
        tables = optimizer.pop("tables", None)
        self.optimizer.load_state_dict(distributed.shard_optimizer_state(optimizer,
                                                                        self.optimizer))
        if self._tables is not None:
            sharding.load_table_optimizer(self._tables, tables)
        for group, kept in zip(self.optimizer.param_groups, hyperparameters, strict=True):
            group.update(kept)
        _set_rng_state(rng)

    def _weights(self) -> dict:
        """The model's state dict; TorchRec's sharded tables in it whole (a collective)."""
        state = self.model.state_dict()
        return state if self._tables is None else sharding.whole_tables_state(self.model, state)

    def _load_model_state(self, state: dict) -> None:
        """Load a state dict of whole tensors (``_weights``, gathered) into the model, each
        rank its shards of FSDP2's parameters or TorchRec's tables."""
        if self._tables is not None:
            sharding.load_whole_tables_state(self.model, state)
        else:
            self.model.load_state_dict(distributed.shard_like(state, self.model.state_dict()))

    def _check_tables_fit(self, saved: object) -> None:
        """A checkpoint's fused table optimizer state is there exactly when this trainer
        shards TorchRec tables, and of its kind."""
        state = saved.get("state") if isinstance(saved, Mapping) else None
        tables = state.get("tables") if isinstance(state, Mapping) else None
        if tables is None and self._tables is None:
            return
        if self._tables is None:
            raise MtlzooError(
                "it was saved with TorchRec tables sharded over ranks, trained by their fused "
                "optimizer, whose state this trainer (one process, the tables trained by its "
                "optimizer) has no place for: resume it under DDP, or load its model weights "
                "alone (read_checkpoint(path)['model']['state'] holds the tables whole)")
        if tables is None:
            raise MtlzooError(
                "this trainer shards TorchRec tables over ranks and trains them with a fused "
                "optimizer, and the checkpoint has no state of it (it was saved in one "
                "process or without sharded tables)")
        ours = set(sharding.table_parameter_names(self.model))
        if not isinstance(tables, Mapping) or not set(tables) <= ours:
            raise MtlzooError(f"its fused table optimizer state names {sorted(tables)}, "
                              f"this model's tables are {sorted(ours)}")

    def _model_layout(self, model_state: dict) -> dict:
        tasks = [[task.name, task.kind, task.num_classes or 0] for task in self.model.tasks]
        return {"tasks": tasks, **shapes(model_state)}

    def _optimizer_layout(self) -> dict:
        layout = {f"param_groups[{i}]": [len(group["params"])]
                  for i, group in enumerate(self.optimizer.param_groups)}
        if self._tables is not None:  # the fused optimizer of the tables, by kind
            layout[f"tables ({self.options.table_optimizer})"] = [
                len(sharding.table_parameter_names(self.model))]
        return layout

    def _check_finite(self, path: Path, model_state: dict) -> None:
        for name, value in [*model_state.items(),
                            *self.weighting.named_parameters()]:  # buffers may hold NaN
            if isinstance(value, Tensor) and value.is_floating_point() and not bool(
                value.isfinite().all()
            ):
                kept = (f"the last good checkpoint, {str(self._saved[0])!r} (step "
                        f"{self._saved[1]}), is unchanged" if self._saved else "nothing saved")
                raise MtlzooError(
                    f"after step {self.state.step} {name!r} holds NaN or infinite values (the "
                    f"run diverged; try a lower lr or grad_clip): not saved to {str(path)!r}; "
                    f"{kept}"
                )

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
        sources = {  # in the model's task order, whatever the dict's
            name: self._source(train[name], f"the training data of task {name!r}",
                               shuffle=True, offset=index)
            for index, name in enumerate(self.tasks)
        }
        options = self.options
        return TaskSchedule(sources, options.sampling, options.temperature, options.seed)

    def _signature(self, schedule: JointSchedule | TaskSchedule) -> dict:
        world = {} if self.ranks is None else {"world_size": self.ranks.size}
        return {"seed": self.options.seed, "batching": self.options.batching,
                **schedule.signature(), **world,
                **({} if self.options.precision == "fp32"
                   else {"precision": self.options.precision})}

    def _check_data(self, schedule: JointSchedule | TaskSchedule) -> str | None:
        """Mid-epoch, the data must be that of the steps taken (``MtlzooError`` otherwise);
        returns what differs when a loaded run starts an epoch on other data, else None.
        The batches are compared at their global size (``world_size * batch_size``): a run
        of 2 ranks x 8 rows resumes exactly in one process of 16."""
        saved, now = self.state.data, self._signature(schedule)
        if saved is None:
            return None
        saved = _global_batches({"batching": "shuffle", **saved})  # batching= came later
        now = _global_batches(now)
        if saved == now:
            return None
        changes = "; ".join(_differences(saved, now))
        if self.state.mid_epoch:
            raise MtlzooError(
                f"the run stopped after {self.state.position.steps} steps of epoch "
                f"{self.state.epoch + 1} on other data than this: {changes}. Resume with the "
                "data, batch_size x ranks, batching, seed, sampling and "
                "precision it was saved with, or start afresh"
            )
        return changes if self._resumed else None

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
        options, ranks = self.options, self.ranks
        if is_stream(data):
            if options.batching == "by_length":
                raise MtlzooError(f"{what} is a stream: batching='by_length' needs every "
                                  "row's length first; use batching='shuffle'")
            return StreamBatches(data, options.batch_size, shuffle, options.seed + 7919 * offset,
                                 what, *((0, 1, None) if ranks is None else
                                         (ranks.rank, ranks.size, self._any_rank)),
                                 window_batches=options.stream_window)
        return as_batches(data, what, options.batch_size, shuffle, options.seed + 7919 * offset,
                          options.input_key if options.batching == "by_length" else None,
                          *((0, 1) if ranks is None else (ranks.rank, ranks.size, self._any_rank)))

    def _any_rank(self, flag: bool) -> bool:
        """True when ``flag`` is True on any rank (a collective, under DDP)."""
        return bool(self.ranks.sum(torch.tensor([float(flag)], device=self.ranks.device)) > 0)

    def _check_table_sharding(self) -> None:
        """Refuse, before the model changes, what would not be exact with TorchRec tables
        sharded over the ranks and trained by their fused optimizer in the backward pass."""
        options, why = self.options, None
        if self.ranks.sharded:
            why = ("strategy='fsdp': FSDP2 would shard the tables a second time, over "
                   "TorchRec's shards; use strategy='ddp' (or 'auto'), under which TorchRec "
                   "shards the tables and DDP replicates the rest")
        elif isinstance(self.weighting, GradientWeighting):
            why = (f"weighting {type(self.weighting).__name__} combines per-task gradients of "
                   "the shared parameters, and the fused kernels update the tables in the "
                   "backward pass, leaving them no gradient to combine; use a loss weighting "
                   "(equal, uncertainty, dwa, rlw, fixed weights)")
        elif options.grad_clip is not None:
            why = ("grad_clip: the tables' gradients never reach .grad (the fused kernels "
                   "apply them in the backward pass), so the clipped norm would leave them "
                   "out; train without grad_clip")
        elif options.compile is not False:
            why = "compile: torch.compile of TorchRec's sharded collection is not supported"
        if why is not None:
            raise MtlzooError(
                "the model has TorchRec tables (SparseEncoder(backend='torchrec')), which "
                f"the trainer shards over the {self.ranks.size} ranks, and {why}. "
                "strategy='none' trains them in one process with the trainer's optimizer")

    def _check_task(self, name: str, where: str) -> None:
        if name not in self.tasks:
            raise MtlzooError(
                f"{where} names task {name!r}, which the model lacks.{suggest(name, self.tasks)}"
                f" The model's tasks: {list(self.tasks)}"
            )

    # --- progress -------------------------------------------------------------------------

    def _bar(self, per_epoch: int | None):
        """Steps of ``per_epoch``; rows and rows/s where the length is unknown (a stream)."""
        from tqdm import tqdm

        stream = {"unit": " rows", "unit_scale": True} if per_epoch is None else {}
        return tqdm(
            total=per_epoch, initial=0 if per_epoch is None else self.state.position.steps,
            desc=f"epoch {self.state.epoch + 1}", **stream,
            disable=None if self.options.progress else True,  # None: on a terminal only
            leave=False, dynamic_ncols=True,
        )

    def _rows(self, batches: dict) -> int:
        """The rows of one step's batches: the first dimension of each batch's input column
        (shape metadata only: no host sync)."""
        key = self.options.input_key
        key = key if isinstance(key, str) else key[0]
        rows = 0
        for batch in batches.values():
            value = batch.get(key)
            if value is None:
                value = next((v for v in batch.values() if hasattr(v, "shape")), None)
            shape = getattr(value, "shape", None)
            if shape is not None and len(shape):
                rows += int(shape[0])
            elif isinstance(value, Sized):
                rows += len(value)
        return rows

    def _report(self, schedule, goal: tuple[str, int] | None, rate: float, early: bool,
                per_step: float) -> None:
        """Write the epoch's line to stderr (see docs/training.md, "Progress"):
        ``epoch 2/5 steps 16 loss a=0.4321 b=1.02 eval a/loss=0.45 b/loss=1.1 rows/s 812
        left 0:00:07``; ``per_step``: the wall seconds per step of this fit so far."""
        from tqdm import tqdm

        state, row = self.state, self.state.history[-1]
        before = self.state.history[-2]["step"] if len(self.state.history) > 1 else 0
        kind, limit = goal or ("epochs", None)
        if kind == "epochs":
            head = f"epoch {row['epoch']}/{limit if limit is not None else '?'}"
            per_epoch = schedule.steps_per_epoch()
            left_steps = (0 if limit is None else None if per_epoch is None
                          else max(limit - state.epoch, 0) * per_epoch)
        else:
            head = f"epoch {row['epoch']} (step {state.step}/{limit})"
            left_steps = max(limit - state.step, 0)
        parts = [head, f"steps {row['step'] - before}"]
        losses = [f"{name}={row[f'{name}/train_loss']:.4g}" for name in self.tasks
                  if f"{name}/train_loss" in row]
        parts.append("loss " + (" ".join(losses) or "-"))
        shown = [f"{name}/loss" for name in self.tasks]
        if early and state.stopping is not None and state.stopping.column not in shown:
            shown.append(state.stopping.column)
        metrics = [f"{column}={row[column]:.4g}" for column in shown
                   if isinstance(row.get(column), (int, float))]
        if metrics:
            parts.append("eval " + " ".join(metrics))
        parts.append(f"rows/s {_rate(rate)}")
        parts.append("left ?" if left_steps is None else f"left {_clock(per_step * left_steps)}")
        tqdm.write(" ".join(parts), file=sys.stderr)
        sys.stderr.flush()

    def _running_losses(self) -> str:
        if not self.options.progress:
            return ""
        return " ".join(f"{name} {s.loss / s.steps:.4g}"
                        for name, s in self.state.epoch_sums.items())


def _with_last(items: Iterator) -> Iterator[tuple[object, bool]]:
    """Each item with whether it is the last (one item read ahead)."""
    items = iter(items)
    current = next(items, _END)
    while current is not _END:
        upcoming = next(items, _END)
        yield current, upcoming is _END
        current = upcoming


_END = object()


def _rate(rate: float) -> str:
    """Rows per second: a whole number from 100 on, 3 significant digits below."""
    if rate != rate or rate == float("inf"):
        return "inf" if rate == float("inf") else "nan"
    return f"{rate:.0f}" if rate >= 100 else f"{rate:.3g}"


def _clock(seconds: float) -> str:
    """``H:MM:SS``, rounded to the second."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _is_per_task(data) -> bool:
    """A dict of data sets (per task), as opposed to one data set or a dict of tensors."""
    return (
        isinstance(data, Mapping) and bool(data)
        and not any(isinstance(value, Tensor) for value in data.values())
        and type(data).__name__ not in ("DatasetDict", "IterableDatasetDict")
    )


def _global_batches(signature: dict) -> dict:
    """A data signature with each ``batch_size`` times the ranks, the rows of a step
    (``world_size``, absent in one process, folded in) and fp32 stated."""
    world = signature.get("world_size", 1)

    def fold(part: dict) -> dict:
        return {("batch_size x ranks" if key == "batch_size" else key):
                (value * world if key == "batch_size" else
                 fold(value) if isinstance(value, dict) else value)
                for key, value in part.items() if key != "world_size"}

    return {"precision": "fp32", **fold(signature)}


def _differences(saved: dict, now: dict, where: str = "") -> list[str]:
    """``"key: old -> new"`` for every leaf where two signatures differ."""
    found = []
    for key in dict.fromkeys([*saved, *now]):
        old, new = saved.get(key), now.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            found += _differences(old, new, f"{where}{key} ")
        elif old != new:
            found.append(f"{where}{key} {old!r} -> {new!r}")
    return found


def _interleave(shards: list[dict[str, tuple[list, list]]]) -> dict[str, tuple[list, list]]:
    """The ranks' per-task lists of batch slices (logits, labels) merged batch by batch:
    batch 1 of rank 0, of rank 1, ..., then batch 2 of rank 0, ..."""
    return {
        name: tuple([piece for pieces in zip(*(shard[name][i] for shard in shards), strict=True)
                     for piece in pieces] for i in (0, 1))
        for name in shards[0]
    }


def _plain(value):
    """A NumPy scalar as the Python number it holds (history rows stay plain values)."""
    return value.item() if hasattr(value, "item") else value


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _check_rng_state(state: object, ranks: bool = True) -> None:
    """One process's RNG states; ``ranks``: with, optionally, those of every rank."""
    keys = {"python", "torch", "cuda", "ranks"} if ranks else {"python", "torch", "cuda"}
    if not (isinstance(state, dict) and {"python", "torch"} <= set(state) <= keys):
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise MtlzooError(f"its RNG states are {found}, expected python, torch (and cuda"
                          f"{', ranks' if ranks else ''})")
    if "ranks" in state:
        if not isinstance(state["ranks"], list) or not state["ranks"]:
            raise MtlzooError("its RNG states of the ranks are not a list")
        for rank_state in state["ranks"]:
            _check_rng_state(rank_state, ranks=False)


def _rank_rng_state(state: dict, rank: int) -> dict:
    """The RNG states of ``rank`` in a checkpoint's: its own where the checkpoint has them,
    else rank 0's (a checkpoint of fewer ranks, at an epoch's end)."""
    ranks = state.get("ranks") or [state]
    return ranks[rank] if rank < len(ranks) else ranks[0]


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():  # as many devices as both have
        for index, device_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state.cpu(), index)
