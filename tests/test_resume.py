"""A run killed and resumed from its last checkpoint ends with the same weights as a run
that was never interrupted (each run in its own process; the kill is a real SIGKILL)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    import mtlzoo

    mode, regime, checkpoint, out = sys.argv[1:5]
    torch.manual_seed(0)
    tasks = [mtlzoo.Task("a"), mtlzoo.Task("b", kind="multiclass", num_classes=3)]
    model = mtlzoo.create_model("ple", in_features=5, tasks=tasks, dropout=0.2)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 5, generator=g)
    labels = {"a": (x[:, 0] > 0).long(), "b": torch.bucketize(x[:, 1], torch.tensor([-.5, .5]))}
    if regime == "joint":
        data = {"x": x, **labels, "a_mask": torch.arange(200) % 4 != 0}
        options = {}
    else:
        data = {"a": {"x": x[:120], "label": labels["a"][:120]},
                "b": {"x": x[120:], "label": labels["b"][120:]}}
        options = {"sampling": "temperature"}
    trainer = mtlzoo.Trainer(model, weighting="dwa", lr=1e-2, batch_size=32, seed=3,
                             progress=False, **options)
    if mode == "killed":
        step = trainer._step
        def dying_step(batches, number):
            result = step(batches, number)
            if number == 9:  # the checkpoint of step 8 is the last one written
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        trainer._step = dying_step
        trainer.fit(data, epochs=4, checkpoint=checkpoint, checkpoint_every=4)
    if mode == "resume":
        trainer.load(checkpoint)
        assert trainer.step == 8, trainer.step
    trainer.fit(data, epochs=4)
    torch.save(model.state_dict(), out)
    """
)


def run(tmp_path, *args) -> subprocess.CompletedProcess:
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT)
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)


@pytest.mark.parametrize("regime", ["joint", "per_task"])
def test_killed_and_resumed_run_matches_an_uninterrupted_one(tmp_path, regime):
    checkpoint = tmp_path / "run.pt"
    full = run(tmp_path, "full", regime, str(checkpoint), str(tmp_path / "full.pt"))
    assert full.returncode == 0, full.stderr
    killed = run(tmp_path, "killed", regime, str(checkpoint), str(tmp_path / "never.pt"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = run(tmp_path, "resume", regime, str(checkpoint), str(tmp_path / "resumed.pt"))
    assert resumed.returncode == 0, resumed.stderr
    expected = torch.load(tmp_path / "full.pt", weights_only=True)
    got = torch.load(tmp_path / "resumed.pt", weights_only=True)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
