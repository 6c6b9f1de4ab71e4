"""Data: generated tasks, real data sets, and the batching the trainer reads.

``datasets`` and ``pandas`` load lazily, inside the functions that read data.
"""

from mtlzoo.data.census_income import CensusIncome, census_income
from mtlzoo.data.synthetic import synthetic_tasks
from mtlzoo.data.text import (
    NUM_CLASSES,
    WordTokenizer,
    num_classes,
    pad_batch,
    text_classification,
    tokenize_dataset,
)

__all__ = [
    "NUM_CLASSES",
    "CensusIncome",
    "WordTokenizer",
    "census_income",
    "num_classes",
    "pad_batch",
    "synthetic_tasks",
    "text_classification",
    "tokenize_dataset",
]
