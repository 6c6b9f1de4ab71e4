"""The efficiency benchmark (issue 15) at a tiny size: its tables and what it checks."""

from __future__ import annotations

import pandas as pd

from mtlzoo.bench import efficiency

TINY = efficiency.Size(batch_size=16, in_features=12, expert_width=8, num_experts=4,
                       num_tasks=2, tower_width=4)


def test_benchmark_writes_the_table_and_the_breakdown(tmp_path):
    result = efficiency.benchmark(tmp_path, processes=1, repeats=1, warmup=1, threads=1,
                                  size=TINY, top=3)
    table = pd.read_csv(tmp_path / "efficiency.csv")
    assert list(table.columns) == efficiency.COLUMNS
    assert list(table.model) == ["mmoe", "ple"] * 2
    assert list(table.memory) == ["default", "default", "kept", "kept"]
    assert (table.B == 16).all() and (table.E == 4).all()
    ratio = table.step_gflops / table.matmul_gflops
    assert ((table.efficiency - ratio).abs() <= 1e-6 * ratio).all()
    assert (table.gflop_per_step > 0).all()
    runs = pd.read_csv(tmp_path / "efficiency_runs.csv")
    assert len(runs) == 4
    markdown = (tmp_path / "efficiency.md").read_text()
    assert "| model | memory | op | calls | self_cpu_ms | share_of_step |" in markdown
    # per model: a row per setting, and per setting its top 3 ops and the rest
    assert markdown.count("| mmoe | default | ") == 1 + 4
    assert markdown.count("| ple | kept | ") == 1 + 4
    assert result.checks == [] and result.met  # no target at a size other than the target's


def test_target_check_says_met_or_missed():
    table = pd.DataFrame({"model": ["mmoe", "ple"], "memory": ["default", "kept"],
                          "efficiency": [0.9, 0.5],
                          "efficiency_min": [0.88, 0.4], "efficiency_max": [0.92, 0.6]})
    checks = efficiency.check_target(table, 3)
    assert checks[0].endswith(": met") and checks[1].endswith(": MISSED")


def test_flops_count_the_matmuls_of_forward_and_backward():
    step = efficiency.make_step("mmoe", TINY)
    # experts' first layer alone: 2 b d (E w) forward, twice that backward (input and weight)
    experts = 2 * 16 * (12 + 1) * (4 * 8)
    assert efficiency.step_flops(step) >= 3 * experts
    assert all(p.grad is None for p in step.model.parameters())


def test_an_unknown_memory_setting_is_refused():
    import pytest

    with pytest.raises(ValueError, match="'huge'"):
        efficiency.measure(memory="huge")
