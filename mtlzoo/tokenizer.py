"""The word tokenizer: a vocabulary fitted on training texts, texts to token ids, padding.

* ``WordTokenizer`` splits on words, keeps the most frequent training words and maps a text
  to ids (0 = ``<pad>``, 1 = ``<unk>``); its ``state_dict()`` is plain types, so it can ride
  in a checkpoint read with ``torch.load(weights_only=True)``.
* ``pad_batch`` right-pads lists of ids into one ``(n, L)`` tensor.

The data loaders (``mtlzoo.data.text.tokenize_dataset``) and the text encoder
(``mtlzoo.encoders.TextEncoder``) both use it; it needs only torch.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch

from mtlzoo import _checks
from mtlzoo.errors import MtlzooError

PAD, UNK = "<pad>", "<unk>"
# a word: letters and digits (any script, no underscore), with inner apostrophes ("don't")
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
# HTML line breaks, as in IMDb's "<br /><br />": a space, so they add no "br" word
_LINE_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_STATE_KIND = "mtlzoo.WordTokenizer"
_STATE_VERSION = 1


class WordTokenizer:
    """Words to ids, with no dependency: fit a vocabulary on training texts, then encode.

    Rules:

    * ``<br />`` tags become spaces; the text is lower-cased when ``lowercase``;
    * a word is a run of letters and digits (any script; ``_`` and punctuation separate
      words) with inner apostrophes kept: ``"Don't stop_now!"`` -> ``["don't", "stop",
      "now"]``;
    * ``fit`` keeps the ``max_vocab`` most frequent words, ties broken alphabetically (so
      the vocabulary does not depend on the order of the texts); id 0 is ``<pad>``, id 1
      ``<unk>``, then the words, most frequent first: ``len(tokenizer) <= max_vocab + 2``;
    * ``encode`` keeps the first ``max_length`` words; a word not in the vocabulary is 1;
      a text with no word at all encodes as one ``<unk>`` (never an all-padding row).

    >>> tokenizer = WordTokenizer(max_vocab=3).fit(["a b b", "c c c d"])
    >>> tokenizer.vocab
    ['<pad>', '<unk>', 'c', 'b', 'a']
    >>> tokenizer.encode(["c a x", "!"]).tolist()
    [[2, 4, 1], [1, 0, 0]]
    """

    pad_id = 0
    unk_id = 1

    def __init__(self, max_vocab: int = 20_000, max_length: int = 256,
                 lowercase: bool = True) -> None:
        self.max_vocab = _checks.positive_int("max_vocab", max_vocab)
        self.max_length = _checks.positive_int("max_length", max_length)
        if not isinstance(lowercase, bool):
            raise MtlzooError(f"lowercase must be True or False, got {lowercase!r}")
        self.lowercase = lowercase
        self._vocab: list[str] | None = None
        self._ids: dict[str, int] = {}

    # ---- rules

    def tokenize(self, text: str) -> list[str]:
        """The words of one text, by the rules above (no truncation)."""
        if "<" in text:
            text = _LINE_BREAK.sub(" ", text)
        if self.lowercase:
            text = text.lower()
        return _WORD.findall(text)

    def fit(self, texts: Iterable[str]) -> WordTokenizer:
        """Build the vocabulary from ``texts`` (any iterable of str, e.g. a dataset column
        or ``itertools.chain`` of several); replaces any earlier vocabulary."""
        counts: collections.Counter[str] = collections.Counter()
        for i, text in enumerate(_texts(texts, "fit")):
            if not isinstance(text, str):
                raise MtlzooError(f"fit: text {i} is {type(text).__name__}, not str")
            counts.update(self.tokenize(text))
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        self._set_vocab([PAD, UNK, *(word for word, _ in ranked[: self.max_vocab])])
        return self

    def encode_ids(self, texts: Iterable[str], *, max_length: int | None = None
                   ) -> list[list[int]]:
        """One list of ids per text, truncated to ``max_length`` (default: the tokenizer's),
        unpadded; every list has at least one id."""
        ids = self._require_fitted()
        length = self.max_length if max_length is None else _checks.positive_int(
            "max_length", max_length
        )
        rows = []
        for i, text in enumerate(_texts(texts, "encode")):
            if not isinstance(text, str):
                raise MtlzooError(f"encode: text {i} is {type(text).__name__}, not str")
            words = self.tokenize(text)[:length]
            rows.append([ids.get(word, 1) for word in words] if words else [1])
        return rows

    def encode(self, texts: Iterable[str], *, max_length: int | None = None) -> torch.Tensor:
        """A LongTensor ``(n, L)``: each text's ids truncated to ``max_length`` (default: the
        tokenizer's), right-padded with 0 to the longest row of this call."""
        return pad_batch(self.encode_ids(texts, max_length=max_length), pad_id=self.pad_id)

    # ---- vocabulary

    @property
    def fitted(self) -> bool:
        return self._vocab is not None

    @property
    def vocab(self) -> list[str]:
        """The words by id (a copy): ``vocab[0] == "<pad>"``, ``vocab[1] == "<unk>"``."""
        return list(self._vocab) if self._vocab is not None else [PAD, UNK]

    def __len__(self) -> int:
        """The vocabulary size with ``<pad>`` and ``<unk>``: the encoder's embedding rows."""
        return len(self._vocab) if self._vocab is not None else 2

    def __repr__(self) -> str:
        size = len(self) if self.fitted else "unfitted"
        return (f"WordTokenizer(vocab={size}, max_vocab={self.max_vocab}, "
                f"max_length={self.max_length}, lowercase={self.lowercase})")

    def _set_vocab(self, vocab: list[str]) -> None:
        self._vocab = vocab
        self._ids = {word: i for i, word in enumerate(vocab)}

    def _require_fitted(self) -> dict[str, int]:
        if self._vocab is None:
            raise MtlzooError("the WordTokenizer has no vocabulary yet: call fit(texts) first")
        return self._ids

    # ---- persistence

    def state_dict(self) -> dict:
        """Plain types only (str, int, bool, list): safe for ``torch.load(weights_only=True)``."""
        self._require_fitted()
        return {
            "kind": _STATE_KIND,
            "version": _STATE_VERSION,
            "max_vocab": self.max_vocab,
            "max_length": self.max_length,
            "lowercase": self.lowercase,
            "vocab": list(self._vocab),
        }

    @classmethod
    def from_state_dict(cls, state: Mapping) -> WordTokenizer:
        """The tokenizer ``state_dict()`` described."""
        if not isinstance(state, Mapping) or state.get("kind") != _STATE_KIND:
            raise MtlzooError("not a WordTokenizer state_dict (missing kind "
                              f"{_STATE_KIND!r}): {_preview(state)}")
        if state.get("version") != _STATE_VERSION:
            raise MtlzooError(
                f"WordTokenizer state version {state.get('version')!r} is not supported "
                f"(this mtlzoo reads version {_STATE_VERSION})"
            )
        missing = [k for k in ("max_vocab", "max_length", "lowercase", "vocab") if k not in state]
        if missing:
            raise MtlzooError(f"WordTokenizer state_dict lacks {missing}")
        tokenizer = cls(state["max_vocab"], state["max_length"], state["lowercase"])
        vocab = state["vocab"]
        if (
            not isinstance(vocab, (list, tuple))
            or len(vocab) < 2
            or list(vocab[:2]) != [PAD, UNK]
            or not all(isinstance(word, str) for word in vocab)
            or len(set(vocab)) != len(vocab)
        ):
            raise MtlzooError(
                f"WordTokenizer vocab must be a list of distinct str starting with {PAD!r}, "
                f"{UNK!r}; got {_preview(vocab)}"
            )
        tokenizer._set_vocab(list(vocab))
        return tokenizer

    def save(self, path: str | os.PathLike) -> None:
        """Write ``state_dict()`` as UTF-8 JSON."""
        Path(path).write_text(json.dumps(self.state_dict(), ensure_ascii=False), "utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> WordTokenizer:
        """Read a tokenizer ``save`` wrote."""
        try:
            state = json.loads(Path(path).read_text("utf-8"))
        except (OSError, ValueError) as error:
            raise MtlzooError(f"cannot read a WordTokenizer from {os.fspath(path)!r}: {error}"
                              ) from error
        return cls.from_state_dict(state)

    def fingerprint(self) -> str:
        """A hash of the settings and vocabulary (names cached tokenised datasets)."""
        blob = json.dumps(self.state_dict(), ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _texts(texts, caller: str):
    if isinstance(texts, (str, bytes)):
        raise MtlzooError(f"{caller} takes a list of texts, got one {type(texts).__name__}; "
                          "wrap it in a list")
    if not isinstance(texts, Iterable):
        raise MtlzooError(f"{caller} takes an iterable of str, got {type(texts).__name__}")
    return texts


def _preview(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def pad_batch(sequences: Sequence[Sequence[int]], *, pad_id: int = 0,
              length: int | None = None, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """Right-pad lists of ids into an ``(n, L)`` tensor; ``L`` is ``length`` or the longest
    row. A row longer than ``length`` is an error (truncate when encoding). Usable as a
    ``DataLoader`` collate step for unpadded ids."""
    import numpy as np

    rows = [row if isinstance(row, list) else list(row) for row in sequences]
    longest = max((len(row) for row in rows), default=0)
    if length is None:
        length = longest
    else:
        _checks.non_negative_int("length", length)
        if longest > length:
            raise MtlzooError(f"a row of {longest} ids does not fit length={length}")
    out = np.full((len(rows), length), pad_id, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return torch.from_numpy(out).to(dtype)
