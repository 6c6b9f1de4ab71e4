"""The fast data path: a ``datasets.Dataset``'s numeric columns read straight from Arrow
(``mtlzoo.data.batches.ArrowColumns``), batches equal to its torch format's; and the
benchmark script (``benchmarks/data_path.py``) at a tiny size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mtlzoo
from mtlzoo.data import batches as batches_module
from mtlzoo.data.batches import ArrowColumns, arrow_tensor, as_batches, take

datasets = pytest.importorskip("datasets")

ROWS = 60
NUMERIC = ["x", "ids", "u16", "flag", "flags", "half"]  # read as tensors
OTHER = ["text", "ragged", "holes"]  # through the torch format


def columns() -> dict[str, object]:
    rng = np.random.default_rng(0)
    return {
        "x": rng.standard_normal((ROWS, 5)),  # float64 lists: float32 tensors
        "ids": rng.integers(0, 9, (ROWS, 7)).astype(np.int32),
        "u16": rng.integers(0, 9, ROWS).astype(np.uint16),
        "flag": rng.random(ROWS) > 0.5,
        "flags": [[bool(i % 2), i % 3 == 0] for i in range(ROWS)],
        "half": rng.standard_normal(ROWS).astype(np.float16),
        "text": [f"row {i}" for i in range(ROWS)],
        "ragged": [[1] * (i % 3) for i in range(ROWS)],
        "holes": [None if i % 7 == 0 else float(i) for i in range(ROWS)],
    }


def variants() -> dict[str, object]:
    plain = datasets.Dataset.from_dict(columns())
    chunked = plain.map(lambda b: b, batched=True, batch_size=16)  # 4 Arrow chunks
    return {"plain": plain, "shuffled": plain.shuffle(seed=1),
            "selected": plain.select(range(ROWS - 1, 5, -3)), "chunked": chunked,
            "chunked, shuffled": chunked.shuffle(seed=2)}


def assert_same_batch(got: dict, expected: dict) -> None:
    assert list(got) == list(expected)
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert isinstance(got[key], torch.Tensor), key
            assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
            torch.testing.assert_close(got[key], value, rtol=0, atol=0, equal_nan=True)
        else:
            assert type(got[key]) is type(value), key
            assert len(got[key]) == len(value), key


@pytest.mark.parametrize("variant", list(variants()))
def test_a_batch_equals_the_torch_format_s_and_numbers_are_read_as_tensors(variant):
    dataset = variants()[variant]
    read = ArrowColumns(dataset)
    assert sorted(read.tensors) == sorted(NUMERIC)
    assert read.rest is not None and read.rest.format["columns"] == OTHER
    reference = dataset.with_format("torch")
    for index in (torch.tensor([3, 0, 5, 2]), torch.randperm(len(dataset))[:17]):
        assert_same_batch(read.fetch(index), reference[index.tolist()])


def test_an_indices_mapping_is_read_through_not_gathered():
    plain = datasets.Dataset.from_dict(columns())
    read = ArrowColumns(plain.shuffle(seed=1))
    assert read.mapping is not None and len(read.tensors["x"][0]) == ROWS
    # one Arrow chunk: the tensor is the Arrow buffer itself, nothing copied
    values = plain.data.table.column("ids").chunk(0).flatten()
    assert read.tensors["ids"][0].data_ptr() == values.buffers()[1].address


def test_copies_past_the_budget_go_through_the_torch_format(monkeypatch):
    chunked = variants()["chunked"]
    monkeypatch.setattr(batches_module, "MATERIALIZE_BYTES", 0)
    read = ArrowColumns(chunked)
    assert read.tensors == {}  # every column chunked: each would be copied
    index = torch.tensor([7, 1, 40])
    assert_same_batch(read.fetch(index), chunked.with_format("torch")[index.tolist()])
    single = ArrowColumns(datasets.Dataset.from_dict(columns()))  # one chunk: no copy
    # bools are bit-packed and uint16 has no torch dtype: both would be copied
    assert sorted(single.tensors) == ["half", "ids", "x"]


def test_an_arrow_column_converts_as_the_torch_format_does():
    table = datasets.Dataset.from_dict(columns()).with_format("arrow")[:]
    reference = datasets.Dataset.from_dict(columns()).with_format("torch")[:]
    for name in table.column_names:
        for column in (table.column(name), table.column(name).combine_chunks()):
            got = arrow_tensor(column)
            if name in OTHER:
                assert got is None, name
            else:
                assert got.dtype == reference[name].dtype, name
                assert torch.equal(got, reference[name]), name


@pytest.mark.parametrize("shape, dtype", [((50, 3), torch.float32), ((50,), torch.int64),
                                          ((50, 2, 2), torch.bool)])
def test_take_is_indexing(shape, dtype):
    tensor = (torch.randn(shape) > 0).to(dtype) if dtype == torch.bool else \
        torch.randn(shape).to(dtype)
    rows = torch.tensor([4, 4, 0, 49, 17])
    assert torch.equal(take(tensor, rows), tensor[rows])


def numeric_data(rows: int = 200) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 6, generator=g)
    return {"x": x, "a": (x[:, 0] > 0).float(), "b": x[:, 1:4].argmax(dim=1)}


def trained(data, **options) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    tasks = [mtlzoo.Task("a"), mtlzoo.Task("b", kind="multiclass", num_classes=3)]
    model = mtlzoo.create_model("mmoe", in_features=6, tasks=tasks, num_experts=3,
                                expert_dims=(5,), tower_dims=(4,))
    mtlzoo.Trainer(model, batch_size=32, progress=False, seed=3, **options).fit(data, epochs=2)
    return model.state_dict()


def test_training_on_a_dataset_takes_the_steps_of_its_tensors(monkeypatch):
    data = numeric_data()
    dataset = datasets.Dataset.from_dict({k: v.numpy() for k, v in data.items()})
    reversed_rows = {k: v.flip(0) for k, v in data.items()}

    def no_formatting(*args, **kwargs):
        raise AssertionError("a numeric dataset's rows went through the torch format")

    expected, expected_reversed = trained(data), trained(reversed_rows)
    monkeypatch.setattr(datasets.Dataset, "__getitem__", no_formatting)
    monkeypatch.setattr(datasets.Dataset, "__getitems__", no_formatting)
    for got, want in [(trained(dataset), expected),
                      (trained(dataset.select(range(len(data["x"]) - 1, -1, -1))),
                       expected_reversed)]:
        for key, value in want.items():
            assert torch.equal(got[key], value), key


def test_a_dataset_shards_over_ranks_as_its_tensors_do():
    data = numeric_data(50)
    dataset = datasets.Dataset.from_dict({k: v.numpy() for k, v in data.items()})
    for rank in range(3):
        from_dataset = list(as_batches(dataset, "d", 8, True, 4, rank=rank, world=3).passes(1))
        from_tensors = list(as_batches(data, "d", 8, True, 4, rank=rank, world=3).passes(1))
        assert len(from_dataset) == len(from_tensors) == 3
        for got, want in zip(from_dataset, from_tensors, strict=True):
            assert_same_batch(got, want)


# --- the benchmark --------------------------------------------------------------------------


def test_the_script_writes_every_side_with_its_ratio_and_overhead(tmp_path, monkeypatch, capsys):
    pd = pytest.importorskip("pandas")
    from mtlzoo.bench import data_path
    from tests.test_bench import script

    # each "fresh process" runs here, at a tiny size
    monkeypatch.setattr(data_path, "in_fresh_process", lambda function, *args: function(*args))
    monkeypatch.setattr(data_path, "BATCH", 64)
    argv = ["--processes", "1", "--rounds", "1", "--rows", "300", "--threads", "1",
            "--out", str(tmp_path)]
    code = script("data_path").main(argv)
    table = pd.read_csv(tmp_path / "data_path_1thread.csv")
    assert list(table.columns) == ["side", "rows_per_s", "ratio", "ratio_min", "ratio_max",
                                   "ms_per_step", "data_pct", "loop_pct", "step_extra_pct",
                                   "overhead_pct", "target"]
    sides = [data_path.BARE, data_path.DICT, data_path.DATASET]
    assert table.side.tolist() == sides + ([data_path.STREAM] if data_path.has_streams() else [])
    assert table.ratio[0] == 1 and (table.rows_per_s > 0).all() and (table.ratio > 0).all()
    assert table.data_pct[1:].notna().all() and table.data_pct[1:].ge(0).all()
    assert table.target.tolist()[1:3] == [0.9, 0.8]
    runs = pd.read_csv(tmp_path / "data_path_1thread_runs.csv")
    assert len(runs) == len(table) and set(runs.process) == {1}
    text = (tmp_path / "data_path_1thread.md").read_text()
    assert "--rows 300" in text and "Load average" in text and text in capsys.readouterr().out
    checks = [line for line in text.splitlines() if line.startswith("* ")]
    assert len(checks) == 3
    assert code == (1 if any("MISSED" in line for line in checks) else 0)
