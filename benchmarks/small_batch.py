"""MMoE and PLE train step at a small batch beside torch-rechub's and DeepCTR-Torch's.

    python benchmarks/small_batch.py                          # writes results/small_batch.*
    python benchmarks/small_batch.py --out benchmarks/results # refreshes the committed tables

Issue 15's small-batch target: CPU fp32, 2 threads, B=64, E=64 experts, T=8 binary tasks
(128 features, experts of width 64, towers (32,), PLE 2 levels); our train step (forward,
backward, Adam's step) at least 3x faster than each peer's, for MMoE and for PLE, each
ratio measured within one process (the sides timed interleaved) and the median taken over
``--processes`` fresh processes. PLE runs at two splits: 32 shared + 8x4 (as ``mtlzoo
bench speed``), which DeepCTR-Torch cannot run, and 7 shared + 8x7, the nearest it can.
Needs the ``[peers]`` extra (``pip install 'mtlzoo[peers]'`` or ``make bench-peers``);
without it, a one-line message and exit status 1. Exits 1 when a target is missed.
The code: ``mtlzoo.bench.small_batch``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtlzoo.bench import small_batch
from mtlzoo.bench.report import RESULTS, script_command
from mtlzoo.errors import MtlzooError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=3, help="fresh processes")
    parser.add_argument("--repeats", type=int, default=50, help="timed rounds per process")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up rounds per process")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (target: 2)")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="where results go (default ./results)")
    args = parser.parse_args(argv)
    try:
        result = small_batch.benchmark(args.out, args.processes, args.repeats, args.warmup,
                                       threads=args.threads, command=script_command(argv))
    except MtlzooError as error:
        print(f"small_batch: error: {error}", file=sys.stderr)
        return 1
    print(result.markdown)
    return 0 if result.met else 1


if __name__ == "__main__":
    sys.exit(main())
