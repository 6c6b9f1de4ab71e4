"""benchmarks/gpu_speed.py: the refusal without CUDA, the grid, the FLOP accounting and the
table, on the CPU with a tiny configuration through the code the GPU run takes."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtlzoo.bench import gpu_speed
from mtlzoo.bench.gpu_speed import Config

ROOT = Path(__file__).resolve().parents[1]
TINY = {"in_features": 6, "width": 4, "tasks": 2, "tower": 3}
NO_CUDA = not torch.cuda.is_available()


def test_grid_is_the_issues_twelve_points():
    points = gpu_speed.grid()
    assert [(c.model, c.experts, c.batch_size) for c in points] == [
        (m, e, b) for m in ("mmoe", "ple") for e in (8, 64, 256) for b in (1024, 16384)]
    first = points[0]
    assert (first.in_features, first.width, first.tasks, first.tower, first.levels) == (
        512, 256, 8, 64, 2)


def test_ple_splits_experts_per_level_as_speed_py():
    # E // 2T per task, the rest shared: 8 -> (0 -> 1 per task, 0 -> 1 shared), 64 -> 4 + 32
    assert Config("ple", 64, 1024).split() == (32, 4)
    assert Config("ple", 256, 1024).split() == (128, 16)
    assert Config("ple", 8, 1024).split() == (1, 1)
    model = Config("ple", 64, 1024).build()
    level = model.levels[0]
    assert level.task_experts.layers[0].weight.shape[0] == 8 * 4
    assert level.shared_experts.layers[0].weight.shape[0] == 32


def test_run_order_puts_large_batches_and_many_experts_first_models_alternating():
    order = [(c.batch_size, c.experts, c.model) for c in gpu_speed.run_order(gpu_speed.grid())]
    assert order[:4] == [(16384, 256, "mmoe"), (16384, 256, "ple"), (16384, 64, "mmoe"),
                         (16384, 64, "ple")]
    assert order[-1] == (1024, 8, "ple") and len(order) == 12


def test_past_the_time_budget_rows_say_so_and_the_table_is_written(tmp_path):
    configs = gpu_speed.grid(("mmoe", "ple"), (2,), (4,), **TINY)
    result = gpu_speed.benchmark(tmp_path, device="cpu", configs=configs, repeats=1,
                                 warmup=0, matmul_size=16, budget_s=-1, command="test")
    assert list(result.table.model) == ["mmoe", "ple"]
    assert result.table.note.str.startswith("skipped: the run's").all()
    assert result.table.fp32_ms.isna().all() and (tmp_path / "gpu_speed.md").exists()


@pytest.mark.skipif(not NO_CUDA, reason="checks the refusal where there is no CUDA")
def test_script_refuses_without_cuda_exit_2_one_line():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_speed.py"),
                             "--out", "unused"], capture_output=True, text=True, cwd=ROOT,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDA" in lines[0] and "is_available" in lines[0]
    assert not (ROOT / "unused").exists()


def test_cpu_device_is_refused_even_with_cuda(tmp_path):
    assert gpu_speed.main(["--device", "cpu", "--out", str(tmp_path / "r")]) == 2
    assert "CUDA device" in gpu_speed.cuda_missing("cpu")
    assert not (tmp_path / "r").exists()


def test_flops_of_a_tiny_mmoe_match_the_hand_count():
    config = Config("mmoe", 3, 5, **TINY)
    b, d, e, w, t, k = 5, 6, 3, 4, 2, 3
    model = config.build()
    x = gpu_speed._inputs(config, "cpu")
    flops = gpu_speed.step_flops(model, x, gpu_speed._labels(model, b, "cpu"))
    # forward matmuls: experts and gates read x (the experts' bias as an extra input column:
    # d + 1; the gates have none), so no input gradient for them: forward + weight gradient.
    # Mixing, towers and outputs: forward, and two in backward.
    experts, gates = 2 * b * (d + 1) * e * w, 2 * b * d * t * e
    mixing, towers, outputs = 2 * b * t * e * w, 2 * b * t * w * k, 2 * b * t * k * 1
    assert flops == 2 * (experts + gates) + 3 * (mixing + towers + outputs)
    assert all(p.grad is None for p in model.parameters())


def test_table_on_cpu_through_the_benchmark_path(tmp_path):
    configs = gpu_speed.grid(("mmoe", "ple"), (4,), (8,), **TINY)
    result = gpu_speed.benchmark(tmp_path / "out", device="cpu", configs=configs, repeats=2,
                                 warmup=1, matmul_size=32, variants=("fp32", "bf16", "loop"),
                                 command="test")
    table = result.table
    assert list(table.model) == ["mmoe", "ple"] and list(table.B) == [8, 8]
    assert (table.note == "").all(), table.note.tolist()
    assert (table.fp32_ms > 0).all() and (table.bf16_ms > 0).all() and (table.loop_ms > 0).all()
    assert table.compiled_ms.isna().all()  # not asked for: empty cells, not a crash
    row = table.iloc[0]
    assert math.isclose(row.fp32_tflops, row.gflop_per_step / row.fp32_ms)
    assert math.isclose(row.fp32_fraction, row.fp32_tflops / row.matmul_tflops)
    assert math.isclose(row.loop_over_fp32, row.loop_ms / row.fp32_ms)
    assert (tmp_path / "out" / "gpu_speed.csv").exists()
    text = (tmp_path / "out" / "gpu_speed.md").read_text()
    assert text.startswith("# MMoE and PLE train step on the GPU (cpu)")
    assert "Command: `test`" in text and "Rates and peak memory" in text


def test_a_failing_variant_is_noted_and_the_run_goes_on(monkeypatch):
    config = Config("mmoe", 2, 4, **TINY)
    real = gpu_speed.make_step

    def failing(model, x, labels, bf16, forward=None):
        if bf16:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return real(model, x, labels, bf16, forward)

    monkeypatch.setattr(gpu_speed, "make_step", failing)
    row = gpu_speed.time_config(config, "cpu", repeats=1, warmup=0,
                                variants=("fp32", "bf16", "compiled"),
                                compile_allowed=lambda: False)
    assert row["fp32_ms"] > 0 and math.isnan(row["bf16_ms"])
    assert row["note"] == "bf16: out of memory; compiled: skipped, compile budget spent"


def test_the_step_trains_with_adam():
    config = Config("mmoe", 2, 16, **TINY)
    model = config.build()
    x = gpu_speed._inputs(config, "cpu")
    before = [p.detach().clone() for p in model.parameters()]
    gpu_speed.make_step(model, x, gpu_speed._labels(model, 16, "cpu"), bf16=False)()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())
    optimizer = gpu_speed.adam(model, "cpu")
    assert optimizer.defaults.get("fused") or optimizer.defaults.get("foreach")


@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU")
def test_one_small_config_on_the_gpu(tmp_path):
    configs = gpu_speed.grid(("mmoe",), (8,), (256,))
    result = gpu_speed.benchmark(tmp_path, device="cuda", configs=configs, repeats=3,
                                 warmup=1, matmul_size=1024,
                                 variants=("fp32", "bf16", "loop"), command="test")
    row = result.table.iloc[0]
    assert row.note == "" and row.fp32_ms > 0 and row.fp32_peak_mib > 0
    assert 0 < row.bf16_fraction < 2


@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU")
def test_compiled_variant_on_the_gpu():
    row = gpu_speed.time_config(Config("ple", 8, 256), "cuda", repeats=2, warmup=1,
                                variants=("compiled",))
    assert row["note"] == "" and row["compiled_ms"] > 0 and row["compile_s"] > 0


def test_traced_flops_equal_flop_counter_mode_and_views_cost_nothing():
    config = Config("ple", 4, 8, **TINY)
    model = config.build()
    counted = gpu_speed.step_flops(model, gpu_speed._inputs(config, "cpu"),
                                   gpu_speed._labels(model, 8, "cpu"))
    torch.set_default_dtype(torch.bfloat16)
    try:
        bf16_model = config.build()
    finally:
        torch.set_default_dtype(torch.float32)
    ops = gpu_speed.traced_ops(bf16_model, 8)
    assert sum(flops for _, flops, _ in ops) == counted > 0
    names = {name for name, _, _ in ops}
    assert {"mm", "bmm"} <= names and not names & {"view", "transpose", "expand", "t"}
    assert all(nbytes > 0 for _, _, nbytes in ops)


def test_paper_counts_of_the_smallest_configuration_are_the_docs_row():
    row = gpu_speed.paper_counts(Config("mmoe", 8, 1024))
    # docs/kernels.md, the GPU section's first row
    assert round(row["gflop"], 1) == 5.3 and row["kernels"] == 112
    assert row["loop_kernels"] == 332
    assert round(row["largest_mm_intensity"]) == 293 and round(row["mm_intensity"]) == 86
    assert (round(row["H100_mm_fraction"], 2), round(row["H200_mm_fraction"], 2)) == (0.29, 0.38)
    assert (round(row["H100_fraction"], 2), round(row["H200_fraction"], 2)) == (0.11, 0.15)
    # the roofline: the whole step is slower than its matmuls alone, more bandwidth helps
    assert row["H100_fraction"] < row["H100_mm_fraction"] <= 1
    assert row["H100_step_ms"] > row["H200_step_ms"]
    text = (ROOT / "docs" / "kernels.md").read_text(encoding="utf-8")
    assert "| mmoe | 8 | 1,024 | 5.3 | 293 | 86 | 33 | 0.29 / 0.38 | 0.11 / 0.15 |" in text


def test_building_a_config_leaves_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = Config("mmoe", 2, 4, **TINY).build()
    assert torch.equal(torch.rand(3), expected)
    second = Config("mmoe", 2, 4, **TINY).build()
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters(),
                                                   strict=True))
