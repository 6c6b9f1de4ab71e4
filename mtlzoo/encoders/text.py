"""The text encoder of the classic sentiment + topic model: Embedding + BiLSTM.

Axes: b batch, l sequence length, e embedding width, h LSTM hidden width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtlzoo import _checks
from mtlzoo.errors import MtlzooError
from mtlzoo.tokenizer import WordTokenizer

POOLINGS = ("lstm", "mean")


class TextEncoder(nn.Module):
    """Token ids (b, l), right-padded with ``pad_id``, to one vector per text.

    ``pooling="lstm"``: embeddings (b, l, e) through a bidirectional LSTM; the final hidden
    states of both directions (of the last layer) concatenated, (b, 2h), each text read to
    its own length: what packing the sequences gives, computed without packing (see
    :func:`final_states`), several times faster on CPU and traceable by ``torch.compile``
    (with ``torch._dynamo.config.allow_rnn``) and ``torch.export`` with a dynamic batch.
    ``pooling="mean"``: the mean of the non-pad token
    embeddings (``nn.EmbeddingBag``), (b, e), much faster. With a fitted ``tokenizer``
    (``mtlzoo.tokenizer.WordTokenizer``) the encoder also takes a list of strings, and the
    tokenizer's vocabulary is saved in the state dict, so it travels with the model.
    """

    def __init__(
        self,
        vocab_size: int | None = None,
        embedding_dim: int = 128,
        hidden_size: int = 128,
        *,
        num_layers: int = 1,
        pooling: str = "lstm",
        dropout: float = 0.0,
        pad_id: int = 0,
        tokenizer: WordTokenizer | None = None,
    ) -> None:
        super().__init__()
        if vocab_size is None:
            if tokenizer is None:
                raise MtlzooError("TextEncoder needs vocab_size= or a fitted tokenizer=")
            vocab_size = len(tokenizer)
        self.vocab_size = _checks.positive_int("vocab_size", vocab_size)
        if pooling not in POOLINGS:
            raise MtlzooError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
        self.pooling, self.pad_id, self.tokenizer = pooling, pad_id, tokenizer
        _checks.positive_int("embedding_dim", embedding_dim)
        if pooling == "mean":
            self.embedding = nn.EmbeddingBag(vocab_size, embedding_dim, mode="mean",
                                             padding_idx=pad_id)
            self.out_features = embedding_dim
        else:
            self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
            self.lstm = nn.LSTM(
                embedding_dim, _checks.positive_int("hidden_size", hidden_size),
                num_layers=_checks.positive_int("num_layers", num_layers),
                dropout=_checks.probability("dropout", dropout) if num_layers > 1 else 0.0,
                batch_first=True, bidirectional=True,
            )
            self.out_features = 2 * hidden_size

    def forward(self, tokens: Tensor | Sequence[str]) -> Tensor:
        if not isinstance(tokens, Tensor):
            tokens = self._encode(tokens)
        if tokens.dim() != 2 or tokens.is_floating_point():
            raise MtlzooError(
                f"TextEncoder expects (batch, length) integer token ids, got {tokens.dtype} "
                f"{tuple(tokens.shape)}"
            )
        tokens = tokens.long()
        self._check_ids(tokens)
        if self.pooling == "mean":
            return self.embedding(tokens)
        lengths = (tokens != self.pad_id).sum(dim=1).clamp_min(1)  # an all-pad row reads 1 pad
        return final_states(self.lstm, self.embedding(tokens), lengths)

    def _check_ids(self, tokens: Tensor) -> None:
        if torch.compiler.is_compiling():  # a traced graph cannot branch on values: assert
            inside = (tokens >= 0) & (tokens < self.vocab_size)
            message = f"token ids must be in the vocabulary 0..{self.vocab_size - 1}"
            torch._assert_async(inside.all(), message)
        elif tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            bad = tokens[(tokens < 0) | (tokens >= self.vocab_size)][0].item()
            raise MtlzooError(f"token id {bad} is outside the vocabulary 0..{self.vocab_size - 1}")

    def _encode(self, texts: Sequence[str]) -> Tensor:
        if self.tokenizer is None:
            raise MtlzooError("this TextEncoder has no tokenizer: pass token ids (batch, length)")
        if isinstance(texts, str):
            texts = [texts]
        return self.tokenizer.encode(list(texts)).to(self.embedding.weight.device)

    def get_extra_state(self) -> dict:
        return {"tokenizer": None if self.tokenizer is None else self.tokenizer.state_dict()}

    def set_extra_state(self, state: dict) -> None:
        if state.get("tokenizer") is not None:
            self.tokenizer = WordTokenizer.from_state_dict(state["tokenizer"])


def final_states(lstm: nn.LSTM, inputs: Tensor, lengths: Tensor) -> Tensor:
    """The last layer's final hidden states of a bidirectional, batch-first ``lstm``, both
    directions concatenated, (b, 2h), each row of ``inputs`` (b, l, e) read to its own
    length (lengths (b,), each in 1..l, padding at the end).

    Equal to packing the rows (``pack_padded_sequence``) to float rounding, but every
    direction of every layer is one fused LSTM call over the padded batch: the forward
    direction's state at a row's last token is unaffected by the padding after it, and the
    backward direction reads each row's tokens reversed (padding left in place) and returns
    its outputs to their positions for the next layer. Dropout between layers is the
    module's own.
    """
    positions = torch.arange(inputs.shape[1], device=inputs.device)
    last = lengths - 1
    # each row's real positions reversed, the padding's kept: its own inverse
    reverse = torch.where(positions < lengths[:, None], last[:, None] - positions, positions)
    zeros = inputs.new_zeros(1, inputs.shape[0], lstm.hidden_size)

    def along(tensor: Tensor, index: Tensor) -> Tensor:  # tensor[row, index[row, j]]
        return tensor.gather(1, index[:, :, None].expand(-1, -1, tensor.shape[2]))

    finals = []
    for layer in range(lstm.num_layers):
        outputs = []
        for suffix, reverse_rows in (("", False), ("_reverse", True)):
            weights = [getattr(lstm, f"{name}_l{layer}{suffix}")
                       for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")[
                           :4 if lstm.bias else 2]]
            sequence = along(inputs, reverse) if reverse_rows else inputs
            output, _, _ = torch.lstm(sequence, (zeros, zeros), weights, lstm.bias, 1, 0.0,
                                      lstm.training, False, True)  # (b, l, h)
            finals.append(along(output, last[:, None])[:, 0])
            outputs.append(along(output, reverse) if reverse_rows else output)
        inputs = torch.cat(outputs, dim=2)
        if layer < lstm.num_layers - 1:
            inputs = nn.functional.dropout(inputs, lstm.dropout, lstm.training)
    return torch.cat(finals[-2:], dim=1)
