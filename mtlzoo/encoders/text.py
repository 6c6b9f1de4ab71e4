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
    its own length (packed sequences). ``pooling="mean"``: the mean of the non-pad token
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
        packed = nn.utils.rnn.pack_padded_sequence(
            self.embedding(tokens), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        _, (hidden, _) = self.lstm(packed)  # hidden: (layers * 2, b, h)
        return torch.cat([hidden[-2], hidden[-1]], dim=1)

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
