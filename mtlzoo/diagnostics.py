"""What a run's gates and task gradients do: gate entropy, expert load, expert collapse,
gradient conflict between tasks, and each task's loss relative to its first.

Axes: b batch, g the rows of one gate tensor (one gate each), e experts, t tasks,
p flattened shared parameters.

* From a ``ModelOutput.gate_weights`` dict (name -> (b, g, e), rows summing to one):
  ``gate_entropy`` (g,) the mean over the batch of each row's entropy ``-sum_e w log w``
  (nats), ``expert_load`` (g, e) the mean weight each expert gets, ``top_expert_share``
  (g, e) the share of rows where it weighs most, ``effective_experts`` (g,) ``exp`` of the
  entropy of the load (1: one expert takes everything; e: an even load).
  ``gate_statistics`` names them by gate and task (``gate_rows``).
* ``collapsed_gates`` lists the gates whose busiest expert takes at least ``max_load`` of
  the load; ``warn_collapse`` warns about them (``ExpertCollapseWarning``).
* ``gradient_cosine`` (t, t): the cosine of the per-task gradients of the shared
  parameters (below 0: the tasks pull apart), from ``mtlzoo.weighting.gradients``'
  ``task_gradients`` and ``gram_matrix``, the ones gradient methods use.
* ``loss_ratios``: ``L_t / L_t(first step)`` per task.

``Trainer(diagnostics_every=N)`` logs them every N steps into ``trainer.diagnostics``
(``Diagnostics``; docs/training.md, "Diagnostics"), and each epoch's mean of the
per-row ones (``epoch_summary``: entropies, effective experts, cosines, loss ratios; not the
per-expert loads) into ``trainer.history``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

from mtlzoo import _checks
from mtlzoo.errors import MtlzooError
from mtlzoo.weighting.gradients import gram_matrix, task_gradients

COLLAPSE_LOAD = 0.9  # a gate whose busiest expert takes this much of its load has collapsed
SHARED = "shared"  # the name of a gate row that serves every task
# AITM's "transfer" weights (b, n, 2) over [p_{t-1}, q_t]: a row per selected task after the
# model's first; they weigh two inputs, not experts, so no collapse is looked for in them
TRANSFER_GATES = ("transfer",)


# the columns ``epoch_summary`` averages into the history: one a gate row, task or pair (the
# per-expert ``expert load/`` and ``top expert/`` columns stay in ``trainer.diagnostics``)
SUMMARY_COLUMNS = ("gate entropy/", "normalised entropy/", "effective experts/",
                   "grad cosine/", "loss ratio/")


def epoch_summary(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The mean over ``rows`` (an epoch's logged diagnostics rows) of each
    ``SUMMARY_COLUMNS`` column, NaN (a gate row no batch reached) left out; a column NaN in
    every row stays NaN. Empty without rows."""
    sums: dict[str, list[float]] = {}
    for row in rows:
        for name, value in row.items():
            if name.startswith(SUMMARY_COLUMNS):
                seen = sums.setdefault(name, [0.0, 0])
                if value == value:  # not NaN
                    seen[0] += value
                    seen[1] += 1
    return {name: total / count if count else math.nan for name, (total, count) in sums.items()}


class ExpertCollapseWarning(UserWarning):
    """A gate puts nearly all its load on one expert (``collapsed_gates``)."""


def gate_entropy(weights: Tensor) -> Tensor:
    """(g,): the mean over the batch of each gate's entropy ``-sum_e w log w`` (nats; 0 log 0
    is 0) for ``weights`` (b, g, e)."""
    return torch.special.entr(_checked(weights)).sum(dim=-1).mean(dim=0)


def expert_load(weights: Tensor) -> Tensor:
    """(g, e): the mean weight each gate gives each expert over the batch (each row sums
    to one)."""
    return _checked(weights).mean(dim=0)


def top_expert_share(weights: Tensor) -> Tensor:
    """(g, e): the share of the batch's rows in which each expert weighs most for each gate."""
    weights = _checked(weights)
    top = torch.nn.functional.one_hot(weights.argmax(dim=-1), weights.shape[-1])
    return top.to(weights.dtype).mean(dim=0)


def effective_experts(load: Tensor) -> Tensor:
    """(g,): ``exp`` of the entropy of each gate's load (g, e), from 1 (one expert takes it
    all) to the number of experts (an even load)."""
    return torch.special.entr(load).sum(dim=-1).exp()


def gate_rows(rows: int, selected: Sequence[str], tasks: Sequence[str], gate: str = ""
              ) -> list[str]:
    """The names of the ``rows`` of gate tensor ``gate`` in a forward pass for the
    ``selected`` tasks of a model's ``tasks``: for a ``TRANSFER_GATES`` gate one per selected
    task after the model's first (AITM); else one per selected task (MMoE's gates, PLE's
    last level; OMoE's one gate when a forward runs one task's batch), one per task (PLE's
    levels before the last), every task then ``"shared"`` (PLE's shared gate), or
    ``"shared"`` alone (OMoE's one gate in a forward of every task); other counts by
    position, ``"0"``, ``"1"``, ..."""
    after_first = [name for name in selected if name != tasks[0]]
    if gate in TRANSFER_GATES and rows == len(after_first):
        return after_first
    if rows == len(selected):
        return list(selected)
    if rows == len(tasks):
        return list(tasks)
    if rows == len(tasks) + 1:
        return [*tasks, SHARED]
    if rows == 1:
        return [SHARED]
    return [str(row) for row in range(rows)]


def gate_statistics(gate_weights: Mapping[str, Tensor], tasks: Sequence[str],
                    selected: Sequence[str] | None = None) -> dict[str, float]:
    """The statistics of one forward's ``gate_weights`` (``ModelOutput.gate_weights``) as
    columns: ``gate entropy/<gate>/<row>``, ``normalised entropy/<gate>/<row>`` (the
    entropy over ``log a``, ``a`` the experts the row gives any weight: PLE's task gates
    leave other tasks' experts at exactly 0), ``effective experts/<gate>/<row>``,
    ``expert load/<gate>/<row>/<expert>`` and ``top expert/<gate>/<row>/<expert>``, the rows
    named by ``gate_rows`` (``selected``: the tasks the forward ran, default all). A model
    without gates gives {}."""
    sums = GateSums(tasks)
    sums.add(gate_weights, selected)
    return sums.columns()


class GateSums:
    """Sums of gate statistics over the forward passes of one step, per gate and row (a
    step of the per-task regime runs one forward per task's batch, each its tasks' rows)."""

    def __init__(self, tasks: Sequence[str]) -> None:
        self.tasks = list(tasks)
        # (gate, row) -> [rows seen, entropy sum, load sum (e,), top-expert counts (e,)]
        self.sums: dict[tuple[str, str], list] = {}

    def add(self, gate_weights: Mapping[str, Tensor], selected: Sequence[str] | None) -> None:
        """Add one forward's ``gate_weights``, a forward of the ``selected`` tasks (None:
        all)."""
        _checks.mapping("gate_weights", gate_weights, "a dict gate name -> (b, g, e) weights")
        selected = self.tasks if selected is None else list(selected)
        for gate, weights in gate_weights.items():
            weights = _checked(weights, f"gate_weights[{gate!r}]").detach().double()
            count = len(weights)  # the means times the rows: sums over the forwards
            if not count:
                continue
            entropy = gate_entropy(weights).mul(count).cpu()
            load = expert_load(weights).mul(count).cpu()
            top = top_expert_share(weights).mul(count).cpu()
            for index, row in enumerate(gate_rows(weights.shape[1], selected, self.tasks, gate)):
                kept = self.sums.setdefault((gate, row), [0, 0.0, 0.0, 0.0])
                kept[0] += count
                kept[1] += entropy[index]
                kept[2] += load[index]
                kept[3] += top[index]

    def columns(self) -> dict[str, float]:
        """The means over the rows seen, as ``gate_statistics`` names them."""
        columns: dict[str, float] = {}
        for (gate, row), (count, entropy, load, top) in self.sums.items():
            entropy, load, top = entropy / count, load / count, top / count
            reachable = int((load > 0).sum())
            where = f"{gate}/{row}"
            columns[f"gate entropy/{where}"] = float(entropy)
            columns[f"normalised entropy/{where}"] = (
                float(entropy) / math.log(reachable) if reachable > 1 else 0.0)
            columns[f"effective experts/{where}"] = float(effective_experts(load))
            for what, values in (("expert load", load), ("top expert", top)):
                for expert, value in enumerate(values.tolist()):
                    columns[f"{what}/{where}/{expert}"] = value
        return columns


def collapsed_gates(row: Mapping[str, float], max_load: float = COLLAPSE_LOAD) -> list[str]:
    """The ``"<gate>/<row>"`` of the gates whose busiest expert takes at least ``max_load``
    (in (0, 1]) of their load, in a mapping of ``gate_statistics``' columns (a row of
    ``trainer.diagnostics`` too). Gates that give weight to fewer than two experts have no
    choice to collapse and are left out, as are ``TRANSFER_GATES``."""
    if not (_checks.is_real(max_load) and 0 < max_load <= 1):
        raise MtlzooError(f"max_load must be a number in (0, 1], got {max_load!r}")
    loads: dict[str, list[float]] = {}
    for column, value in row.items():
        if isinstance(column, str) and column.startswith("expert load/"):
            where = column[len("expert load/"):].rsplit("/", 1)[0]
            if value == value and where.split("/")[0] not in TRANSFER_GATES:  # NaN: unseen
                loads.setdefault(where, []).append(float(value))
    return [where for where, load in loads.items()
            if sum(share > 0 for share in load) > 1 and max(load) >= max_load]


def warn_collapse(row: Mapping[str, float], max_load: float = COLLAPSE_LOAD,
                  skip: Iterable[str] = (), step: int | None = None) -> list[str]:
    """Warn (``ExpertCollapseWarning``) about each of ``collapsed_gates(row, max_load)`` not
    in ``skip``; returns those warned about."""
    skip = set(skip)
    found = [where for where in collapsed_gates(row, max_load) if where not in skip]
    for where in found:
        load = {column.rsplit("/", 1)[1]: value for column, value in row.items()
                if isinstance(column, str) and column.startswith(f"expert load/{where}/")}
        busiest = max(load, key=load.get)
        at = "" if step is None else f" at step {step}"
        warnings.warn(
            f"gate {where!r} has collapsed{at}: expert {busiest} takes {load[busiest]:.3f} of "
            f"its load (>= max_load={max_load}); effective experts "
            f"{row.get(f'effective experts/{where}', float('nan')):.3g}",
            ExpertCollapseWarning, stacklevel=3,
        )
    return found


def gradient_cosine(losses: Mapping[str, Tensor] | Tensor, parameters: Iterable[Tensor], *,
                    batched: bool = True, retain_graph: bool = False) -> Tensor:
    """(t, t), float64 on the CPU: the cosine of the gradients of the t ``losses`` (a dict
    name -> scalar, or a (t,) tensor) w.r.t. ``parameters`` (``model.shared_parameters()``;
    those without ``requires_grad`` are left out). One backward batched over the tasks
    (``task_gradients``; ``batched=False``: one per task), nothing added to ``.grad``;
    ``retain_graph=True`` keeps the graph for a backward to come. A task whose gradient is
    zero has NaN cosines."""
    values = (torch.stack(list(losses.values())) if isinstance(losses, Mapping) and losses
              else losses)
    if not isinstance(values, Tensor) or values.ndim != 1 or not len(values):
        raise MtlzooError(f"losses must be a dict of scalar losses or a (t,) tensor, t >= 1, "
                          f"got {type(losses).__name__}")
    params = [p for p in parameters if p.requires_grad]
    if not params:
        raise MtlzooError("gradient_cosine needs parameters that require grad; got none")
    grads, _ = task_gradients(values, params, retain_graph=retain_graph, batched=batched)
    return cosine_from_gram(gram_matrix(grads))


def cosine_from_gram(gram: Tensor) -> Tensor:
    """The (t, t) cosines ``G_ij / sqrt(G_ii G_jj)`` of a Gram matrix, in [-1, 1]."""
    norms = gram.diagonal().sqrt()
    return (gram / (norms[:, None] * norms[None, :])).clamp(-1.0, 1.0)


def loss_ratios(losses: Mapping[str, float], first: Mapping[str, float]) -> dict[str, float]:
    """``loss ratio/<task>``: each task's loss over its loss at the first step (NaN where
    that was 0 or is unknown)."""
    return {f"loss ratio/{name}": loss / first[name] if first.get(name) else math.nan
            for name, loss in losses.items()}


class Diagnostics:
    """What ``Trainer(diagnostics_every=every)`` logs: every ``every``-th step,
    ``probe(step)`` hands the train step a ``StepProbe`` that reads the step's gate weights
    and per-task gradients; ``row`` turns it into the step's row (with the loss ratios)
    and warns once per gate when one collapses (``max_load``)."""

    def __init__(self, every: int, tasks: Sequence[str], max_load: float = COLLAPSE_LOAD
                 ) -> None:
        self.every = _checks.positive_int("diagnostics_every", every)
        self.tasks, self.max_load = list(tasks), max_load
        self.current: StepProbe | None = None
        self.warned: set[str] = set()

    def probe(self, step: int) -> StepProbe | None:
        """A fresh probe when step ``step`` (from 1) is to be logged, else None."""
        self.current = StepProbe(self.tasks) if step % self.every == 0 else None
        return self.current

    def row(self, step: int, epoch: int, result: Mapping[str, tuple[float, float]],
            first_losses: Mapping[str, float]) -> dict | None:
        """The row of step ``step`` (in epoch ``epoch``, from 1) when it was probed, else
        None; ``result``: the step's ``{task: (loss, weight)}``, ``first_losses``: each
        task's loss at its first step."""
        probe, self.current = self.current, None
        if probe is None:
            return None
        losses = {name: loss for name, (loss, _) in result.items()}
        row = {"step": step, "epoch": epoch, **probe.columns(),
               **loss_ratios(losses, first_losses)}
        self.warned.update(warn_collapse(row, self.max_load, self.warned, step))
        return row


class StepProbe:
    """One logged step's gate statistics (``gates``, once per forward) and gradient
    cosines (``gradients``, once, before the step's backward)."""

    def __init__(self, tasks: Sequence[str]) -> None:
        self.tasks = list(tasks)
        self.gate_sums = GateSums(tasks)
        self.cosines: dict[str, float] = {}

    def gates(self, gate_weights: Mapping[str, Tensor], selected: Sequence[str] | None
              ) -> None:
        self.gate_sums.add(gate_weights, selected)

    def gradients(self, losses: Mapping[str, Tensor], shared: Sequence[Tensor],
                  batched: bool) -> None:
        """``grad cosine/<a>~<b>`` for each pair of the step's tasks, in the model's task
        order; the graph is kept for the step's backward, ``.grad`` left alone."""
        names = [name for name in self.tasks if name in losses]
        if len(names) < 2 or not any(p.requires_grad for p in shared):
            return
        cosine = gradient_cosine({name: losses[name] for name in names}, shared,
                                 batched=batched, retain_graph=True).tolist()
        self.cosines = {f"grad cosine/{a}~{b}": cosine[i][j]
                        for i, a in enumerate(names) for j, b in enumerate(names) if i < j}

    def columns(self) -> dict[str, float]:
        return {**self.gate_sums.columns(), **self.cosines}


def _checked(weights: object, what: str = "weights") -> Tensor:
    if not isinstance(weights, Tensor) or weights.ndim != 3 or not weights.is_floating_point():
        found = (f"{weights.dtype} {tuple(weights.shape)}" if isinstance(weights, Tensor)
                 else type(weights).__name__)
        raise MtlzooError(f"{what} must be a floating-point (b, g, e) tensor, got {found}")
    return weights
