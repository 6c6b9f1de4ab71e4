"""Per-task gradients of the shared parameters: one vectorised backward vs T backward passes.

    python benchmarks/task_gradients.py      # writes results/task_gradients_cpu.*
    python benchmarks/task_gradients.py --out benchmarks/results   # the committed tables

Time and peak memory of both methods over a grid of MMoE and PLE sizes; the code and what
it measures: ``mtlzoo.bench.task_gradients``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtlzoo.bench import task_gradients
from mtlzoo.bench.report import RESULTS, script_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="where results go (default ./results)")
    args = parser.parse_args(argv)
    result = task_gradients.benchmark(args.out, args.repeats, command=script_command(argv))
    print(result.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
