"""``Trainer(batching="by_length")``: rows sorted by length within shuffled windows, each
batch trimmed to its longest row; every row once a pass, replayable from the seed alone."""

from __future__ import annotations

import pytest
import torch

import mtlzoo
from mtlzoo import MtlzooError, Task, Trainer
from mtlzoo.data import batches as batches_module
from mtlzoo.encoders import TextEncoder
from tests.test_faults_training import no_hang  # noqa: F401  (a fixture)

WIDTH = 40  # the padded length of every row
TASKS = [Task("sentiment"), Task("topic", kind="multiclass", num_classes=4)]


def token_rows(rows: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Token ids (rows, WIDTH) right-padded with 0, skewed lengths (4 in 5 rows 1-8 ids
    long, the rest 20-40), a ``row`` number and labels for both tasks."""
    g = torch.Generator().manual_seed(seed)
    short = torch.rand(rows, generator=g) < 0.8
    lengths = torch.where(short, torch.randint(1, 9, (rows,), generator=g),
                          torch.randint(20, WIDTH + 1, (rows,), generator=g))
    ids = torch.randint(1, 50, (rows, WIDTH), generator=g)
    ids[torch.arange(WIDTH) >= lengths[:, None]] = 0
    return {"input_ids": ids, "row": torch.arange(rows),
            "sentiment": (ids[:, 0] % 2).long(), "topic": ids[:, 1] % 4}


def joint(rows: int = 230) -> dict[str, torch.Tensor]:
    return token_rows(rows)


def per_task(rows: tuple[int, int] = (150, 230)) -> dict[str, dict[str, torch.Tensor]]:
    a, b = token_rows(rows[0], seed=1), token_rows(rows[1], seed=2)
    return {"sentiment": {"input_ids": a["input_ids"], "row": a["row"], "label": a["sentiment"]},
            "topic": {"input_ids": b["input_ids"], "row": b["row"], "label": b["topic"]}}


REGIMES = {"joint": joint, "per_task": per_task}


def model() -> mtlzoo.MultiTaskModel:
    torch.manual_seed(0)
    encoder = TextEncoder(vocab_size=50, embedding_dim=8, hidden_size=8)
    return mtlzoo.create_model("shared_bottom", tasks=TASKS, encoder=encoder,
                               bottom_dims=(8,), tower_dims=())


def trainer(**options) -> Trainer:
    options = {"lr": 1e-2, "batch_size": 16, "input_key": "input_ids", "progress": False,
               "batching": "by_length", **options}
    return Trainer(model(), **options)


def seen(t: Trainer, data, epochs: int = 1) -> list[list[tuple[str | None, dict]]]:
    """The batches each epoch of ``t.fit(data)`` would train on, per step ``(task, batch)``
    (nothing is trained)."""
    steps: list[tuple[int, list]] = []
    t._step = lambda batches, number: steps.append((t.epoch, list(batches.items()))) or {}
    t.fit(data, epochs=epochs)
    return [[pair for epoch, pairs in steps if epoch == e for pair in pairs]
            for e in range(epochs)]


def lengths(ids: torch.Tensor) -> torch.Tensor:
    return (ids != 0).sum(dim=1)


def padding_fraction(batches: list[tuple[str | None, dict]]) -> float:
    cells = sum(batch["input_ids"].numel() for _, batch in batches)
    return 1 - sum(int(lengths(batch["input_ids"]).sum()) for _, batch in batches) / cells


# --- options -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["sorted", "", None, True])
def test_the_option_is_checked_naming_the_value_and_the_choices(value):
    with pytest.raises(MtlzooError, match=rf"batching.*'shuffle' or 'by_length'.*{value!r}"):
        trainer(batching=value)


def test_by_length_needs_one_input_column():
    with pytest.raises(MtlzooError, match=r"by_length.*input_key"):
        trainer(input_key=("input_ids", "row"))


# --- the batches of a pass -----------------------------------------------------------------


@pytest.mark.parametrize("regime", REGIMES)
def test_every_row_once_a_pass_in_batches_of_the_right_size(regime, monkeypatch):
    monkeypatch.setattr(batches_module, "WINDOW_BATCHES", 3)  # several windows a pass
    data = REGIMES[regime]()
    for epoch in seen(trainer(), data, epochs=2):
        by_task: dict = {}
        for task, batch in epoch:
            by_task.setdefault(task, []).append(batch["row"])
        for task, rows in by_task.items():  # the shorter task begins a second pass
            total = len((data if task is None else data[task])["row"])
            rows = rows[: -(-total // 16)]
            assert torch.equal(torch.cat(rows).sort().values, torch.arange(total))
            sizes = sorted((len(r) for r in rows), reverse=True)
            assert sizes == [16] * (total // 16) + ([total % 16] if total % 16 else [])


@pytest.mark.parametrize("regime", REGIMES)
def test_each_batch_is_trimmed_to_its_longest_row(regime):
    data = REGIMES[regime]()
    widths = []
    for task, batch in seen(trainer(), data)[0]:
        source = data if task is None else data[task]
        full = source["input_ids"][batch["row"]]
        widths.append(batch["input_ids"].shape[1])
        assert widths[-1] == int(lengths(full).max())
        assert torch.equal(batch["input_ids"], full[:, : widths[-1]])
        assert torch.equal(batch["sentiment" if task is None else "label"],
                           source["sentiment" if task is None else "label"][batch["row"]])
    assert min(widths) <= 8


def test_sorting_within_windows_cuts_the_padding():
    data = joint(1_600)  # 100 batches: two windows
    shuffled = padding_fraction(seen(trainer(batching="shuffle"), data)[0])
    by_length = padding_fraction(seen(trainer(), data)[0])
    assert shuffled > 0.7 and by_length < 0.25


def test_the_batch_order_changes_every_epoch_and_repeats_from_the_seed():
    def rows(seed: int) -> list[list[list[int]]]:
        return [[batch["row"].tolist() for _, batch in epoch]
                for epoch in seen(trainer(seed=seed), joint(1_600), epochs=2)]

    first, again, other = rows(1), rows(1), rows(2)
    assert first == again and first != other and first[0] != first[1]
    ids = joint(1_600)["input_ids"]
    longest = [int(lengths(ids[rows]).max()) for rows in first[0]]
    assert longest != sorted(longest)  # a pass does not run short-to-long


@pytest.mark.parametrize("regime", REGIMES)
def test_shuffle_is_the_default_and_gives_the_batches_it_always_gave(regime):
    data = REGIMES[regime]()
    t = Trainer(model(), batch_size=16, input_key="input_ids", seed=5, progress=False)
    assert t.options.batching == "shuffle"
    batches = seen(t, data)[0]
    for index, name in enumerate(t.tasks if regime == "per_task" else [None]):
        rows = len((data if name is None else data[name])["row"])
        seed = 5 + 7919 * index if name else 5
        order = torch.randperm(rows, generator=torch.Generator().manual_seed(seed * 1_000_003))
        got = [batch for task, batch in batches if task == name][: -(-rows // 16)]
        assert [b["row"].tolist() for b in got] == [i.tolist() for i in order.split(16)]
        assert all(b["input_ids"].shape[1] == WIDTH for b in got)


def test_a_dataset_reads_the_lengths_in_chunks_through_its_row_order(monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(batches_module, "LENGTH_CHUNK_ROWS", 7)
    data = joint()
    dataset = datasets.Dataset.from_dict({k: v.numpy() for k, v in data.items()})
    dataset = dataset.select(range(len(dataset) - 1, -1, -1))  # an indices mapping
    reversed_rows = {k: v.flip(0) for k, v in data.items()}
    from_dataset, from_tensors = seen(trainer(), dataset)[0], seen(trainer(), reversed_rows)[0]
    assert len(from_dataset) == len(from_tensors)
    for (_, a), (_, b) in zip(from_dataset, from_tensors, strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["row"], b["row"])


# --- evaluation ----------------------------------------------------------------------------


@pytest.mark.parametrize("regime", REGIMES)
def test_evaluation_sorts_and_trims_and_its_metrics_equal_shuffles(regime):
    data = REGIMES[regime]()
    t = trainer(batching="shuffle")
    t.fit(data, steps=3)
    by_length = Trainer(t.model, batch_size=16, input_key="input_ids", batching="by_length",
                        progress=False)
    widths = []
    forward = t.model.forward
    t.model.forward = lambda x, tasks=None: widths.append(x.shape[1]) or forward(x, tasks)
    expected, got = t.evaluate(data), by_length.evaluate(data)
    assert all(width == WIDTH for width in widths[: len(widths) // 2])
    assert max(widths[len(widths) // 2:]) <= WIDTH and min(widths) < 10
    assert expected.index.tolist() == got.index.tolist()
    for column in expected.columns:
        torch.testing.assert_close(torch.tensor(got[column].to_numpy()),
                                   torch.tensor(expected[column].to_numpy()),
                                   rtol=1e-5, atol=1e-6, equal_nan=True)


# --- resuming ------------------------------------------------------------------------------


@pytest.mark.parametrize("regime", REGIMES)
def test_a_run_killed_mid_epoch_resumes_bit_identically(tmp_path, no_hang, regime):  # noqa: F811
    data = REGIMES[regime]()
    whole = trainer(seed=3)
    whole.fit(data, epochs=2)
    path = tmp_path / "run.pt"
    first = trainer(seed=3)
    step = first._step

    def dying_step(batches, number):
        if number == 23:  # after the checkpoint of step 20, 5 or 6 steps into epoch 2
            raise KeyboardInterrupt
        return step(batches, number)

    first._step = dying_step
    with pytest.raises(KeyboardInterrupt):
        first.fit(data, epochs=2, checkpoint=path, checkpoint_every=5)
    resumed = trainer(seed=3)
    resumed.load(path)
    assert resumed.step == 20 and resumed.state.mid_epoch
    resumed.fit(data, epochs=2)
    for (name, value), got in zip(whole.model.named_parameters(), resumed.model.parameters(),
                                  strict=True):
        assert torch.equal(got, value), name


@pytest.mark.parametrize(("before", "after"), [("by_length", "shuffle"),
                                               ("shuffle", "by_length")])
def test_a_mid_epoch_resume_with_other_batching_is_refused(tmp_path, no_hang,  # noqa: F811
                                                           before, after):
    path = tmp_path / "run.pt"
    trainer(batching=before).fit(joint(), steps=2, checkpoint=path)
    t = trainer(batching=after)
    t.load(path)
    with pytest.raises(MtlzooError, match=rf"batching '{before}' -> '{after}'"):
        t.fit(joint(), epochs=1)
    assert t.step == 2


def test_at_an_epoch_boundary_other_batching_is_taken_with_a_warning(tmp_path):
    path = tmp_path / "run.pt"
    trainer(batching="shuffle").fit(joint(), epochs=1, checkpoint=path)
    t = trainer()
    t.load(path)
    with pytest.warns(UserWarning, match="batching 'shuffle' -> 'by_length'"):
        t.fit(joint(), epochs=2)


# --- data it cannot batch by length --------------------------------------------------------


def test_a_data_loader_is_refused_for_training_and_evaluation():
    rows = joint(64)
    loader = torch.utils.data.DataLoader(
        [{k: v[i] for k, v in rows.items()} for i in range(64)], batch_size=16
    )
    message = r"by_length.*batches itself \(a datasets.Dataset or a dict of tensors\)"
    t = trainer()
    with pytest.raises(MtlzooError, match=message):
        t.fit(loader, epochs=1)
    with pytest.raises(MtlzooError, match=message):
        t.evaluate({"sentiment": loader, "topic": rows})
    assert t.step == 0


@pytest.mark.parametrize(
    "ids",
    [torch.rand(64, WIDTH), torch.randint(0, 50, (64,)), torch.randint(0, 50, (64, 4, 10)),
     torch.ones(64, WIDTH, dtype=torch.bool)],
    ids=["float", "1-D", "3-D", "bool"],
)
def test_an_input_that_is_not_2d_integer_ids_is_refused_before_training(ids):
    data = {**joint(64), "input_ids": ids}
    t = trainer()
    before = [p.detach().clone() for p in t.model.parameters()]
    with pytest.raises(MtlzooError, match=r"'input_ids'.*2-D integer"):
        t.fit(data, eval=joint(64), epochs=1)
    with pytest.raises(MtlzooError, match=r"'input_ids'.*2-D integer"):
        t.fit(joint(64), eval=data, epochs=1)  # the eval data too, before the first step
    assert t.step == 0
    assert all(torch.equal(a, b) for a, b in zip(before, t.model.parameters(), strict=True))


def test_a_missing_input_column_is_named():
    data = {key: value for key, value in joint(64).items() if key != "input_ids"}
    with pytest.raises(MtlzooError, match=r"'input_ids'.*columns"):
        trainer().fit(data, epochs=1)


# --- the benchmark -------------------------------------------------------------------------


def test_the_benchmark_script_writes_both_sides_tokens_per_second(tmp_path, monkeypatch,
                                                                  capsys):
    pd = pytest.importorskip("pandas")
    from mtlzoo.bench import text_batching
    from tests.test_bench import script

    for name, value in {"EMBEDDING": 8, "HIDDEN": 8, "BOTTOM": (8,), "MAX_LENGTH": 64}.items():
        monkeypatch.setattr(text_batching, name, value)
    # each "fresh process" runs here, so that the tiny model reaches it
    monkeypatch.setattr(text_batching, "in_fresh_process", lambda function, *args: function(*args))
    argv = ["--steps", "1", "--processes", "1", "--rows", "300", "--out", str(tmp_path)]
    assert script("text_batching").main(argv) == 0
    table = pd.read_csv(tmp_path / "text_batching.csv")
    assert list(zip(table.lstm, table.batching, strict=True)) == [
        ("packed", "shuffle"), ("packed", "by_length"), ("fused", "shuffle"),
        ("fused", "by_length")]
    assert (table.tokens_per_s > 0).all() and table.padding[1] < table.padding[0] / 2
    assert len(pd.read_csv(tmp_path / "text_batching_runs.csv")) == 4
    from mtlzoo.encoders import text as text_encoder
    from mtlzoo.reference import packed_final_states

    assert text_encoder.final_states is not packed_final_states  # the reference swapped back
    text = (tmp_path / "text_batching.md").read_text()
    assert "IMDb-like" in text and "--rows 300" in text and text in capsys.readouterr().out
