"""The batch axis stays symbolic: a compiled model does not recompile when the batch size
changes (the short last batch of an epoch). Every model's export with a dynamic batch is
tests/test_export.py's."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter
from torch.utils._pytree import tree_map

import mtlzoo
from tests.conftest import IN_FEATURES, build
from tests.test_encoders import ENCODERS, TASKS, tabular_batch

EXPORT_BATCH = 8
BATCHES = (16, 16, 7, 5, 16, 3)  # batch 1 is left out: torch specializes sizes 0 and 1


def features(rows: int) -> torch.Tensor:
    return torch.randn(rows, IN_FEATURES)


def tokens(rows: int) -> torch.Tensor:
    """Right-padded token ids (rows, 7), of lengths 7, 6, ..., 1, 7, ..."""
    ids = torch.randint(2, 50, (rows, 7), generator=torch.Generator().manual_seed(rows))
    lengths = 7 - torch.arange(rows) % 7
    return ids.masked_fill(torch.arange(7) >= lengths[:, None], 0)


BATCH_MAKERS = {"tabular": tabular_batch, "text_lstm": tokens, "text_mean": tokens}


def with_encoder(encoder_name: str) -> mtlzoo.MultiTaskModel:
    torch.manual_seed(0)
    encoder = ENCODERS[encoder_name][0]()
    return mtlzoo.create_model("shared_bottom", tasks=TASKS, encoder=encoder,
                               bottom_dims=(8,), tower_dims=(4,)).eval()


def cases() -> list:
    """(model, batch of a given size) for every architecture, and shared_bottom on each encoder
    that reads something other than plain features."""
    models = [pytest.param(lambda name=name: build(name).eval(), features, id=name)
              for name in mtlzoo.list_models()]
    encoders = [
        pytest.param(lambda name=name: with_encoder(name), make_batch, id=f"encoder-{name}")
        for name, make_batch in BATCH_MAKERS.items()
    ]
    return models + encoders


@pytest.mark.parametrize("marked", [False, True], ids=["automatic", "mark_dynamic"])
@pytest.mark.parametrize(("make_model", "make_batch"), cases())
def test_a_compiled_model_does_not_recompile_across_batch_sizes(make_model, make_batch, marked):
    """Unmarked, the second batch size recompiles once with a symbolic batch (automatic
    dynamic shapes) and that graph serves every later size; marked dynamic from the first call,
    one graph serves all (``mark_dynamic`` raises if the code specializes the batch). Dynamo
    traces the LSTM encoder's fused LSTM calls only with ``allow_rnn``."""
    torch._dynamo.reset()
    model = make_model()
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    with torch._dynamo.config.patch(allow_rnn=True):
        for rows in BATCHES:
            batch = make_batch(rows)
            if marked:
                tree_map(lambda tensor: torch._dynamo.mark_dynamic(tensor, 0), batch)
            torch.testing.assert_close(compiled(batch), model(batch))
    assert counter.frame_count == (1 if marked else 2)


@pytest.mark.parametrize("encoder_name", ["tabular", "text_mean"])
def test_a_compiled_encoder_still_rejects_out_of_range_ids(encoder_name):
    """Traced, the range check is an assert in the graph (eager raises MtlzooError)."""
    torch._dynamo.reset()
    model = with_encoder(encoder_name)
    batch = BATCH_MAKERS[encoder_name](4)
    bad = tree_map(lambda t: t if t.is_floating_point() else t.index_fill(0, torch.tensor([2]), 60),
                   batch)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    compiled(batch)
    with pytest.raises(RuntimeError, match="must be in"):
        compiled(bad)
