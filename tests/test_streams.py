"""Streaming training data (``datasets.IterableDataset`` over parquet files the tests write):
every row once a pass, windows shuffled from the seed, exact resume from a saved position,
in one process and on 2 ranks (killed and resumed), and the options a stream refuses."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import mtlzoo
from mtlzoo import MtlzooError, Task
from mtlzoo.data.streams import StreamBatches
from tests.test_distributed import dies_after, spawn

FILE_ROWS = (70, 45, 58, 33)  # uneven: on 2 ranks the shares end at different steps
BATCH = 8


def write_parquet(folder: Path, file_rows=FILE_ROWS) -> list[str]:
    """Files of rows ``x`` (6 floats), labels ``a`` (binary) and ``c`` (regression), and
    ``row``, a number unique over the files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, rows in enumerate(file_rows):
        g = np.random.default_rng(number)
        x = g.standard_normal((rows, 6)).astype("float32")
        table = pa.table({
            "x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 6),
            "a": (x[:, 0] > 0).astype("int64"),
            "c": (x[:, 1] + 0.1 * g.standard_normal(rows)).astype("float32"),
            "row": np.arange(rows) + 1000 * number,
        })
        path = folder / f"part{number}.parquet"
        pq.write_table(table, path, row_group_size=16)
        paths.append(str(path))
    return paths


def stream(paths: list[str]):
    import datasets

    return datasets.load_dataset("parquet", data_files=paths, split="train", streaming=True)


def all_rows(file_rows=FILE_ROWS) -> list[int]:
    return sorted(1000 * number + i for number, rows in enumerate(file_rows)
                  for i in range(rows))


def rows_of(batches) -> list[int]:
    return [int(r) for batch in batches for r in batch["row"]]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[str]:
    return write_parquet(tmp_path_factory.mktemp("stream"))


# --- the source ----------------------------------------------------------------------------


def test_a_pass_reads_every_row_once_in_windows_shuffled_from_the_seed(files):
    source = StreamBatches(stream(files), BATCH, True, 3, "the stream", window_batches=3)
    first, again, second = (rows_of(source.passes(p)) for p in (0, 0, 1))
    assert sorted(first) == all_rows() and sorted(second) == all_rows()
    assert first == again and first != second
    window = 3 * BATCH  # a window's rows are the next rows of the files, shuffled
    assert sorted(first[:window]) == list(range(window))
    assert first[:window] != list(range(window))
    unshuffled = StreamBatches(stream(files), BATCH, False, 3, "the stream")
    assert rows_of(unshuffled.passes(0)) == all_rows()
    with pytest.raises(MtlzooError, match="is a stream"):
        len(source)


def test_every_position_resumes_the_rest_of_the_pass(files):
    whole = rows_of(StreamBatches(stream(files), BATCH, True, 3, "s", window_batches=4)
                    .passes(2))
    source = StreamBatches(stream(files), BATCH, True, 3, "s", window_batches=4)
    positions = [source.position for _ in source.passes(2)]
    for taken, position in enumerate(positions, start=1):
        fresh = StreamBatches(stream(files), BATCH, True, 3, "s", window_batches=4)
        rest = rows_of(fresh.passes(2, taken, position))
        assert whole[:len(whole) - len(rest)] + rest == whole, taken
        assert len(whole) - len(rest) == min(taken * BATCH, len(whole))
    with pytest.raises(MtlzooError, match="of pass 2, not 3"):
        next(fresh.passes(3, 1, positions[0]))
    with pytest.raises(MtlzooError, match="needs the position"):
        next(fresh.passes(2, 1))


# --- the trainer ---------------------------------------------------------------------------


def trainer(**options) -> mtlzoo.Trainer:
    torch.manual_seed(0)
    model = mtlzoo.create_model("mmoe", in_features=6,
                                tasks=[Task("a"), Task("c", kind="regression")],
                                num_experts=2, expert_dims=(8,), tower_dims=(4,))
    options = {"batch_size": BATCH, "seed": 1, "progress": False, "lr": 1e-2,
               "stream_window": 3, **options}
    return mtlzoo.Trainer(model, **options)


def state(run: mtlzoo.Trainer) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in run.model.state_dict().items()}


def test_a_stream_trains_by_epochs_and_steps_and_resumes_exactly(files, tmp_path):
    whole = trainer()
    whole.fit(stream(files), epochs=2)
    per_epoch = -(-sum(FILE_ROWS) // BATCH)  # every window but the last is whole batches
    assert whole.step == 2 * per_epoch
    for stop in (5, per_epoch + 4):  # mid-window of the first and of the second epoch
        path = tmp_path / f"at{stop}.pt"
        trainer().fit(stream(files), steps=stop, checkpoint=path)
        resumed = trainer()
        resumed.load(path)
        resumed.fit(stream(files), epochs=2)
        for key, value in state(whole).items():
            assert torch.equal(resumed.model.state_dict()[key], value), (stop, key)
    metrics = whole.evaluate(stream(files))
    assert metrics.loc["a", "rows"] == sum(FILE_ROWS)


def test_an_epoch_line_of_a_stream_has_no_time_left(files, capsys):
    trainer(progress=True).fit(stream(files), epochs=1)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("epoch 1/1 steps") and line.endswith("left ?"), line


@pytest.mark.parametrize(("options", "fit", "message"), [
    ({"batching": "by_length"}, {"epochs": 1}, "batching='by_length' needs every row"),
    ({"lr_schedule": "cosine"}, {"epochs": 1}, "train it with steps="),
    ({"stream_window": 0}, None, "stream_window"),
])
def test_what_a_stream_refuses(files, options, fit, message):
    with pytest.raises(MtlzooError, match=message):
        trainer(**options).fit(stream(files), **(fit or {"epochs": 1}))


def test_a_cosine_lr_runs_over_the_steps_of_a_stream(files):
    run = trainer(lr_schedule="cosine")
    run.fit(stream(files), steps=4)
    assert run.step == 4


def test_one_dataset_per_task_refuses_a_stream(files):
    per_task = {"a": stream(files), "c": {"x": torch.randn(20, 6), "label": torch.randn(20)}}
    with pytest.raises(MtlzooError, match=r"task\(s\) \['a'\] has no known length"):
        trainer().fit(per_task, epochs=1)


# --- torch iterables of unknown length -----------------------------------------------------


class Rows(torch.utils.data.IterableDataset):
    """``rows`` dict rows like the parquet files' (no len()); under DDP the rows of this
    rank's share: rank r of N yields rows r, r + N, ... of the first ``rows`` (uneven)."""

    def __init__(self, rows: int, per_rank: dict[int, int] | None = None) -> None:
        self.rows, self.per_rank = rows, per_rank

    def __iter__(self):
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_initialized() else 0
        count = self.rows if self.per_rank is None else self.per_rank[rank]
        g = torch.Generator().manual_seed(rank)
        for i in range(count):
            x = torch.randn(6, generator=g)
            yield {"x": x, "a": int(x[0] > 0), "c": float(x[1]), "row": 1000 * rank + i}


class Stateful(torch.utils.data.DataLoader):
    """A DataLoader over ``Rows`` that saves and restores its position (as torchdata's
    ``StatefulDataLoader`` does), counting its restores."""

    def __init__(self, rows: Rows) -> None:
        super().__init__(rows, batch_size=BATCH)
        self.taken, self.restores = 0, 0

    def __iter__(self):
        iterator = super().__iter__()
        for _ in range(self.taken):
            next(iterator)
        for batch in iterator:
            self.taken += 1
            yield batch
        self.taken = 0

    def state_dict(self) -> dict:
        return {"taken": self.taken}

    def load_state_dict(self, state: dict) -> None:
        self.taken, self.restores = state["taken"], self.restores + 1


@pytest.mark.parametrize("make", [lambda: Rows(70),  # rows: the trainer batches them
                                  lambda: torch.utils.data.DataLoader(Rows(70), BATCH),
                                  lambda: Stateful(Rows(70))])
def test_a_torch_iterable_without_len_trains_by_epochs_and_resumes_exactly(make, tmp_path):
    whole = trainer()
    whole.fit(make(), epochs=2)
    assert whole.step == 2 * -(-70 // BATCH)
    trainer().fit(make(), steps=12, checkpoint=tmp_path / "run.pt")  # mid-epoch 2
    resumed, data = trainer(), make()
    resumed.load(tmp_path / "run.pt")
    resumed.fit(data, epochs=2)
    for key, value in state(whole).items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    if isinstance(data, Stateful):  # restored from its state, not replayed
        assert data.restores == 1
    with pytest.raises(MtlzooError, match="train it with steps="):
        trainer(lr_schedule="cosine").fit(make(), epochs=1)


# --- 2 ranks -------------------------------------------------------------------------------

KILL_AT = 7  # of about 14 steps an epoch: each rank's files are 2 of the 4


def _two_ranks(rank: int, folder: Path, mode: str) -> dict:
    paths = sorted(str(p) for p in (folder.parent / "files").glob("*.parquet"))
    run = trainer()
    checkpoint = folder.parent / "run.pt"
    if mode == "killed":
        dies_after(run, KILL_AT)
        run.fit(stream(paths), epochs=2, checkpoint=checkpoint, checkpoint_every=3)
    if mode == "resumed":
        run.load(checkpoint)
        assert run.step == 6, run.step
    run.fit(stream(paths), epochs=2)
    found = {"model": state(run), "steps": run.step}
    if mode == "whole":  # a share of 3 files on 2 ranks: read by both, every row once
        three = sorted(str(p) for p in (folder.parent / "three").glob("*.parquet"))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            source = run._source(stream(three), "three files", shuffle=True)
        found["warning"] = [str(w.message) for w in caught]
        found["rows"] = rows_of(source.passes(0))
        found["eval"] = run.evaluate(stream(paths)).to_dict("index")
        # a loader over an IterableDataset that yields each rank's share, 30 and 50 rows
        shares = Rows(0, per_rank={0: 30, 1: 50})
        loader = torch.utils.data.DataLoader(shares, batch_size=BATCH)
        found["loader rows"] = rows_of(run._source(loader, "shares", shuffle=True).passes(0))
        loaded = trainer()
        loaded.fit(torch.utils.data.DataLoader(shares, batch_size=BATCH), epochs=1)
        found["loader steps"] = loaded.step
        try:
            trainer().fit(torch.utils.data.DataLoader(list(range(4))), epochs=1)
        except MtlzooError as error:
            found["map-style refused"] = str(error)
    return found


def _whole(rank, folder):
    return _two_ranks(rank, folder, "whole")


def _killed(rank, folder):
    return _two_ranks(rank, folder, "killed")


def _resumed(rank, folder):
    return _two_ranks(rank, folder, "resumed")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("stream_ranks")
    write_parquet(base / "files")
    write_parquet(base / "three", FILE_ROWS[:3])
    whole = spawn(_whole, base / "whole")
    spawn(_killed, base / "killed", killed=True)
    return {"whole": whole, "resumed": spawn(_resumed, base / "resumed")}


def test_two_ranks_read_their_own_files_and_resume_a_killed_run_exactly(two_ranks):
    whole, resumed = two_ranks["whole"], two_ranks["resumed"]
    for rank in (0, 1):
        assert resumed[rank]["steps"] == whole[rank]["steps"] == whole[0]["steps"]
        for key, value in whole[0]["model"].items():
            assert torch.equal(whole[rank]["model"][key], value), key  # the ranks agree
            assert torch.equal(resumed[rank]["model"][key], value), (rank, key)
    # uneven shares: the longer one's steps, the shorter rank taking empty batches
    assert whole[0]["steps"] == 2 * -(-max(70 + 58, 45 + 33) // BATCH)  # files 0, 2 and 1, 3
    assert whole[0]["eval"]["a"]["rows"] == sum(FILE_ROWS)


def test_two_ranks_read_a_loader_of_their_own_shares_to_the_longest(two_ranks):
    whole = two_ranks["whole"]
    seen = whole[0]["loader rows"] + whole[1]["loader rows"]
    assert sorted(seen) == [*range(30), *range(1000, 1050)]
    assert whole[0]["loader steps"] == whole[1]["loader steps"] == -(-50 // BATCH)
    assert "over an IterableDataset that yields each rank's share" in \
        whole[0]["map-style refused"]


def test_two_ranks_on_three_files_each_read_every_file_and_keep_their_rows(two_ranks):
    whole = two_ranks["whole"]
    assert "3 file(s) (shards) for 2 ranks" in " ".join(whole[0]["warning"])
    seen = whole[0]["rows"] + whole[1]["rows"]
    assert sorted(seen) == all_rows(FILE_ROWS[:3])
