"""Every architecture compiles as one graph (no graph break in forward), full and subset calls."""

from __future__ import annotations

import torch

from tests.conftest import IN_FEATURES, build


def test_compiles_without_graph_breaks(model_name):
    torch._dynamo.reset()
    model = build(model_name).eval()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    x = torch.randn(5, IN_FEATURES)
    for tasks in (None, ["score", "income"]):
        expected, got = model(x, tasks=tasks), compiled(x, tasks=tasks)
        for name, logits in expected.logits.items():
            torch.testing.assert_close(got.logits[name], logits)
