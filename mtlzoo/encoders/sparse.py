"""The sparse-feature encoder of recommendation models: one embedding bag per id feature,
pooled, beside a linear layer on the dense features.

Axes: b batch, f sparse features, l a feature's ids per row (padded), n ids of the batch
(all features, padding dropped), k rows of a table, e embedding width, d dense features.

Input: a dict with one integer column per sparse feature, ``(b,)`` (single-hot) or
``(b, l_f)`` (multi-hot, each row's ids followed by ``PAD`` = -1 up to the column's width
``l_f``, which may differ between features and between batches), and the dense features
``(b, d)`` under ``dense_key``. Fixed-width columns are what the trainer batches (it slices
rows of every column), so this is also the format of the data a ``Trainer`` reads with
``input_key=encoder.input_keys``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mtlzoo import _checks
from mtlzoo.errors import MtlzooError, suggest

PAD = -1
POOLINGS = ("sum", "mean")
BACKENDS = ("torch", "torchrec")
TORCHREC_INSTALL = ("pip install 'mtlzoo[torchrec]' && pip install --no-deps torchrec==1.8.0 "
                    "(docs/encoders.md#sparse-features says why --no-deps)")


class SparseEncoder(nn.Module):
    """``[pool_f(table_f[ids_f]) for each feature f (b, f*e), linear(dense) (b, d')]``.

    ``features`` maps each sparse feature's name to its number of ids ``k_f`` (ids run from
    0 to ``k_f - 1``); each feature has its own table of ``embedding_dim`` columns, and its
    ids in a row are pooled by ``pooling`` (``"sum"`` or ``"mean"``, or a dict feature ->
    pooling); a row without ids pools to zeros. ``num_dense`` float features go through one
    ``nn.Linear(num_dense, dense_features or num_dense)``. Output width ``out_features =
    len(features) * embedding_dim + dense width``, features in the order given.

    ``backend="torch"`` (the default): every table is a slice of one ``nn.EmbeddingBag``
    (feature f's rows start at ``sum(k[:f])``, as ``TabularEncoder`` lays them out), and the
    whole batch, every feature, is one bag lookup (bag (b, f) is row b's ids of feature f).
    ``backend="torchrec"`` (the ``mtlzoo[torchrec]`` extra): a ``torchrec``
    ``EmbeddingBagCollection`` with one table per feature, fed a ``KeyedJaggedTensor``; what
    ``mtlzoo.encoders.sharding.shard_tables`` shards over ranks. float32 only (TorchRec's
    pooled outputs are float32). With the same seed both backends draw the same tables, and
    single-hot features with sum pooling give what ``TabularEncoder`` gives for the same
    seed and cardinalities.
    """

    def __init__(
        self,
        features: Mapping[str, int],
        num_dense: int = 0,
        embedding_dim: int = 16,
        *,
        pooling: str | Mapping[str, str] = "sum",
        dense_features: int | None = None,
        dense_key: str = "dense",
        backend: str = "torch",
    ) -> None:
        super().__init__()
        _checks.mapping("features", features, "a dict feature name -> number of ids")
        self.names = tuple(features)
        for name in self.names:
            if not isinstance(name, str) or not name or "." in name:
                raise MtlzooError(f"a feature name must be a non-empty string without '.', "
                                  f"got {name!r}")
        self.num_ids = [_checks.positive_int(f"features[{name!r}]", features[name])
                        for name in self.names]
        self.num_dense = _checks.non_negative_int("num_dense", num_dense)
        if not self.names and not self.num_dense:
            raise MtlzooError("SparseEncoder needs at least one sparse feature or num_dense > 0")
        self.embedding_dim = _checks.positive_int("embedding_dim", embedding_dim)
        self.dense_key = _checks.name("dense_key", dense_key)
        if dense_key in self.names:
            raise MtlzooError(f"dense_key {dense_key!r} is also a sparse feature's name")
        self.backend = _checks.choice("backend", backend, BACKENDS)
        self.poolings = self._poolings(pooling)
        offsets = torch.tensor([0, *self.num_ids[:-1]], dtype=torch.long).cumsum(0)
        self.register_buffer("offsets", offsets[: len(self.names)], persistent=False)
        self.register_buffer("limits", torch.tensor(self.num_ids, dtype=torch.long),
                             persistent=False)
        self.register_buffer("mean", torch.tensor([p == "mean" for p in self.poolings]),
                             persistent=False)
        # one draw of every table, whichever the backend: the same seed, the same tables
        bag = nn.EmbeddingBag(max(1, sum(self.num_ids)), embedding_dim, mode="sum")
        if backend == "torch":
            self.embedding = bag
        else:
            self.collection = _collection(self.names, self.num_ids, embedding_dim,
                                          self.poolings, bag.weight.detach())
        width = num_dense if dense_features is None else _checks.positive_int(
            "dense_features", dense_features)
        self.dense = nn.Linear(num_dense, width) if num_dense else None
        self.out_features = len(self.names) * embedding_dim + (width if num_dense else 0)

    @property
    def input_keys(self) -> tuple[str, ...]:
        """The columns the encoder reads: ``Trainer(..., input_key=encoder.input_keys)``."""
        return (*self.names, self.dense_key) if self.num_dense else self.names

    def table(self, name: str) -> Tensor:
        """Feature ``name``'s table (k_f, e): a view of the parameter (its ``.grad`` is
        ``table_grad``); write into it under ``torch.no_grad()`` to set the weights."""
        index = self._index(name)
        if self.backend == "torch":
            start = int(self.offsets[index])
            return self.embedding.weight[start: start + self.num_ids[index]]
        return self.collection.embedding_bags[name].weight

    def table_grad(self, name: str) -> Tensor | None:
        """The gradient of feature ``name``'s table (k_f, e), None before a backward."""
        index = self._index(name)
        if self.backend == "torch":
            grad = self.embedding.weight.grad
            start = int(self.offsets[index])
            return None if grad is None else grad[start: start + self.num_ids[index]]
        return self.collection.embedding_bags[name].weight.grad

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        if not isinstance(inputs, Mapping):
            raise MtlzooError(f"SparseEncoder expects a dict with the columns {self.input_keys}"
                              f", got {type(inputs).__name__}")
        self._check_keys(inputs)
        parts = []
        if self.names:
            ids = [self._ids(inputs, name) for name in self.names]
            rows = ids[0].shape[0]
            for name, column in zip(self.names, ids, strict=True):
                if column.shape[0] != rows:
                    raise MtlzooError(f"sparse feature {name!r} has {column.shape[0]} rows, "
                                      f"{self.names[0]!r} has {rows}")
            pool = self._torch_pool if self.backend == "torch" else self._torchrec_pool
            parts.append(pool(ids))
        if self.dense is not None:
            numbers = inputs[self.dense_key]
            if not isinstance(numbers, Tensor) or numbers.dim() != 2 \
                    or numbers.shape[1] != self.num_dense:
                got = tuple(numbers.shape) if isinstance(numbers, Tensor) else numbers
                raise MtlzooError(f"{self.dense_key!r} must be (batch, {self.num_dense}) "
                                  f"floats, got {got}")
            if parts and numbers.shape[0] != parts[0].shape[0]:
                raise MtlzooError(f"{self.dense_key!r} has {numbers.shape[0]} rows, the "
                                  f"sparse features {parts[0].shape[0]}")
            parts.append(self.dense(numbers.to(self.dense.weight.dtype)))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def _torch_pool(self, ids: list[Tensor]) -> Tensor:
        """One ``EmbeddingBag`` call: the ids of bag (b, f) lie together in the row-major
        flattening of the columns concatenated (b, sum l_f), padding dropped."""
        flat = torch.cat(ids, dim=1)                                        # (b, l)
        feature = torch.repeat_interleave(                                  # (l,)
            torch.arange(len(ids), device=flat.device),
            torch.tensor([column.shape[1] for column in ids], device=flat.device))
        self._check_range(flat, feature)
        valid = flat != PAD
        lengths = flat.new_zeros(flat.shape[0], len(ids)).index_add_(   # (b, f)
            1, feature, valid.long())
        values = (flat + self.offsets[feature]).masked_select(valid)        # (n,)
        starts = lengths.flatten().cumsum(0) - lengths.flatten()            # (b*f,)
        weights = None
        if "mean" in self.poolings:  # 1 / length for the ids of a mean-pooled feature
            scale = torch.where(self.mean, 1 / lengths.clamp_min(1), 1.0)   # (b, f)
            weights = scale[:, feature].masked_select(valid).to(self.embedding.weight.dtype)
            # both are masked_select(valid): torch.export cannot know their sizes agree
            torch._check(weights.shape[0] == values.shape[0])
        pooled = self.embedding(values, starts, per_sample_weights=weights)  # (b*f, e)
        return pooled.view(flat.shape[0], len(ids) * self.embedding_dim)

    def _torchrec_pool(self, ids: list[Tensor]) -> Tensor:
        """A ``KeyedJaggedTensor`` (feature-major: every row's ids of feature 0, then 1 ...)
        through the ``EmbeddingBagCollection``; its ``KeyedTensor`` in feature order is
        (b, f*e)."""
        from torchrec import KeyedJaggedTensor

        feature = torch.repeat_interleave(
            torch.arange(len(ids), device=ids[0].device),
            torch.tensor([column.shape[1] for column in ids], device=ids[0].device))
        self._check_range(torch.cat(ids, dim=1), feature)
        rows = ids[0].shape[0]
        if rows == 0:  # TorchRec cannot split a batch of no rows: one row with no id, cut
            ids = [column.new_full((1, 1), PAD) for column in ids]
        valid = [column != PAD for column in ids]
        features = KeyedJaggedTensor(
            keys=list(self.names),
            values=torch.cat([column[keep] for column, keep in zip(ids, valid, strict=True)]),
            lengths=torch.cat([keep.sum(1) for keep in valid]).int(),
        )
        pooled = self.collection(features)  # sharded: its keys grouped by placement
        if list(pooled.keys()) == list(self.names):
            return pooled.values()[:rows]
        by_name = pooled.to_dict()
        return torch.cat([by_name[name] for name in self.names], dim=1)[:rows]

    def _ids(self, inputs: Mapping[str, Tensor], name: str) -> Tensor:
        column = inputs[name]
        if not isinstance(column, Tensor) or column.dim() not in (1, 2) \
                or column.is_floating_point() or column.is_complex() \
                or column.dtype == torch.bool:
            got = (f"{column.dtype} {tuple(column.shape)}" if isinstance(column, Tensor)
                   else type(column).__name__)
            raise MtlzooError(f"sparse feature {name!r} must be integer ids (batch,) or "
                              f"(batch, length) padded with {PAD}, got {got}")
        device = self.offsets.device
        return (column[:, None] if column.dim() == 1 else column).to(device, torch.long)

    def _check_keys(self, inputs: Mapping[str, Tensor]) -> None:
        expected = self.input_keys
        for key in inputs:
            if key not in expected:
                raise MtlzooError(f"unknown sparse feature {key!r}.{suggest(str(key), expected)}"
                                  f" The encoder reads {', '.join(expected)}")
        for key in expected:
            if key not in inputs:
                raise MtlzooError(f"the input has no column {key!r}; the encoder reads "
                                  f"{', '.join(expected)}")

    def _check_range(self, flat: Tensor, feature: Tensor) -> None:
        limits = self.limits[feature]                                       # (l,)
        bad = (flat < PAD) | (flat >= limits)
        if torch.compiler.is_compiling():  # a traced graph cannot branch on values: assert
            torch._assert_async(~bad.any(), "sparse ids must be in -1 (padding) .. k_f - 1")
        elif bad.any():
            row, column = bad.nonzero()[0].tolist()
            index = int(feature[column])
            raise MtlzooError(
                f"sparse feature {self.names[index]!r}: id {flat[row, column].item()} is "
                f"outside 0..{self.num_ids[index] - 1} (pad with {PAD})"
            )

    def _index(self, name: str) -> int:
        if name not in self.names:
            raise MtlzooError(f"unknown sparse feature {name!r}.{suggest(str(name), self.names)}")
        return self.names.index(name)

    def _poolings(self, pooling: str | Mapping[str, str]) -> list[str]:
        if isinstance(pooling, str):
            return [_checks.choice("pooling", pooling, POOLINGS)] * len(self.names)
        _checks.mapping("pooling", pooling, "'sum', 'mean' or a dict feature -> pooling")
        for name in pooling:
            if name not in self.names:
                raise MtlzooError(f"pooling names unknown sparse feature {name!r}."
                                  f"{suggest(str(name), self.names)}")
        return [_checks.choice(f"pooling[{name!r}]", pooling.get(name, "sum"), POOLINGS)
                for name in self.names]


def _collection(names, num_ids, embedding_dim, poolings, weight: Tensor) -> nn.Module:
    """An ``EmbeddingBagCollection``, table f holding rows ``sum(k[:f]) ..`` of ``weight``."""
    try:
        from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType
    except ImportError as error:
        raise MtlzooError(f"backend='torchrec' needs TorchRec: {TORCHREC_INSTALL} "
                          f"({error})") from None
    starts = [sum(num_ids[:index]) for index in range(len(names))]

    def init(start: int, rows: int):
        def fill(table: Tensor) -> None:
            with torch.no_grad():
                table.copy_(weight[start: start + rows])
        return fill

    tables = [EmbeddingBagConfig(
        name=name, feature_names=[name], num_embeddings=rows, embedding_dim=embedding_dim,
        pooling=PoolingType.MEAN if pooling == "mean" else PoolingType.SUM,
        init_fn=init(start, rows))
        for name, rows, pooling, start in zip(names, num_ids, poolings, starts, strict=True)]
    with torch.random.fork_rng(devices=[]):  # its own draws are overwritten: keep the seed's
        collection = EmbeddingBagCollection(tables=tables, device=weight.device)
    for table in tables:  # drop the copy of the weights; a reset draws N(0, 1) as torch's
        table.init_fn = nn.init.normal_
    return collection
