"""The trainer's step eager, compiled (inductor) and in bf16, for MMoE and PLE.

    python benchmarks/compile_speed.py      # writes results/compile_speed.*
    python benchmarks/compile_speed.py --out benchmarks/results   # the committed tables

Batch 1024, 128 features, E = 8 experts, T = 2 tasks, one thread, the median over fresh
processes, compile time reported apart; the code: ``mtlzoo.bench.compile_speed``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtlzoo.bench import compile_speed
from mtlzoo.bench.report import RESULTS, script_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="where results go (default ./results)")
    args = parser.parse_args(argv)
    result = compile_speed.benchmark(args.out, repeats=args.repeats,
                                     processes=args.processes, command=script_command(argv))
    print(result.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
