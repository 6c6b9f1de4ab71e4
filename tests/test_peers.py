"""``mtlzoo bench speed --peers`` and the peer builders (``mtlzoo.bench.peers``).

The first tests run without the peers. The rest need the ``[peers]`` extra (torch-rechub
and deepctr-torch) and skip without it; CI does not install it, so they run only where
``make bench-peers`` (or ``pip install 'mtlzoo[peers]'``) has installed it.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pandas as pd
import pytest
import torch

from mtlzoo import cli
from mtlzoo.bench import peers, speed
from mtlzoo.errors import MtlzooError

PEER_MODULES = ("torch_rechub", "deepctr_torch")


def tiny(family: str, **changes) -> peers.Config:
    sizes = {"in_features": 6, "num_tasks": 2, "num_experts": 3, "num_shared_experts": 2,
             "num_task_experts": 2, "expert_width": 5, "tower_width": 4}
    return peers.Config(family, **{**sizes, **changes})


# --- without the peers ---------------------------------------------------------------------

@pytest.mark.parametrize("missing", PEER_MODULES)
def test_peers_without_the_extra_say_how_to_install_it(missing, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, missing, None)  # import now raises ImportError
    out = tmp_path / "results"
    assert cli.main(["bench", "speed", "--peers", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mtlzoo: error: ")
    assert "pip install 'mtlzoo[peers]'" in lines[0] and "make bench-peers" in lines[0]
    assert missing in lines[0]
    assert captured.out == "" and not out.exists()  # nothing ran, nothing written


def test_require_peers_raises_mtlzoo_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_rechub", None)
    with pytest.raises(MtlzooError, match=r"mtlzoo\[peers\]"):
        peers.require_peers()


def test_importing_mtlzoo_and_the_peers_module_imports_no_peer():
    code = ("import sys, mtlzoo, mtlzoo.cli, mtlzoo.bench.peers; "
            f"print([m for m in {PEER_MODULES!r} if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_speed_grid_splits_ple_as_the_speed_harness_does():
    grid = peers.speed_grid()
    assert [(c.family, c.num_experts, c.num_tasks) for c in grid] == [
        (f, e, t) for f in ("mmoe", "ple") for e in (8, 64) for t in (2, 8)
    ]
    harness = speed.expert_grid(experts=(8, 64), tasks=(2, 8))
    by_point = {(d["model"], d["T"], d["E"]) for d, _ in harness}
    assert {(c.family, c.num_tasks, c.experts_per_level) for c in grid} == by_point
    for config, (_, model) in zip([c for c in grid if c.family == "ple"],
                                  [m for m in harness if m[0]["model"] == "ple"], strict=True):
        level = model.levels[0]
        assert level.shared_experts.groups == config.num_shared_experts
        assert level.task_experts.groups == config.num_tasks * config.num_task_experts


def test_ple_split():
    assert speed.ple_split(8, 2) == (4, 2)
    assert speed.ple_split(64, 8) == (32, 4)
    assert speed.ple_split(8, 8) == (1, 1)  # at least one of each: 9 experts a level


def test_unknown_family_and_implementation_are_refused():
    with pytest.raises(MtlzooError, match="family 'moe'"):
        peers.Config("moe")
    with pytest.raises(MtlzooError, match="implementation 'keras'"):
        peers.build("keras", tiny("mmoe"))


def test_median_seconds_rotates_the_order_of_the_steps():
    calls = []
    steps = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    speed.median_seconds(steps, repeats=3, warmup=0, rotate=True)
    assert calls == list("abc" "bca" "cab")
    calls.clear()
    speed.median_seconds(steps, repeats=2, warmup=0)
    assert calls == list("abcabc")


def test_our_train_step_trains_without_the_peers():
    config = tiny("ple")
    x, y = peers.batch(config, 16)
    step = peers.TrainStep("ours", peers.build("ours", config), x, y)
    before = [p.detach().clone() for p in step.model.parameters()]
    step()
    assert math.isfinite(float(step.loss))
    assert all(not torch.equal(a, b) for a, b in zip(before, step.model.parameters(),
                                                        strict=True))


def test_report_numbers_the_notes_and_leaves_failed_cells_empty():
    table = pd.DataFrame([
        {"family": "ple", "B": 64, "E": 8, "T": 2, "split": "4 shared + 2x2, 2 levels",
         "ours_params": 10, "rechub_params": 12, "deepctr_params": 9.0, "ours_ms": 1.0,
         "rechub_ms": 2.5, "deepctr_ms": math.nan, "rechub_over_ours": 2.5,
         "deepctr_over_ours": math.nan, "note": "deepctr-torch: IndexError (index 2)",
         "ours_tensors": 3, "rechub_tensors": 4, "deepctr_tensors": 5},
        {"family": "mmoe", "B": 64, "E": 8, "T": 2, "split": "", "ours_params": 10,
         "rechub_params": 12, "deepctr_params": math.nan, "ours_ms": 1.0, "rechub_ms": 3.0,
         "deepctr_ms": math.nan, "rechub_over_ours": 3.0, "deepctr_over_ours": math.nan,
         "note": "deepctr-torch: TypeError (x)", "ours_tensors": 3, "rechub_tensors": 4,
         "deepctr_tensors": math.nan},
    ])
    text = peers.report(table, "mtlzoo bench speed --peers", {"torch-rechub": "0.9.0"},
                        ("1.00", "2.00"), repeats=5)
    assert "Command: `mtlzoo bench speed --peers`" in text
    assert "torch-rechub 0.9.0" in text and "1.00 / 2.00" in text
    assert "| ple | 64 | 8 | 2 | 4 shared + 2x2, 2 levels | 10 | 12 | 9 | 1.00 | 2.50 |  | 2.50 |" \
        in text
    assert "| 10 | 12 |  | 1.00 |" in text  # a peer that did not build: no parameter count
    assert "deepctr-torch cannot run it (1)" in text and "deepctr-torch cannot run it (2)" in text
    assert "1. deepctr-torch: IndexError (index 2)" in text
    assert "2. deepctr-torch: TypeError (x)" in text
    assert "_tensors" not in text


# --- with the peers ([peers] extra) --------------------------------------------------------



@pytest.mark.parametrize("family", peers.FAMILIES)
@pytest.mark.parametrize("implementation", peers.IMPLEMENTATIONS)
def test_every_builder_builds_and_trains(peers_installed, implementation, family):
    config = tiny(family, num_shared_experts=2, num_task_experts=2)  # DeepCTR-Torch runs it
    x, y = peers.batch(config, 16)
    model = peers.build(implementation, config)
    step = peers.TrainStep(implementation, model, x, y)
    assert step.predict().shape == (16, config.num_tasks)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        step()
    assert math.isfinite(float(step.loss))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    # every parameter has a gradient (a whole layer of dead ReLUs may make it zero: DeepCTR-
    # Torch draws its weights from N(0, 1e-4), so at these widths the biases decide)
    without = [name for name, p in model.named_parameters() if p.grad is None]
    if implementation == "deepctr-torch" and family == "ple":
        assert without == ["shared_gate_dnn_final_layer.1.weight"]  # last level: unused
    else:
        assert without == []


@pytest.mark.parametrize("family", peers.FAMILIES)
def test_parameter_counts_differ_only_by_the_peers_own_design(peers_installed, family):
    config = tiny(family, num_shared_experts=2, num_task_experts=2, num_levels=2)
    count = {name: peers.parameter_count(peers.build(name, config))
             for name in peers.IMPLEMENTATIONS}
    h, k, t = config.expert_width, config.tower_width, config.num_tasks
    batch_norm = 2 * k * t  # torch-rechub: BatchNorm1d (weight, bias) after every linear layer
    if family == "mmoe":
        e = config.num_experts
        batch_norm += 2 * h * e + t * 3 * e  # experts; gates: BatchNorm1d and a bias
    elif family == "ple":
        e = config.experts_per_level
        own = config.num_task_experts + config.num_shared_experts
        per_level = 2 * h * e + t * 3 * own
        batch_norm += 2 * per_level + 3 * e  # and the shared gate of the first level
    else:
        batch_norm += 2 * h
    assert count["torch-rechub"] == count["ours"] + batch_norm
    extra = 0
    if family == "ple":  # DeepCTR-Torch: a shared gate at the last level too
        extra = config.expert_width * config.experts_per_level
    assert count["deepctr-torch"] == count["ours"] + extra


def copy_ours_into(implementation: str, ours, peer, config: peers.Config) -> None:
    """Our weights into the peer's layers (zero gate biases for torch-rechub)."""

    def put(linear, weight, bias=None):
        linear.weight.copy_(weight.T)
        if bias is not None:
            linear.bias.copy_(bias)
        elif linear.bias is not None:
            linear.bias.zero_()

    def experts(stacked, linears):
        for i, linear in enumerate(linears):
            put(linear, stacked.layers[0].weight[i], stacked.layers[0].bias[i])

    rechub = implementation == "torch-rechub"
    first = (lambda m: m.mlp[0]) if rechub else (lambda m: m.linears[0])
    with torch.no_grad():
        if config.family == "mmoe":
            experts(ours.experts, [first(m) for m in (peer.experts if rechub else peer.expert_dnn)])
            gates = ([first(g) for g in peer.gates] if rechub else peer.gate_dnn_final_layer)
            for g, gate in enumerate(gates):
                put(gate, ours.gates.logits.weight[g])
        else:
            for k, level in enumerate(ours.levels):
                if rechub:
                    cgc = peer.cgc_layers[k]
                    own = [first(m) for m in cgc.experts_specific]
                    shared = [first(m) for m in cgc.experts_shared]
                    gates = [first(g) for g in cgc.gates_specific]
                    shared_gate = first(cgc.gate_shared) if level.shared_gate else None
                else:
                    own = [first(m) for per_task in peer.specific_experts[k] for m in per_task]
                    shared = [first(m) for m in peer.shared_experts[k][0]]
                    gates = peer.specific_gate_dnn_final_layer[k]
                    shared_gate = peer.shared_gate_dnn_final_layer[k]
                experts(level.task_experts, own)
                experts(level.shared_experts, shared)
                for g, gate in enumerate(gates):
                    put(gate, level.task_gates.logits.weight[g])
                if level.shared_gate is not None:
                    put(shared_gate, level.shared_gate.logits.weight[0])
        towers = peer.towers if rechub else peer.tower_dnn
        for t, tower in enumerate(towers):
            put(first(tower), ours.heads.towers.layers[0].weight[t],
                ours.heads.towers.layers[0].bias[t])
            weight, bias = ours.heads.output.weight[t], ours.heads.output.bias[t]
            if rechub:
                put(tower.mlp[4], weight, bias)
            else:
                put(peer.tower_dnn_final_layer[t], weight)
                peer.out[t].bias.copy_(bias)


@pytest.mark.parametrize("family", ["mmoe", "ple"])
@pytest.mark.parametrize("implementation", peers.PEERS)
def test_with_our_weights_the_peers_compute_our_function(peers_installed, implementation, family):
    config = tiny(family, num_tasks=3, num_shared_experts=2, num_task_experts=2, num_levels=2)
    x, y = peers.batch(config, 32)
    ours, peer = (peers.build(name, config, seed=1) for name in ("ours", implementation))
    copy_ours_into(implementation, ours, peer, config)
    ours_step, peer_step = peers.TrainStep("ours", ours, x, y), peers.TrainStep(
        implementation, peer, x, y)
    # in eval mode torch-rechub's fresh BatchNorm1d is x / sqrt(1 + 1e-5), about the identity
    peer.eval()
    ours_out, peer_out = ours_step.predict().sigmoid(), peer_step.predict()
    torch.testing.assert_close(peer_out, ours_out, atol=1e-4, rtol=1e-4)


def test_deepctr_ple_with_more_shared_than_task_experts_fails_and_the_table_says_so(
        peers_installed):
    config = tiny("ple", num_shared_experts=3, num_task_experts=1)
    table = peers.compare([config, tiny("mmoe")], batch_sizes=(8,), repeats=1, warmup=0)
    ple, mmoe = table.iloc[0], table.iloc[1]
    assert math.isnan(ple.deepctr_ms) and math.isnan(ple.deepctr_over_ours)
    assert ple.note.startswith("deepctr-torch: IndexError")
    assert "builds specific_expert_num shared experts" in ple.note
    assert ple.ours_ms > 0 and ple.rechub_over_ours > 0
    assert mmoe.note == "" and mmoe.deepctr_over_ours > 0
    assert mmoe.rechub_over_ours == pytest.approx(mmoe.rechub_ms / mmoe.ours_ms)


def test_bench_speed_peers_writes_its_table(peers_installed, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(peers, "speed_grid", lambda: [tiny("mmoe"), tiny("ple")])
    argv = ["bench", "speed", "--peers", "--batch-size", "8", "--repeats", "1", "--threads",
            "1", "--out", str(tmp_path)]
    threads = torch.get_num_threads()
    try:
        assert cli.main(argv) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "rechub_over_ours" in out and "deepctr_over_ours" in out
    table = pd.read_csv(tmp_path / "bench_speed_peers_cpu.csv")
    assert list(table.family) == ["mmoe", "ple"] and list(table.B) == [8, 8]
    text = (tmp_path / "bench_speed_peers_cpu.md").read_text()
    assert "Command: `mtlzoo bench speed --peers --batch-size 8" in text
    assert "1 thread |" in text
    assert f"deepctr-torch {peers_installed['deepctr-torch']}" in text
