"""Encoders turn each kind of raw input into the (b, d) features every architecture reads.

``create_model(name, tasks=..., encoder=TextEncoder(...))`` puts any registered
architecture on any encoder; the encoder's ``out_features`` becomes ``in_features``.
``SparseEncoder`` pools id features (recsys), in plain torch or on TorchRec.
"""

from mtlzoo.encoders.dense import DenseEncoder
from mtlzoo.encoders.sparse import SparseEncoder
from mtlzoo.encoders.tabular import TabularEncoder
from mtlzoo.encoders.text import TextEncoder

__all__ = ["DenseEncoder", "SparseEncoder", "TabularEncoder", "TextEncoder"]
