"""Training on several processes with PyTorch's own engine: ``torch.distributed``,
``DistributedDataParallel`` (DDP) and FSDP2 (``fully_shard``).

* ``init()`` starts the process group torchrun's environment describes;
* ``resolve(strategy)`` gives the ``Ranks`` a trainer runs on (None: one process);
* ``shard(model, weighting, ranks)`` shards a model with FSDP2 (``strategy="fsdp"``);
  ``full_state``, ``shard_like`` and ``shard_optimizer_state`` move state dicts between
  its sharded parameters and the whole tensors a checkpoint holds;
* ``DistributedStep`` is the train step on N ranks that takes exactly the step one process
  takes on the N ranks' rows together (docs/distributed.md says how).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from torch.nn.parallel import DistributedDataParallel

from mtlzoo.data.batches import Batch
from mtlzoo.data.schedule import JOINT
from mtlzoo.encoders.sharding import table_state_names
from mtlzoo.errors import MtlzooError
from mtlzoo.layers import StackedMLP
from mtlzoo.losses import task_loss_sums
from mtlzoo.train.step import TrainStep
from mtlzoo.weighting import LossWeighting, Weighting
from mtlzoo.weighting.base import GradientWeighting


def init() -> bool:
    """Start the default process group from torchrun's environment (``WORLD_SIZE`` > 1,
    ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) unless one exists: ``nccl``
    with this rank on ``cuda:LOCAL_RANK`` where CUDA is available, else ``gloo``. Returns
    whether a process group exists now."""
    if not dist.is_available():
        return False
    if dist.is_initialized():
        return True
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise MtlzooError(
            f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} and LOCAL_RANK="
            f"{os.environ.get('LOCAL_RANK')!r} must be whole numbers (torchrun sets them)"
        ) from None
    if world <= 1:
        return False
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return True


def resolve(strategy: str) -> Ranks | None:
    """The ranks a trainer with ``strategy`` (checked by ``Options``) runs on; None for one
    process. ``"auto"``:
    DDP where a process group of more than one rank exists (or torchrun's environment
    describes one, which ``init`` then starts), else one process; ``"ddp"``: DDP and
    ``"fsdp"``: FSDP2, which need a process group; ``"none"``: one process, even inside a
    group."""
    if strategy == "none":
        return None
    if not init():
        if strategy in ("ddp", "fsdp"):
            raise MtlzooError(
                f"strategy={strategy!r} needs a process group: launch with torchrun "
                "(torchrun --nproc-per-node N script.py) or call "
                "torch.distributed.init_process_group first"
            )
        return None
    if strategy == "auto" and dist.get_world_size() == 1:
        return None
    return Ranks(sharded=strategy == "fsdp")


class Ranks:
    """The ranks of the default process group, as a trainer sees them: ``rank``, ``size``,
    the ``device`` collectives run on (CUDA under ``nccl``), whether the model is
    ``sharded`` (FSDP2) or replicated (DDP), and sums, gathers and broadcasts over them."""

    def __init__(self, sharded: bool = False) -> None:
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self.sharded = sharded
        self.device = (torch.device("cuda", torch.cuda.current_device())
                       if dist.get_backend() == "nccl" else torch.device("cpu"))

    def sum(self, tensor: Tensor) -> Tensor:
        """``tensor`` summed over the ranks, in place; returned."""
        dist.all_reduce(tensor)
        return tensor

    def sum_grads(self, params: Iterable[nn.Parameter]) -> None:
        """Every parameter's ``.grad`` summed over the ranks (one collective a dtype)."""
        by_dtype: dict[torch.dtype, list[Tensor]] = {}
        for param in params:
            if param.grad is not None:
                by_dtype.setdefault(param.grad.dtype, []).append(param.grad)
        for grads in by_dtype.values():
            flat = self.sum(torch.cat([grad.reshape(-1) for grad in grads]))
            for grad, piece in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
                grad.copy_(piece.view_as(grad))

    def gather(self, value: object) -> list:
        """Every rank's ``value`` (picklable), in rank order, on every rank."""
        values: list = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def broadcast(self, value: object) -> object:
        """Rank 0's ``value`` on every rank."""
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def shard(model: nn.Module, weighting: Weighting, ranks: Ranks) -> None:
    """Shard ``model`` in place with FSDP2 over the ranks (a 1-D device mesh), rank 0's
    weights on every rank. Each stacked MLP (experts, towers: weights (G, d, h), G the
    expert or task axis) and the encoder is a unit, the model the root that holds the rest
    (gates, output layers). Every parameter is split on its first axis, the expert or task
    axis of a stacked weight, as FSDP2 does; one whose first axis is shorter than the number
    of ranks (shared-bottom's one group) on its longest. Gradients are summed over the
    ranks, not averaged: the losses are normalised by global counts. A gradient method is
    refused (``MtlzooError``) before the model changes."""
    if not isinstance(weighting, LossWeighting):
        raise MtlzooError(
            f"weighting {type(weighting).__name__} under strategy='fsdp': a gradient method "
            "combines the per-task gradients of the shared parameters, and FSDP2 reduces "
            "one gradient a backward pass into shards; the trainer does not take a sharded "
            "backward pass per task (nor sum their Gram matrix over the ranks), so it "
            "refuses rather than combine partial gradients. Train it with strategy='ddp', "
            "which makes it exact, or use a loss weighting (equal, uncertainty, dwa, rlw, "
            "fixed weights)"
        )
    from_rank_0(model)
    mesh = init_device_mesh(ranks.device.type, (ranks.size,))
    units = [module for module in model.modules() if isinstance(module, StackedMLP)]
    encoder = getattr(model, "encoder", None)
    if encoder is not None and any(True for _ in encoder.parameters()):
        units.append(encoder)
    def placement(param: nn.Parameter) -> Shard | None:
        if param.dim() == 0 or param.shape[0] >= ranks.size:
            return None  # FSDP2's default, Shard(0)
        return Shard(max(range(param.dim()), key=param.shape.__getitem__))

    for module in [*units, model]:
        fully_shard(module, mesh=mesh, shard_placement_fn=placement)
        module.set_gradient_divide_factor(1.0)
        module.set_force_sum_reduction_for_comms(True)  # gloo has no PREMUL_SUM


def from_rank_0(model: nn.Module) -> None:
    """Every rank's parameters and buffers set to rank 0's, in place (a collective)."""
    for tensor in [*model.parameters(), *model.buffers()]:
        dist.broadcast(tensor.data, src=0)


def full_state(state):
    """``state`` (a state dict, nested dicts and lists) with every ``DTensor`` gathered
    whole onto the CPU; a collective that every rank calls. Plain tensors are kept."""
    if isinstance(state, DTensor):
        return state.full_tensor().cpu()
    if isinstance(state, dict):
        return {key: full_state(value) for key, value in state.items()}
    if type(state) in (list, tuple):
        return type(state)(full_state(value) for value in state)
    return state


def shard_like(state: dict, template: dict) -> dict:
    """A model's whole ``state`` with each entry sharded as its ``template`` entry (this
    model's ``state_dict()``) is: every rank keeps its own shard, no communication."""
    return {key: _shard_as(value, template.get(key)) for key, value in state.items()}


def shard_optimizer_state(state: dict, optimizer: torch.optim.Optimizer) -> dict:
    """An optimizer's whole ``state`` with the entries of each sharded parameter's shape
    (Adam's moments) sharded as that parameter."""
    params = [param for group in optimizer.param_groups for param in group["params"]]
    per_param = {
        index: {key: _shard_as(value, params[index])
                if isinstance(value, Tensor) and value.shape == params[index].shape else value
                for key, value in entries.items()}
        for index, entries in state["state"].items()
    }
    return {**state, "state": per_param}


def _shard_as(value, template):
    """``value`` as a ``DTensor`` placed as ``template``, where that is one."""
    if isinstance(template, DTensor) and not isinstance(value, DTensor):
        return distribute_tensor(value.to(template.device), template.device_mesh,
                                 template.placements, src_data_rank=None)
    return value


class StepForward(nn.Module):
    """The forward passes of one step as one call: a per-task step runs the model once per
    task's batch, and DDP expects one forward before each backward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: list[tuple[str | None, object]]) -> list:
        with warnings.catch_warnings():
            # FSDP2 warns that the root's outputs are views (each task's slice of the heads'
            # output), lest in-place ops on them skip its hooks; the trainer makes none
            warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* view tensor")
            return [self.model(x, tasks=None if name is JOINT else [name])
                    for name, x in inputs]


def _no_rows(inputs):
    """A model input (a tensor, or a dict of them) cut to no rows."""
    if isinstance(inputs, Tensor):
        return inputs[:0]
    return {key: value[:0] for key, value in inputs.items()}


def _sum_hook(state, bucket):  # unannotated: DDP compares the annotations with its own
    """DDP's all-reduce of a ``dist.GradBucket`` without the division by the number of
    ranks: the losses are normalised by global counts, so the ranks' gradients add up to
    the step's."""
    future = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
    return future.then(lambda done: done.value()[0])


class DistributedStep(TrainStep):
    """A train step on ``ranks``, equal to one process's step on the rows of every rank.

    Each task's loss on every rank carries the global value, ``sum w m l / sum w m`` over
    every rank's rows (one all-reduce of the sums), and the gradient of this rank's rows
    alone (divided by the global denominator). A loss weighting then back-propagates
    through DDP, whose all-reduce sums the ranks' gradients; the weighting's own parameters
    see global values and get the same gradient on every rank. A gradient method sums the
    per-task gradients over the ranks before it combines them (``Weighting.rank_sum``) and
    the model's gradients are summed after. The model's initial state and the weighting's
    are rank 0's. Under FSDP2 (``ranks.sharded``, the model sharded by ``shard``) a loss
    weighting's backward runs through FSDP2, whose reduce-scatter sums the gradients."""

    def __init__(self, model, weighting, optimizer, reader, grad_clip, ranks: Ranks) -> None:
        super().__init__(model, weighting, optimizer, reader, grad_clip)
        if not isinstance(weighting, (LossWeighting, GradientWeighting)):
            raise MtlzooError(
                f"weighting {type(weighting).__name__} is neither a LossWeighting nor a "
                "GradientWeighting: under DDP the trainer cannot tell how to make its step "
                "that of one process; subclass one of them"
            )
        self.ranks = ranks
        self.gradient_method = isinstance(weighting, GradientWeighting)
        if self.gradient_method:
            weighting.rank_sum, weighting.world_size = ranks.sum, ranks.size
        weighting.load_state_dict(ranks.broadcast(weighting.state_dict()))
        if ranks.sharded:
            self.module = StepForward(model)
            return
        device = next(model.parameters()).device
        forward = StepForward(model)
        # TorchRec's sharded tables (the trainer's shard_tables): trained by their fused
        # optimizer in the backward pass, each rank's shards its own; DDP leaves them alone
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            forward, table_state_names(forward))
        # every parameter takes part in every step (see _losses): no search for unused ones
        self.module = DistributedDataParallel(
            forward, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=False, forward_sync_buffers=False,
        )
        self.module.register_comm_hook(None, _sum_hook)

    def _losses(self, step_batches: dict[str | None, Batch]
                ) -> tuple[dict[str, Tensor], Tensor]:
        inputs = [(name, self.reader.inputs(batch)) for name, batch in step_batches.items()]
        # a per-task step runs the tasks it has no batch of on no rows, so that every head
        # takes part (DDP waits for a gradient of every parameter)
        idle = ([] if JOINT in step_batches or self.gradient_method else
                [name for name in self.tasks if name not in step_batches])
        empty = _no_rows(inputs[0][1]) if idle else None
        if self.gradient_method:  # per-task gradients are summed by hand, not by DDP
            with self.module.no_sync() if isinstance(self.module, DistributedDataParallel) \
                    else nullcontext():
                outputs = self.module(inputs)
        else:
            outputs = self.module(inputs + [(name, empty) for name in idle])
        outputs, idle_outputs = outputs[:len(inputs)], outputs[len(inputs):]
        sums: dict[str, tuple[Tensor, Tensor]] = {}
        aux = None
        for (task_name, batch), out in zip(step_batches.items(), outputs, strict=True):
            aux = out.aux_loss if aux is None else aux + out.aux_loss
            weights = self.reader.row_weights(batch)
            for name, logits in out.logits.items():
                labels, mask = self.reader.labels(batch, name, per_task=task_name is not JOINT)
                sums[name] = task_loss_sums(self.tasks[name], logits, labels, mask, weights,
                                            weight_key=self.reader.weight_key)
        local = list(sums.values())
        totals = self.ranks.sum(torch.stack([s.detach() for s, _ in local]
                                            + [count for _, count in local]))
        numerators, denominators = totals[: len(local)], totals[len(local):]
        losses = {}
        for (name, (local_sum, _)), numerator, denominator, present in zip(
            sums.items(), numerators, denominators, (denominators > 0).tolist(), strict=True
        ):
            if present:  # the global value, the gradient of this rank's rows
                mine = local_sum / denominator
                losses[name] = numerator / denominator + (mine - mine.detach())
        if not self.gradient_method:
            # DDP waits for a gradient of every parameter: a task with no labelled row on
            # any rank, or no batch (run on no rows), joins the first loss, times zero
            absent = [local_sum for name, (local_sum, _) in sums.items() if name not in losses]
            absent += [logits.sum() for out in idle_outputs for logits in out.logits.values()]
            if absent and losses:
                first = next(iter(losses))
                losses[first] = losses[first] + sum(absent).mul(0)
            elif absent:
                sum(absent).mul(0).backward()  # no labelled row at all: a step of zeros
        return losses, aux

    def _backward(self, losses: dict[str, Tensor], aux: Tensor,
                  representation: Tensor | None) -> Tensor:
        # the aux_loss of the ranks' mean: each rank back-propagates its own over the ranks
        # (the ranks' gradients are summed); through the same backward as the losses, which
        # DDP and FSDP2 expect once a forward
        extra = aux / self.ranks.size if aux.requires_grad else None
        if extra is not None and self.gradient_method:  # no_sync: summed with the rest below
            extra.backward(retain_graph=True)
            extra = None
        with warnings.catch_warnings():
            # a stack of one (one gate's weights, (1, d, e)) has a size-1 axis whose stride
            # autograd's gradient and DDP's bucket choose differently: a copy, no error
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
            if extra is None:
                weights = self.weighting.backward(losses, *self.parameters(), representation)
            else:
                weights = self.weighting.backward(losses, *self.parameters(), representation,
                                                  extra=extra)
        if self.gradient_method:
            self.ranks.sum_grads(self.model.parameters())
        return weights
