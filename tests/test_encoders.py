"""Encoders against naive references, and every architecture on every encoder."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import mtlzoo
from mtlzoo import MtlzooError, Task
from mtlzoo.encoders import DenseEncoder, TabularEncoder, TextEncoder
from mtlzoo.tokenizer import WordTokenizer

pytestmark = pytest.mark.usefixtures("float64")
TASKS = [Task("a"), Task("b", kind="multiclass", num_classes=4)]


def tabular_batch(rows: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    codes = torch.stack([torch.randint(0, k, (rows,), generator=g) for k in (3, 1, 5)], dim=1)
    return {"categorical": codes, "numeric": torch.randn(rows, 2, generator=g)}


def token_batch() -> torch.Tensor:
    ids = torch.randint(2, 50, (4, 7), generator=torch.Generator().manual_seed(1))
    ids[0, 3:] = 0  # right padding
    ids[2, 6:] = 0
    return ids


ENCODERS = {
    "dense": (lambda: DenseEncoder(5), lambda: torch.randn(6, 5)),
    "tabular": (lambda: TabularEncoder([3, 1, 5], 2, embedding_dim=3), tabular_batch),
    "text_lstm": (lambda: TextEncoder(50, 8, 6), token_batch),
    "text_mean": (lambda: TextEncoder(50, 8, pooling="mean"), token_batch),
}


def test_tabular_encoder_equals_one_embedding_per_column():
    encoder = TabularEncoder([3, 1, 5], 2, embedding_dim=3, numeric_features=4)
    batch = tabular_batch()
    tables = torch.split(encoder.embedding.weight, [3, 1, 5])  # column c's rows
    expected = torch.cat(
        [*(tables[c][batch["categorical"][:, c]] for c in range(3)),
         batch["numeric"] @ encoder.numeric.weight.T + encoder.numeric.bias], dim=1)
    torch.testing.assert_close(encoder(batch), expected, rtol=0, atol=1e-12)
    assert encoder.out_features == 3 * 3 + 4


@pytest.mark.parametrize(
    ("batch", "fragment"),
    [
        ({"categorical": torch.tensor([[3, 0, 0]]), "numeric": torch.zeros(1, 2)}, "code 3"),
        ({"categorical": torch.tensor([[0, 0, -1]]), "numeric": torch.zeros(1, 2)}, "code -1"),
        ({"categorical": torch.zeros(1, 2, dtype=torch.long), "numeric": torch.zeros(1, 2)},
         "(1, 2)"),
        ({"categorical": torch.zeros(1, 3), "numeric": torch.zeros(1, 2)}, "integers"),
        ({"categorical": torch.zeros(1, 3, dtype=torch.long)}, "'numeric'"),
        (torch.zeros(1, 5), "dict"),
    ],
)
def test_tabular_encoder_bad_input(batch, fragment):
    with pytest.raises(MtlzooError) as err:
        TabularEncoder([3, 1, 5], 2)(batch)
    assert fragment in str(err.value)


def test_lstm_encoder_equals_reading_each_text_alone():
    encoder = TextEncoder(50, 8, 6)
    ids = token_batch()
    got = encoder(ids)
    for row in range(len(ids)):
        length = int((ids[row] != 0).sum())
        _, (hidden, _) = encoder.lstm(encoder.embedding(ids[row : row + 1, :length]))
        torch.testing.assert_close(got[row], torch.cat([hidden[-2, 0], hidden[-1, 0]]))
    padded = torch.cat([ids, torch.zeros(4, 5, dtype=torch.long)], dim=1)  # more padding
    torch.testing.assert_close(encoder(padded), got)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_lstm_final_states_equal_packed_sequences_in_float64(num_layers):
    """final_states (fused LSTM calls over the padded batch, the backward direction on each
    row reversed) against nn.LSTM on packed sequences (mtlzoo.reference): outputs and every
    gradient, for rows of every length, one at the full width and a one-token one."""
    from mtlzoo.encoders.text import final_states
    from mtlzoo.reference import packed_final_states

    torch.manual_seed(0)
    lstm = nn.LSTM(5, 4, num_layers=num_layers, batch_first=True, bidirectional=True).double()
    lengths = torch.tensor([7, 3, 1, 5, 2, 7])
    inputs = torch.randn(6, 7, 5, dtype=torch.float64)
    inputs = inputs * (torch.arange(7) < lengths[:, None])[:, :, None]  # zero padding
    probe = torch.randn(6, 8, dtype=torch.float64)  # a random direction for the gradients
    results = []
    for function in (packed_final_states, final_states):
        lstm.zero_grad()
        out = function(lstm, inputs, lengths)
        (out * probe).sum().backward()
        results.append((out, [p.grad.clone() for p in lstm.parameters()]))
    (expected, expected_grads), (got, grads) = results
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    for grad, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, want, rtol=0, atol=1e-12)


def test_mean_encoder_averages_the_non_pad_tokens():
    encoder = TextEncoder(50, 8, pooling="mean")
    ids = token_batch()
    expected = torch.stack([encoder.embedding.weight[row[row != 0]].mean(0) for row in ids])
    torch.testing.assert_close(encoder(ids), expected)


def test_text_encoder_bad_input_and_an_all_pad_row():
    encoder = TextEncoder(50, 8, 6)
    with pytest.raises(MtlzooError, match="50"):
        encoder(torch.tensor([[3, 50]]))
    with pytest.raises(MtlzooError, match="integer"):
        encoder(torch.zeros(2, 3))
    with pytest.raises(MtlzooError, match="tokenizer"):
        encoder(["no tokenizer here"])
    assert torch.isfinite(encoder(torch.zeros(2, 4, dtype=torch.long))).all()


@pytest.mark.parametrize("encoder_name", sorted(ENCODERS))
def test_every_architecture_sits_on_every_encoder(model_name, encoder_name):
    make_encoder, make_batch = ENCODERS[encoder_name]
    torch.manual_seed(0)
    encoder = make_encoder()
    model = mtlzoo.create_model(model_name, tasks=TASKS, encoder=encoder)
    assert model.in_features == encoder.out_features
    batch = make_batch()
    out = model(batch)
    rows = len(next(iter(out.logits.values())))
    assert {k: tuple(v.shape) for k, v in out.logits.items()} == {"a": (rows, 1), "b": (rows, 4)}
    out.logits["b"].sum().backward()
    if model_name == "single_task":  # each task reads its own copy (test_single_task_encoder)
        encoder = model.encoders[1]
        encoder_params = {id(p) for p in encoder.parameters()}
        assert encoder_params <= {id(p) for p in model.task_parameters()}
    else:
        encoder_params = {id(p) for p in encoder.parameters()}
        assert encoder_params <= {id(p) for p in model.shared_parameters()}
    assert all(p.grad is not None for p in encoder.parameters())
    subset = model(batch, tasks=["b"]).logits["b"]
    torch.testing.assert_close(subset, model(batch).logits["b"])


def test_in_features_must_agree_with_the_encoder():
    with pytest.raises(MtlzooError, match="in_features=7"):
        mtlzoo.create_model("mmoe", in_features=7, tasks=TASKS, encoder=DenseEncoder(5))
    with pytest.raises(MtlzooError, match="out_features"):
        mtlzoo.create_model("mmoe", in_features=5, tasks=TASKS).set_encoder(DenseEncoder(6))


def test_trainer_feeds_several_input_columns_to_a_tabular_encoder():
    batch = tabular_batch(96)
    data = {**batch, "a": (batch["numeric"][:, 0] > 0).long(), "b": batch["categorical"][:, 2] % 4}
    model = mtlzoo.create_model(
        "mmoe", tasks=TASKS, encoder=TabularEncoder([3, 1, 5], 2, embedding_dim=3)
    ).double()
    trainer = mtlzoo.Trainer(model, lr=1e-2, batch_size=32, progress=False,
                             input_key=("categorical", "numeric"))
    trainer.fit({k: v.double() if v.is_floating_point() else v for k, v in data.items()},
                epochs=20)
    table = trainer.evaluate({k: v.double() if v.is_floating_point() else v
                              for k, v in data.items()})
    assert table.loc["a", "accuracy"] > 0.9 and table.loc["b", "accuracy"] > 0.9


def test_encoder_state_travels_with_the_model():
    torch.manual_seed(0)
    model = mtlzoo.create_model("shared_bottom", tasks=TASKS, encoder=TextEncoder(50, 8, 6))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)
    other = mtlzoo.create_model("shared_bottom", tasks=TASKS, encoder=TextEncoder(50, 8, 6))
    other.load_state_dict(torch.load(buffer, weights_only=True))
    ids = token_batch()
    torch.testing.assert_close(other(ids).logits["b"], model(ids).logits["b"])


def test_the_tokenizer_travels_in_the_encoder_state():
    tokenizer = WordTokenizer(max_length=6).fit(["a great film", "a dull film", "great cast"])
    torch.manual_seed(0)
    encoder = TextEncoder(tokenizer=tokenizer, embedding_dim=8, hidden_size=6)
    assert encoder.vocab_size == len(tokenizer)
    buffer = io.BytesIO()
    torch.save(encoder.state_dict(), buffer)
    buffer.seek(0)
    other = TextEncoder(len(tokenizer), 8, 6)  # no tokenizer until the state brings one
    other.load_state_dict(torch.load(buffer, weights_only=True))
    assert isinstance(other.tokenizer, WordTokenizer)
    assert other.tokenizer.state_dict() == tokenizer.state_dict()
    texts = ["a great film", "an unknown word"]
    torch.testing.assert_close(other(texts), encoder(texts))
