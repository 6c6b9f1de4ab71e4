"""The data path against the model: Trainer.fit's rows/s fed tensors, a datasets.Dataset
(and a stream, once mtlzoo.data.streams exists) as a share of a bare loop's.

    python benchmarks/data_path.py      # writes results/data_path.*
    python benchmarks/data_path.py --out benchmarks/results   # the committed tables

Issue 14's census-sized MMoE (batch 1024, 128 features, 8 experts of 16, 200,000 rows, 2
threads); every side once per round in each of ``--processes`` fresh processes, the table
the median ratios, and where a fit's time goes per step. Exits 1 when a target is missed
(tensors >= 0.90, Dataset >= 0.80 of the bare loop's rows/s; the trainer's own overhead
under 5% of a step). The code and what it measures: ``mtlzoo.bench.data_path``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtlzoo.bench import data_path
from mtlzoo.bench.report import RESULTS, script_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=3, help="fresh processes")
    parser.add_argument("--rounds", type=int, default=5,
                        help="timed rounds per process (each side one pass), after a warm-up")
    parser.add_argument("--rows", type=int, default=data_path.ROWS, help="rows of data")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads (2, the target's; another count writes "
                        "data_path_<n>thread.*)")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="where results go (default ./results)")
    args = parser.parse_args(argv)
    result = data_path.benchmark(args.out, args.processes, args.rounds, args.rows,
                                 args.threads, command=script_command(argv))
    print(result.markdown)
    return 0 if result.met else 1


if __name__ == "__main__":
    sys.exit(main())
