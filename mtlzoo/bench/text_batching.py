"""Training throughput of the text recipe's model with ``batching="shuffle"`` against
``"by_length"``, and of its BiLSTM as mtlzoo runs it (fused LSTM calls over the padded
batch, ``mtlzoo.encoders.text.final_states``) against the usual packed sequences
(``mtlzoo.reference.packed_final_states``): real (non-pad) tokens per second of training
steps.

The model is the text recipe's: ``TextEncoder`` (embedding 128, BiLSTM hidden 128),
``shared_bottom`` with ``bottom_dims=(128,)`` and no towers, a binary sentiment task and a
4-class topic task, one dataset per task, batch 64, Adam. The data are token ids of
realistic lengths (:func:`token_data`): IMDb-like reviews and AG-News-like headlines,
right-padded with 0 to 256. Each side trains a fixed number of steps in each of several
fresh processes (``speed.in_fresh_process``), the sides alternating; the table holds the
median over processes (``benchmarks/text_batching.py``).
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import pandas as pd
import torch

import mtlzoo
from mtlzoo.bench.report import RESULTS, markdown_report, stamp, write_result
from mtlzoo.bench.speed import SpeedResult, in_fresh_process
from mtlzoo.encoders import TextEncoder, text
from mtlzoo.reference import packed_final_states

MAX_LENGTH = 256
VOCAB = 20_000
EMBEDDING, HIDDEN, BOTTOM = 128, 128, (128,)  # the text recipe's model
# per task: log-normal word counts (median, mean) before the cut at MAX_LENGTH, classes
TEXTS = {"sentiment": (175.0, 230.0, 2), "topic": (38.0, 39.0, 4)}
BATCHINGS = ("shuffle", "by_length")
LSTMS = ("packed", "fused")  # the reference, ours
SIDES = [(lstm, batching) for lstm in LSTMS for batching in BATCHINGS]


def token_data(rows: int, median: float, mean: float, classes: int, seed: int
               ) -> dict[str, torch.Tensor]:
    """``rows`` texts of random ids in ``1 .. VOCAB - 1`` whose lengths are log-normal with
    this ``median`` and ``mean``, cut to ``1 .. MAX_LENGTH``: ``input_ids`` (rows,
    MAX_LENGTH) right-padded with 0, a random ``label`` in ``0 .. classes - 1``."""
    g = torch.Generator().manual_seed(seed)
    mu, sigma = torch.tensor(median).log(), (2 * torch.tensor(mean / median).log()).sqrt()
    lengths = (mu + sigma * torch.randn(rows, generator=g)).exp().round()
    lengths = lengths.clamp(1, MAX_LENGTH).long()
    ids = torch.randint(1, VOCAB, (rows, MAX_LENGTH), generator=g, dtype=torch.int32)
    ids[torch.arange(MAX_LENGTH) >= lengths[:, None]] = 0
    return {"input_ids": ids, "label": torch.randint(0, classes, (rows,), generator=g)}


def recipe_data(rows: int) -> dict[str, dict[str, torch.Tensor]]:
    """Per-task data: IMDb-like reviews for ``sentiment``, headlines for ``topic``."""
    return {task: token_data(rows, *TEXTS[task], seed=i) for i, task in enumerate(TEXTS)}


def time_side(lstm: str, batching: str, steps: int, rows: int, threads: int,
              warmup: int = 3) -> dict:
    """Train the recipe's model ``warmup + steps`` steps with ``batching`` on ``threads``
    threads, its BiLSTM run ``lstm`` (``"fused"``, mtlzoo's, or ``"packed"``, the
    reference, swapped in for this process); the real tokens per second over the last
    ``steps`` (the data fetched and trimmed, forward, backward, Adam), the mean real tokens
    per step and the fraction of padding in the batches."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    tasks = [mtlzoo.Task("sentiment"), mtlzoo.Task("topic", kind="multiclass", num_classes=4)]
    encoder = TextEncoder(VOCAB, embedding_dim=EMBEDDING, hidden_size=HIDDEN)
    model = mtlzoo.create_model("shared_bottom", tasks=tasks, encoder=encoder,
                                bottom_dims=BOTTOM, tower_dims=())
    trainer = mtlzoo.Trainer(model, batch_size=64, input_key="input_ids", batching=batching,
                             progress=False)
    step, ends, tokens, cells = trainer._step, [], [], []

    def timed_step(batches, number):
        result = step(batches, number)
        ends.append(time.perf_counter())
        ids = [batch["input_ids"] for batch in batches.values()]
        tokens.append(sum(int((i != 0).sum()) for i in ids))
        cells.append(sum(i.numel() for i in ids))
        return result

    trainer._step = timed_step
    reference = (mock.patch.object(text, "final_states", packed_final_states)
                 if lstm == "packed" else contextlib.nullcontext())
    with reference:
        trainer.fit(recipe_data(rows), steps=warmup + steps)
    seconds = ends[-1] - ends[warmup - 1]
    timed_tokens, timed_cells = sum(tokens[warmup:]), sum(cells[warmup:])
    return {"lstm": lstm, "batching": batching, "tokens_per_s": timed_tokens / seconds,
            "ms_per_step": 1000 * seconds / steps, "tokens_per_step": timed_tokens / steps,
            "padding": 1 - timed_tokens / timed_cells}


def benchmark(out: Path = RESULTS, steps: int = 20, processes: int = 3, rows: int = 25_000,
              threads: int | None = None, command: str | None = None) -> SpeedResult:
    """Each of ``processes`` rounds times both sides in fresh processes (the order
    alternating between rounds) on ``threads`` threads (default torch's); written to
    ``out/text_batching{.md,.csv,_runs.csv}``. On a machine shared with other work, one
    thread is the steadier measure: two threads wait on each other whenever one is
    preempted."""
    command = command or f"mtlzoo.bench.text_batching.benchmark(steps={steps})"
    if threads is not None:
        torch.set_num_threads(threads)  # here too, for the stamp
    threads = torch.get_num_threads()
    runs = []
    for i in range(processes):
        for lstm, batching in SIDES if i % 2 == 0 else SIDES[::-1]:
            print(f"round {i + 1}/{processes}: {lstm} LSTM, {batching}", file=sys.stderr)
            runs.append({"process": i + 1, **in_fresh_process(time_side, lstm, batching, steps,
                                                            rows, threads)})
    runs = pd.DataFrame(runs)
    table = runs.groupby(["lstm", "batching"], sort=False)[
        ["tokens_per_s", "ms_per_step", "tokens_per_step", "padding"]
    ].median().reindex(pd.MultiIndex.from_tuples(SIDES)).rename_axis(
        ["lstm", "batching"]).reset_index()
    per_round = runs.pivot(index="process", columns=["lstm", "batching"],
                           values="tokens_per_s")
    ratios = per_round[SIDES[-1]] / per_round[SIDES[0]]
    table["speedup"] = table.tokens_per_s / table.tokens_per_s.iloc[0]
    stats = _length_stats(rows)
    about = [
        f"Training throughput of the text recipe's model: TextEncoder (embedding {EMBEDDING}, "
        f"BiLSTM hidden {HIDDEN}), `shared_bottom` with bottom_dims={BOTTOM}, tower_dims=(), tasks "
        "sentiment (binary) and topic (4 classes), one dataset per task (round robin: a "
        "sentiment and a topic batch every step), batch 64, Adam.",
        f"Data: {rows:,} texts per task of random ids in a {VOCAB:,}-word vocabulary, "
        f"right-padded with 0 to {MAX_LENGTH}. Lengths are seeded log-normals: IMDb-like "
        f"reviews, long-tailed, median {TEXTS['sentiment'][0]:.0f} and mean "
        f"{TEXTS['sentiment'][1]:.0f} words before the cut at {MAX_LENGTH} ({stats}), and "
        f"AG-News-like headlines of about 30-50 words.",
        f"`tokens_per_s`: real (non-pad) tokens trained per second over {steps} steps after "
        "3 warm-up steps (fetching and trimming the batches, forward, backward, Adam), the "
        f"median over {processes} fresh processes per side, the sides alternating; "
        "`padding`: the fraction of the batches' cells that are padding. `lstm`: `packed`, "
        "the BiLSTM through packed sequences (`mtlzoo.reference.packed_final_states`, the "
        "usual way), or `fused`, mtlzoo's (`mtlzoo.encoders.text.final_states`: fused LSTM "
        "calls over the padded batch, the same outputs). `speedup`: tokens/s over the packed "
        "LSTM with shuffled batches; for the fused LSTM with by_length batches it ranged "
        f"{ratios.min():.2f}-{ratios.max():.2f}x per round.",
    ]
    speed = table.set_index(["lstm", "batching"]).tokens_per_s
    packed, fused = speed["packed"], speed["fused"]
    after = [
        f"* `batching=\"by_length\"`: {packed['by_length'] / packed['shuffle']:.2f}x the real "
        f"tokens/s of `\"shuffle\"` with the packed LSTM, "
        f"{fused['by_length'] / fused['shuffle']:.2f}x with the fused one.",
        f"* The fused LSTM: {fused['shuffle'] / packed['shuffle']:.2f}x the packed one's "
        f"tokens/s with shuffled batches, {fused['by_length'] / packed['by_length']:.2f}x "
        "with by_length.",
    ]
    markdown = markdown_report("Text training throughput: length-aware batching, fused LSTM",
                               stamp(command), about, table, after=after)
    stem = out / "text_batching"
    return SpeedResult(table, write_result(stem, table, markdown, runs), markdown)


def _length_stats(rows: int) -> str:
    """The sentiment lengths after the cut: median, mean, share at ``MAX_LENGTH``."""
    ids = recipe_data(rows)["sentiment"]["input_ids"]
    lengths = (ids != 0).sum(dim=1).tolist()
    at_cut = sum(length == MAX_LENGTH for length in lengths) / len(lengths)
    return (f"after it median {statistics.median(lengths):.0f}, mean "
            f"{statistics.fmean(lengths):.0f}, {at_cut:.0%} at {MAX_LENGTH}")
