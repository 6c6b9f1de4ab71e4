"""The small-batch benchmark against the peers (issue 15) at a tiny size.

The pure parts (the configurations, the median over processes, the target check) run
without the peers; the benchmark itself needs the ``[peers]`` extra and skips without it
(CI does not install it).
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

from mtlzoo.bench import small_batch

TINY = small_batch.Size(batch_size=8, num_experts=4, num_tasks=2, in_features=6,
                        expert_width=5, tower_width=4)


def load_script():
    path = Path(__file__).parents[1] / "benchmarks" / "small_batch.py"
    spec = importlib.util.spec_from_file_location("small_batch_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- without the peers ---------------------------------------------------------------------

def test_configs_at_the_target_size():
    mmoe, ple, ple_deepctr = small_batch.configs(small_batch.Size())
    assert (mmoe.family, mmoe.experts_per_level, mmoe.num_tasks) == ("mmoe", 64, 8)
    assert (ple.num_shared_experts, ple.num_task_experts, ple.num_levels) == (32, 4, 2)
    assert ple.experts_per_level == 64
    # DeepCTR-Torch runs a PLE only with as many shared experts as each task's own
    assert (ple_deepctr.num_shared_experts, ple_deepctr.num_task_experts) == (7, 7)
    assert ple_deepctr.experts_per_level == 63
    assert all(c.in_features == 128 and c.expert_width == 64 and c.tower_width == 32
               for c in (mmoe, ple, ple_deepctr))
    assert small_batch.Size().is_target and not TINY.is_target


def test_deepctr_split_is_the_nearest_equal_split():
    assert small_batch.deepctr_split(64, 8) == (7, 7)  # 63 experts; 8 + 8x8 would be 72
    assert small_batch.deepctr_split(8, 2) == (3, 3)
    assert small_batch.deepctr_split(2, 8) == (1, 1)


def runs_of(ratios: dict[str, list[float]]) -> pd.DataFrame:
    """Runs of two configurations over three processes; DeepCTR-Torch cannot run PLE."""
    rows = []
    for process in range(3):
        for family, split in (("mmoe", ""), ("ple", "2 shared + 2x1, 2 levels")):
            rechub = ratios[family][process]
            deepctr = math.nan if family == "ple" else 2 * rechub
            rows.append({
                "process": process + 1, "family": family, "B": 8, "E": 4, "T": 2,
                "split": split if split else math.nan,  # as read back from a CSV
                "ours_params": 10, "rechub_params": 12, "deepctr_params": 10,
                "ours_tensors": 3, "rechub_tensors": 9, "deepctr_tensors": 6,
                "ours_ms": 1.0 + process, "rechub_ms": rechub * (1.0 + process),
                "deepctr_ms": deepctr * (1.0 + process),
                "rechub_over_ours": rechub, "deepctr_over_ours": deepctr,
                "note": "deepctr-torch: IndexError (x)" if family == "ple" else "",
            })
    return pd.DataFrame(rows)


def test_median_over_processes_takes_each_ratio_s_median_and_range():
    table = small_batch.median_over_processes(
        runs_of({"mmoe": [5.0, 1.0, 4.0], "ple": [9.0, 2.0, 3.0]}))
    assert list(table.columns) == small_batch.COLUMNS
    mmoe, ple = table.iloc[0], table.iloc[1]
    assert (mmoe.family, ple.family) == ("mmoe", "ple")
    assert (mmoe.rechub_over_ours, mmoe.rechub_over_ours_min, mmoe.rechub_over_ours_max) == (
        4.0, 1.0, 5.0)
    assert (mmoe.deepctr_over_ours, mmoe.deepctr_over_ours_min,
            mmoe.deepctr_over_ours_max) == (8.0, 2.0, 10.0)
    assert (ple.rechub_over_ours, ple.rechub_over_ours_min, ple.rechub_over_ours_max) == (
        3.0, 2.0, 9.0)
    # the median of the per-process ratios, not the ratio of the median times
    assert ple.rechub_over_ours != ple.rechub_ms / ple.ours_ms
    assert math.isnan(ple.deepctr_over_ours) and math.isnan(ple.deepctr_over_ours_max)
    assert ple.ours_ms == 2.0 and list(table.processes) == [3, 3]
    assert (mmoe.note, ple.note) == ("", "deepctr-torch: IndexError (x)")
    assert (mmoe.split, ple.rechub_tensors) == ("", 9)


def test_target_check_says_met_or_missed_and_skips_a_peer_that_could_not_run():
    table = small_batch.median_over_processes(
        runs_of({"mmoe": [3.5, 3.0, 4.0], "ple": [2.0, 2.9, 9.0]}))
    checks = small_batch.check_target(table)
    assert len(checks) == 3  # MMoE: both peers; PLE: torch-rechub only
    assert checks[0].startswith("MMOE, B=8, E=4, T=2: torch-rechub's step 3.50x ours")
    assert "range 3.00-4.00" in checks[0] and checks[0].endswith(": met")
    assert checks[1].startswith("MMOE, B=8, E=4, T=2: deepctr-torch's step 7.00x")
    assert checks[1].endswith(": met")
    assert checks[2].startswith("PLE (2 shared + 2x1, 2 levels), B=8, E=4, T=2: torch-rechub")
    assert "2.90x" in checks[2] and checks[2].endswith(": MISSED")
    assert all("median over 3 processes" in line for line in checks)
    assert small_batch.check_target(table, target=2.5)[2].endswith(": met")


def test_the_script_without_the_peers_says_so_and_writes_nothing(monkeypatch, capsys,
                                                                 tmp_path):
    monkeypatch.setitem(sys.modules, "torch_rechub", None)  # import now raises ImportError
    out = tmp_path / "results"
    assert load_script().main(["--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mtlzoo[peers]" in err[0]
    assert not out.exists()


# --- with the peers ------------------------------------------------------------------------

def test_benchmark_writes_the_table_the_runs_and_the_report(peers_installed, tmp_path):
    result = small_batch.benchmark(tmp_path, processes=2, repeats=1, warmup=1, threads=1,
                                   size=TINY, command="test")
    table = pd.read_csv(tmp_path / "small_batch.csv")
    table[["split", "note"]] = table[["split", "note"]].fillna("")  # empty cells read as NaN
    assert list(table.columns) == small_batch.COLUMNS
    assert list(table.family) == ["mmoe", "ple", "ple"]
    assert list(table.E) == [4, 4, 3] and (table.B == 8).all() and (table["T"] == 2).all()
    assert list(table.split) == ["", "2 shared + 2x1, 2 levels", "1 shared + 2x1, 2 levels"]
    assert (table.processes == 2).all() and (table.rechub_over_ours > 0).all()
    # DeepCTR-Torch cannot run the grid's PLE split, and runs the equal one
    assert math.isnan(table.deepctr_over_ours[1]) and table.deepctr_over_ours[2] > 0
    assert "specific_expert_num" in table.note[1] and table.note[2] == ""
    assert (table.rechub_over_ours_min <= table.rechub_over_ours).all()
    assert (table.rechub_over_ours <= table.rechub_over_ours_max).all()
    runs = pd.read_csv(tmp_path / "small_batch_runs.csv")
    assert list(runs.process) == [1, 1, 1, 2, 2, 2]
    for row in table.itertuples():
        ratios = runs[(runs.family == row.family) & (runs.E == row.E)].rechub_over_ours
        assert row.rechub_over_ours == pytest.approx(ratios.median())
    markdown = (tmp_path / "small_batch.md").read_text()
    assert markdown == result.markdown
    assert "Command: `test`" in markdown and "1 thread |" in markdown
    assert f"deepctr-torch {peers_installed['deepctr-torch']}" in markdown
    assert "torch.optim.Adam" in markdown and "the optimizer is part of the timed step" in markdown
    assert "Load average (1, 5, 15 min) before / after the run:" in markdown
    assert "2 fresh processes" in markdown and "B=8, T=2" in markdown
    assert result.checks == [] and result.met  # no target at a size other than the target's
