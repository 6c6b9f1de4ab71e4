"""Memory per rank of DDP and FSDP2 for an MMoE whose experts dominate its parameters.

    python benchmarks/distributed_memory.py     # writes results/distributed_memory.*
    python benchmarks/distributed_memory.py --out benchmarks/results   # the committed one

For each strategy it launches ``torchrun --standalone --nproc-per-node N`` on this script
(one process for ``none``); every rank trains a few Adam steps of the MMoE (``--experts``
experts of ``--width`` -> ``--width``, ``--width`` input features, two binary tasks, batch
``--batch`` a rank) and reports the bytes of what it holds of the parameters, gradients and
optimizer state (its local shards under FSDP2: exact counts, not RSS) and its peak RSS
(``ru_maxrss``, the process's whole memory, torch's own included, so only indicative).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch
from torch.distributed.tensor import DTensor

import mtlzoo
from mtlzoo.bench.report import RESULTS, markdown_report, script_command, stamp, write_result

MB = 2**20


def local_bytes(tensors) -> int:
    """The bytes this rank holds of ``tensors`` (a ``DTensor``'s local shard alone)."""
    total = 0
    for tensor in tensors:
        if tensor is None:
            continue
        local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
        total += local.numel() * local.element_size()
    return total


def rank_memory(args) -> dict:
    """Train a few steps on this rank; its bytes and peak RSS."""
    torch.set_num_threads(1)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    torch.manual_seed(0)
    tasks = [mtlzoo.Task("a"), mtlzoo.Task("b")]
    model = mtlzoo.create_model("mmoe", in_features=args.width, tasks=tasks,
                                num_experts=args.experts, expert_dims=(args.width,),
                                tower_dims=(64,))
    trainer = mtlzoo.Trainer(model, strategy=args.strategy, batch_size=args.batch,
                             progress=False)
    world = 1 if trainer.ranks is None else trainer.ranks.size
    rows = world * args.batch * args.steps
    g = torch.Generator().manual_seed(1)
    x = torch.randn(rows, args.width, generator=g)
    data = {"x": x, "a": (x[:, 0] > 0).long(), "b": (x[:, 1] > 0).long()}
    trainer.fit(data, steps=args.steps)
    params = [*model.parameters(), *trainer.weighting.parameters()]
    state = [value for entries in trainer.optimizer.state.values()
             for value in entries.values() if isinstance(value, torch.Tensor)]
    experts = model.experts.layers[0].weight
    return {
        "strategy": args.strategy, "rank": 0 if trainer.ranks is None else trainer.ranks.rank,
        "world": world,
        "expert weight (global)": "x".join(map(str, experts.shape)),
        "expert weight (this rank)": "x".join(map(str, (
            experts.to_local() if isinstance(experts, DTensor) else experts).shape)),
        "parameters MiB": local_bytes(params) / MB,
        "gradients MiB": local_bytes(p.grad for p in params) / MB,
        "optimizer state MiB": local_bytes(state) / MB,
        "baseline RSS MiB": baseline / MB,
        "peak RSS MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB,
    }


def launch(args, strategy: str, folder: Path) -> list[dict]:
    """Run this script's rank part under torchrun (``none``: one plain process)."""
    own = [__file__, "--rank-part", "--strategy", strategy, "--experts", str(args.experts),
           "--width", str(args.width), "--batch", str(args.batch), "--steps", str(args.steps),
           "--folder", str(folder)]
    launcher = ([] if strategy == "none" else
                ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                 str(args.ranks)])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, *launcher, *own], check=True, env=env)
    found = [json.loads(path.read_text()) for path in sorted(folder.glob(f"{strategy}-*.json"))]
    return sorted(found, key=lambda row: row["rank"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256, help="rows a rank, a step")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="where results go (default ./results)")
    parser.add_argument("--rank-part", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", default="none", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank_part:
        row = rank_memory(args)
        (args.folder / f"{args.strategy}-{row['rank']}.json").write_text(json.dumps(row))
        return 0
    with tempfile.TemporaryDirectory() as folder:
        rows = [row for strategy in ("none", "ddp", "fsdp")
                for row in launch(args, strategy, Path(folder))]
    table = pd.DataFrame(rows)
    held = ["parameters MiB", "gradients MiB", "optimizer state MiB"]
    table.insert(table.columns.get_loc("baseline RSS MiB"), "held MiB", table[held].sum(axis=1))
    about = [
        f"MMoE, {args.experts} experts of {args.width} -> {args.width}, {args.width} input "
        f"features, two binary tasks, towers of 64, float32, Adam; {args.steps} steps of "
        f"{args.batch} rows a rank, one thread a process (the stamp's thread count is the "
        "launcher's); `none` is one process. Parameters, gradients and "
        "optimizer state count the bytes this rank holds (its local shards under FSDP2); "
        "`held` is their sum. Peak RSS is the process's high-water mark (torch's libraries, "
        "the forward's activations and the collectives' buffers included; FSDP2 also "
        "gathers one unit's whole weights during its forward and backward); the baseline "
        "is the RSS before the model is built.",
    ]
    markdown = markdown_report("Memory per rank: DDP against FSDP2",
                               stamp(script_command(argv)), about, table, digits=1)
    report = write_result(args.out / "distributed_memory", table.round(2), markdown)
    print(report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
