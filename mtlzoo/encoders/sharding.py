"""Embedding tables sharded over ranks with TorchRec (the ``mtlzoo[torchrec]`` extra).

``shard_tables(model, lr=...)`` shards the tables of every ``SparseEncoder(backend=
"torchrec")`` in ``model`` with ``torchrec.distributed.DistributedModelParallel``: TorchRec's
planner places each table whole on one rank (table-wise), splits its columns (column-wise)
or, on CUDA, its rows (row-wise) over the ranks, and each rank's ids reach the tables' ranks
by all-to-all. Everything else (the dense layer, experts, gates, towers) is left as it was,
for the caller's data parallelism (DDP) to replicate; ``table_parameter_names`` lists what
that DDP must ignore.

Sharded tables train with TorchRec's fused kernels: the backward pass applies the optimizer
to the rows a batch touched (fbgemm's CPU or CUDA kernels), so their parameters get no
``.grad`` and the caller's optimizer leaves them alone. A table's gradient is the sum of
every rank's rows' gradients (``shard_tables`` turns TorchRec's division by the world size
off, for the whole process), which is the one-process gradient when each rank's loss is
normalised by the global count (as ``mtlzoo.train.distributed.DistributedStep`` does), and
what the caller's DDP must do for the rest (sum, not average).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mtlzoo import _checks
from mtlzoo.encoders.sparse import TORCHREC_INSTALL, SparseEncoder
from mtlzoo.errors import MtlzooError

SHARDING_TYPES = ("table_wise", "column_wise", "row_wise")
CPU_SHARDING_TYPES = ("table_wise", "column_wise")  # TorchRec 1.8 shards row-wise on CUDA only
OPTIMIZERS = ("sgd", "adagrad", "adam")


def shard_tables(
    model: nn.Module,
    *,
    lr: float = 1e-2,
    optimizer: str = "adagrad",
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    sharding_types: Sequence[str] | None = None,
    constraints: Mapping[str, object] | None = None,
    process_group: dist.ProcessGroup | None = None,
) -> nn.Module:
    """Shard, in place, the TorchRec tables of ``model`` over ``process_group`` (the default
    group when None; every rank calls this) and return the ``DistributedModelParallel``
    that holds it (its ``.module`` is ``model``; call ``model`` itself as before).

    Every rank ends with rank 0's tables. ``sharding_types``: the placements the planner may
    choose from (None: all the device allows: ``"table_wise"`` and ``"column_wise"`` on CPU,
    ``"row_wise"`` too on CUDA); ``constraints``: more ``torchrec.distributed.planner.
    ParameterConstraints`` fields for every table (``{"min_partition": 4}`` lets column-wise
    shards be 4 columns wide). ``optimizer`` and ``lr``: the fused update the tables get in
    the backward pass: ``"sgd"``, ``"adagrad"`` (element-wise, ``eps``; both equal to
    ``torch.optim.SGD`` / ``Adagrad`` step for step, rows without a gradient being left
    alone by either) or, on CUDA only (fbgemm's CPU kernels have no Adam), ``"adam"``
    (``betas``, ``eps``; its moments move only on the rows a batch touches: "lazy" Adam).
    The model's other parameters and buffers are untouched: see ``table_state_names``.
    """
    try:
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from torchrec.distributed.comm_ops import set_gradient_division
        from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
        from torchrec.distributed.model_parallel import DistributedModelParallel
        from torchrec.distributed.planner import (
            EmbeddingShardingPlanner,
            ParameterConstraints,
            Topology,
        )
        from torchrec.distributed.types import ShardingEnv
    except ImportError as error:
        raise MtlzooError(f"shard_tables needs TorchRec: {TORCHREC_INSTALL} ({error})") from None
    encoders = _torchrec_encoders(model)
    lr = _checks.real("lr", lr, positive=True)
    eps = _checks.real("eps", eps, positive=True)
    _checks.choice("optimizer", optimizer, list(OPTIMIZERS))
    device = next(iter(encoders[0].collection.parameters())).device
    allowed = SHARDING_TYPES if device.type == "cuda" else CPU_SHARDING_TYPES
    kinds = list(allowed if sharding_types is None else sharding_types)
    if not kinds:
        raise MtlzooError(f"sharding_types must name at least one of {allowed}")
    for kind in kinds:
        if kind not in allowed:
            raise MtlzooError(f"sharding type {kind!r} on {device.type}: TorchRec shards "
                              f"tables there {' or '.join(allowed)}")
    if optimizer == "adam" and device.type != "cuda":
        raise MtlzooError(f"optimizer='adam' for tables on {device.type}: fbgemm's CPU kernels "
                          "have no Adam; use 'adagrad' or 'sgd' (or train on CUDA)")
    if not dist.is_available() or not dist.is_initialized():
        raise MtlzooError("shard_tables needs a process group: launch with torchrun or call "
                          "torch.distributed.init_process_group first")
    group = process_group or dist.group.WORLD
    # the ranks' gradients are summed, not averaged: each rank's loss is already divided by
    # the global count (TorchRec divides by the world size by default, as DDP averages);
    # a setting of the whole process
    set_gradient_division(False)
    for encoder in encoders:  # rank 0's tables everywhere, before they are split
        for name in encoder.names:
            dist.broadcast(encoder.table(name).data, src=0, group=group)
    whole = {id(encoder): {name: encoder.table(name).detach().clone()
                           for name in encoder.names} for encoder in encoders}
    fused = {"optimizer": {"sgd": EmbOptimType.EXACT_SGD, "adagrad": EmbOptimType.EXACT_ADAGRAD,
                           "adam": EmbOptimType.ADAM}[optimizer], "learning_rate": lr}
    if optimizer != "sgd":
        fused.update(eps=eps, weight_decay=0.0)
    if optimizer == "adam":
        fused.update(beta1=betas[0], beta2=betas[1])
    sharders = [EmbeddingBagCollectionSharder(fused_params=fused)]
    options = dict(_checks.mapping("constraints", constraints or {},
                                   "a dict of ParameterConstraints fields"))
    constraints = {name: ParameterConstraints(sharding_types=kinds, **options)
                   for encoder in encoders for name in encoder.names}
    world = dist.get_world_size(group)
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=world, local_world_size=world,
                          compute_device=device.type),
        constraints=constraints)
    plan = planner.collective_plan(model, sharders, group)
    parallel = DistributedModelParallel(
        model, env=ShardingEnv.from_process_group(group), device=device, plan=plan,
        sharders=sharders, init_data_parallel=False, init_parameters=False)
    for encoder in encoders:
        load_tables(encoder, whole[id(encoder)])
    return parallel


def table_parameter_names(module: nn.Module) -> list[str]:
    """The names, in ``module.named_parameters()``, of the TorchRec tables' parameters
    (sharded or not): what a ``DistributedDataParallel`` over ``module`` must ignore
    (``DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, names)``)
    and the caller's optimizer need not hold."""
    tables = {id(p) for encoder in _torchrec_encoders(module, required=False)
              for p in encoder.collection.parameters()}
    return [name for name, p in module.named_parameters() if id(p) in tables]


def table_state_names(module: nn.Module) -> list[str]:
    """The names of the TorchRec tables' parameters and buffers in ``module`` (a sharded
    collection holds buffers of its own, each rank's of its own shape): what a broadcast of
    rank 0's state must skip and a ``DistributedDataParallel`` over ``module`` must ignore."""
    prefixes = [f"{name}." for name, sub in module.named_modules()
                if any(sub is encoder.collection
                       for encoder in _torchrec_encoders(module, required=False))]
    names = [name for name, _ in [*module.named_parameters(), *module.named_buffers()]]
    return [name for name in names if name.startswith(tuple(prefixes))] if prefixes else []


def gather_tables(encoder: SparseEncoder) -> dict[str, Tensor]:
    """Every table of ``encoder`` whole, feature -> (k_f, e), on every rank (a collective
    when the tables are sharded; a copy of them otherwise)."""
    state = {name: value for name, value in encoder.collection.state_dict().items()
             if name.endswith(".weight")}
    pieces = {}
    for key, value in state.items():
        name = key.split(".")[-2]
        if hasattr(value, "local_shards"):  # a ShardedTensor: this rank's shards
            pieces[name] = [(tuple(shard.metadata.shard_offsets), shard.tensor.detach().cpu())
                            for shard in value.local_shards()]
        else:
            pieces[name] = [((0, 0), value.detach().cpu())]
    if not any(hasattr(value, "local_shards") for value in state.values()):
        return {name: parts[0][1].clone() for name, parts in pieces.items()}
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, pieces)
    tables = {}
    for index, name in enumerate(encoder.names):
        table = torch.zeros(encoder.num_ids[index], encoder.embedding_dim)
        for rank_pieces in everyone:
            for (row, column), tensor in rank_pieces.get(name, []):
                table[row: row + tensor.shape[0], column: column + tensor.shape[1]] = tensor
        tables[name] = table
    return tables


def load_tables(encoder: SparseEncoder, tables: dict[str, Tensor]) -> None:
    """Write whole ``tables`` (feature -> (k_f, e), as ``gather_tables`` returns) into this
    rank's shards of ``encoder``'s tables, or into the tables when they are not sharded."""
    state = encoder.collection.state_dict()
    with torch.no_grad():
        for key, value in state.items():
            if not key.endswith(".weight"):
                continue
            table = tables[key.split(".")[-2]]
            if hasattr(value, "local_shards"):
                for shard in value.local_shards():
                    row, column = shard.metadata.shard_offsets
                    rows, columns = shard.tensor.shape
                    shard.tensor.copy_(table[row: row + rows, column: column + columns])
            else:
                value.copy_(table)


def _torchrec_encoders(model: nn.Module, required: bool = True) -> list[SparseEncoder]:
    found = [module for module in model.modules()
             if isinstance(module, SparseEncoder) and module.backend == "torchrec"]
    if required and not found:
        raise MtlzooError("shard_tables found no SparseEncoder(backend='torchrec') in the "
                          "model: there is no table to shard")
    return found


# --- what a trainer's checkpoint and lr schedule need of sharded tables -----------------


def whole_tables_state(model: nn.Module, state: dict) -> dict:
    """``state`` (``model.state_dict()``, its other entries as they are) with the entry of
    every TorchRec table replaced by the whole table (``gather_tables``: a collective when
    the tables are sharded), under the key an unsharded model has: a state dict that
    ``load_state_dict`` of the same model in one process takes."""
    state = dict(state)
    for prefix, encoder in _named_torchrec_encoders(model):
        for name, table in gather_tables(encoder).items():
            state[f"{prefix}collection.embedding_bags.{name}.weight"] = table
    return state


def load_whole_tables_state(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Load a state dict ``whole_tables_state`` made (whole tables) into ``model``, whose
    tables may be sharded: each rank writes its shards (``load_tables``), the rest by
    ``load_state_dict``. Every key of ``model.state_dict()`` must be in ``state``."""
    tables = set(table_state_names(model))
    rest = {key: value for key, value in state.items() if key not in tables}
    missing, unexpected = model.load_state_dict(rest, strict=False)
    missing = [key for key in missing if key not in tables]
    if missing or unexpected:
        raise MtlzooError(f"the state lacks {missing} and has {unexpected} besides")
    for prefix, encoder in _named_torchrec_encoders(model):
        load_tables(encoder, {name: state[f"{prefix}collection.embedding_bags.{name}.weight"]
                              for name in encoder.names})


def gather_table_optimizer(parallel: nn.Module) -> dict[str, dict[str, Tensor]]:
    """The state of the fused table optimizer of ``parallel`` (what ``shard_tables``
    returned) whole, on every rank (a collective): table parameter name -> state name
    (``"momentum1"`` of Adagrad, Adam's moments; none for SGD) -> a whole tensor."""
    pieces: dict = {}
    for key, entries in parallel.fused_optimizer.state_dict()["state"].items():
        for state_name, value in entries.items():
            state_name = state_name.rsplit(".", 1)[-1]  # "user.momentum1" -> "momentum1"
            if hasattr(value, "local_shards"):
                pieces.setdefault(key, {})[state_name] = (
                    tuple(value.size()),
                    [(tuple(shard.metadata.shard_offsets), shard.tensor.detach().cpu())
                     for shard in value.local_shards()])
            elif isinstance(value, Tensor):
                pieces.setdefault(key, {})[state_name] = (
                    tuple(value.shape), [((0,) * value.dim(), value.detach().cpu())])
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, pieces)
    whole: dict[str, dict[str, Tensor]] = {}
    for rank_pieces in everyone:
        for key, entries in rank_pieces.items():
            for state_name, (size, shards) in entries.items():
                tensor = whole.setdefault(key, {}).setdefault(
                    state_name, torch.zeros(size, dtype=shards[0][1].dtype if shards
                                            else torch.float32))
                for offsets, piece in shards:
                    tensor[tuple(slice(o, o + n) for o, n in zip(offsets, piece.shape,
                                                                  strict=True))] = piece
    return whole


def load_table_optimizer(parallel: nn.Module, whole: Mapping[str, Mapping[str, Tensor]]
                         ) -> None:
    """Write a fused optimizer state ``gather_table_optimizer`` returned into this rank's
    shards of it (in place; no communication)."""
    with torch.no_grad():
        for key, entries in parallel.fused_optimizer.state_dict()["state"].items():
            for state_name, value in entries.items():
                source = whole[key][state_name.rsplit(".", 1)[-1]]
                if hasattr(value, "local_shards"):
                    for shard in value.local_shards():
                        offsets = shard.metadata.shard_offsets
                        shard.tensor.copy_(source[tuple(
                            slice(o, o + n) for o, n in zip(offsets, shard.tensor.shape,
                                                            strict=True))])
                elif isinstance(value, Tensor):
                    value.copy_(source)


def set_table_lr(parallel: nn.Module, lr: float) -> None:
    """The learning rate of the fused table optimizer of ``parallel`` (applied by the next
    backward pass)."""
    optimizer = parallel.fused_optimizer
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()  # TorchRec's fused optimizers pass their lr to the kernels here


def _named_torchrec_encoders(model: nn.Module) -> list[tuple[str, SparseEncoder]]:
    """Each ``SparseEncoder(backend="torchrec")`` of ``model`` with its state-dict prefix."""
    return [(f"{name}." if name else "", module) for name, module in model.named_modules()
            if isinstance(module, SparseEncoder) and module.backend == "torchrec"]
