"""Text training throughput: batching="shuffle" against "by_length", in real tokens/s.

    python benchmarks/text_batching.py      # writes results/text_batching.*
    python benchmarks/text_batching.py --out benchmarks/results   # the committed tables

The text recipe's model (Embedding 128 + BiLSTM 128, shared-bottom, sentiment + topic, one
dataset per task, batch 64, Adam) on token ids of IMDb-like and AG-News-like lengths; each
side trains ``--steps`` steps in each of ``--processes`` fresh processes and the table holds
the medians. The code and what it measures: ``mtlzoo.bench.text_batching``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtlzoo.bench import text_batching
from mtlzoo.bench.report import RESULTS, script_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per process")
    parser.add_argument("--processes", type=int, default=3, help="fresh processes per side")
    parser.add_argument("--rows", type=int, default=25_000, help="texts per task")
    parser.add_argument("--threads", type=int,
                        help="torch threads (default torch's; 1 is steadier on a shared machine)")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="where results go (default ./results)")
    args = parser.parse_args(argv)
    result = text_batching.benchmark(args.out, args.steps, args.processes, args.rows,
                                     args.threads, command=script_command(argv))
    print(result.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
