"""Data: generated tasks, real data sets, and the batching the trainer reads.

``WordTokenizer`` and ``pad_batch`` live in ``mtlzoo.tokenizer`` (the text encoder uses them
too) and are re-exported here. ``datasets`` and ``pandas`` load lazily, inside the functions
that read data.
"""

from mtlzoo.data.census_income import CensusIncome, census_income
from mtlzoo.data.synthetic import synthetic_tasks
from mtlzoo.data.text import (
    NUM_CLASSES,
    class_names,
    load_source,
    num_classes,
    text_classification,
    tokenize_dataset,
)
from mtlzoo.tokenizer import WordTokenizer, pad_batch

__all__ = [
    "NUM_CLASSES",
    "CensusIncome",
    "WordTokenizer",
    "census_income",
    "class_names",
    "load_source",
    "num_classes",
    "pad_batch",
    "synthetic_tasks",
    "text_classification",
    "tokenize_dataset",
]
