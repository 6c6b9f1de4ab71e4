"""pytest-benchmark suite: each (model, E, T) train step, ours beside its loop version.

    .venv/bin/python -m pytest benchmarks --benchmark-only --benchmark-group-by=group

Timings only; the targets (ratios) are checked by ``benchmarks/speed.py``, never by a test.
"""

from __future__ import annotations

import pytest
import torch

from mtlzoo.bench import speed
from mtlzoo.reference import loop_version

GRID = speed.expert_grid()


@pytest.mark.parametrize("implementation", ["ours", "loop"])
@pytest.mark.parametrize(
    ("description", "model"), GRID, ids=[f"{d['model']}-E{d['E']}-T{d['T']}" for d, _ in GRID]
)
def test_train_step(benchmark, description, model, implementation):
    benchmark.group = f"{description['model']} E={description['E']} T={description['T']}"
    if implementation == "loop":
        model = loop_version(model)
    x = torch.randn(1024, model.in_features)
    benchmark.extra_info["gflop_per_step"] = speed.step_flops(model, x) / 1e9
    benchmark.pedantic(speed.TrainStep(model, x), rounds=10, warmup_rounds=2)


def test_matmul_2048(benchmark):
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    benchmark.group = "reference matmul"
    benchmark(torch.mm, a, b)
